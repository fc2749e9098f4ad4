package dev

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	"github.com/baton-run/baton/services/webui/browsertest"
)

// The web page in a real browser: headless Chromium (Debian's chromium)
// driven through the DevTools protocol against a dev cluster run in-process
// with runDev, the scheduler serving the page on its HTTP listener.

// waitJS evaluates expr until it returns true, and fails the test with
// what describe (another expression) shows when it does not in time.
func waitJS(t *testing.T, ctx context.Context, d time.Duration, what, expr, describe string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			shown, _ := chromedp.Run(ctx, chromedp.Evaluate[string](describe))
			t.Fatalf("%s: not within %v (error %v); page shows: %s", what, d, err, shown)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func evalJS[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// fill sets form fields by id, as typing would leave them.
func fill(t *testing.T, ctx context.Context, fields map[string]string) {
	t.Helper()
	raw, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	do(t, ctx, chromedp.Evaluate[chromedp.Void](`for (const [id, v] of Object.entries(`+string(raw)+`)) {
	  const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event("input", { bubbles: true }));
	}`))
}

func do(t *testing.T, ctx context.Context, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatal(err)
	}
}

// jsonCall makes a unary Connect JSON call, as the page does.
func jsonCall(ctx context.Context, client *http.Client, base, method, body string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/baton.v1.SchedulerService/"+method, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %s", method, res.StatusCode, raw)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}

// jobPage is what the job page shows.
type jobPage struct {
	State  string `json:"state"`
	Exit   string `json:"exit"`
	Output string `json:"output"`
	Stderr string `json:"stderr"`
	Bold   int    `json:"bold"`
	Note   string `json:"note"`
}

const jobPageJS = `(() => {
  const text = (id) => { const e = document.getElementById(id); return e ? e.textContent : ""; };
  const out = document.getElementById("job-output");
  return {
    state: text("job-state"),
    exit: text("job-exit"),
    output: out ? out.textContent : "",
    stderr: out ? [...out.querySelectorAll(".out-stderr")].map((e) => e.textContent).join("") : "",
    bold: out ? out.querySelectorAll("b").length : -1,
    note: text("job-stream-note"),
  };
})()`

const describePageJS = `location.hash + " | " + [...document.querySelectorAll("select")].map((s) => s.id + "=" + s.value).join(" ") + " | " + (document.getElementById("banner").hidden ? "" : "banner: " + document.getElementById("banner").textContent + " | ") + document.getElementById("view").innerText.slice(0, 1500)`

// TestWebPageInBrowser: two READY workers; count.sh started from the form
// and followed live to SUCCEEDED with exit code 0; markup in output shown
// as text; 1,000 jobs paged; a phone-sized screen; no console errors.
func TestWebPageInBrowser(t *testing.T) {
	browsertest.Chromium(t)
	addr, httpAddr := e2e.FreeAddr(t), e2e.FreeAddr(t)
	workerPort := e2e.FreePortPair(t)
	base := "http://" + httpAddr

	clusterCtx, stopCluster := context.WithCancel(context.Background())
	devDone := make(chan error, 1)
	go func() {
		devDone <- runDev(clusterCtx, devConfig{
			dataDir: e2e.JobsTempDir(t), scriptsDir: "../../../../examples/scripts",
			addr: addr, httpAddr: httpAddr, workerPort: workerPort, logLevel: "error",
		})
	}()
	t.Cleanup(func() {
		stopCluster()
		select {
		case err := <-devDone:
			if err != nil {
				t.Errorf("dev cluster: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("dev cluster did not stop within 60s")
		}
	})
	e2e.WaitListening(t, httpAddr)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}

	ctx, consoleErrors := browsertest.Start(t, context.Background(), nil)
	do(t, ctx, chromedp.EmulateViewport(1280, 860), chromedp.Navigate(base+"/"))

	// The roster: both dev workers READY.
	waitJS(t, ctx, 30*time.Second, "two READY workers",
		`document.querySelectorAll('#workers tr[data-state="READY"]').length === 2`, describePageJS)
	names := evalJS[[]string](t, ctx, `[...document.querySelectorAll('#workers tr[data-worker]')].map((r) => r.dataset.worker)`)
	if !slices.Equal(names, []string{"worker-1", "worker-2"}) {
		t.Errorf("workers listed %v, want worker-1 and worker-2", names)
	}

	// count.sh from the form, followed live on its page.
	do(t, ctx, chromedp.Click(chromedp.CSS(`a[data-nav="new"]`)))
	waitJS(t, ctx, 10*time.Second, "the start form", `!!document.getElementById("new-submit")`, describePageJS)
	fill(t, ctx, map[string]string{"new-command": "bash", "new-path": "count.sh"})
	do(t, ctx, chromedp.Click(chromedp.ID("new-submit")))
	waitJS(t, ctx, 15*time.Second, "the job page", `location.hash.startsWith("#/jobs/")`, describePageJS)
	countID := strings.TrimPrefix(evalJS[string](t, ctx, `decodeURIComponent(location.hash)`), "#/jobs/")

	// Lines must arrive one by one while the job runs: a page that showed
	// the output only at the end would never be seen with 1, 2 and 3 lines.
	seen := map[int]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(seen) < 3 {
		p := evalJS[jobPage](t, ctx, jobPageJS)
		if p.State == "RUNNING" {
			if n := strings.Count(p.Output, "\n"); n > 0 {
				seen[n] = true
			}
		}
		if time.Now().After(deadline) || (p.State != "" && p.State != "RUNNING" && p.State != "PENDING") {
			t.Fatalf("count.sh: saw line counts %v while RUNNING, want three different ones; page: %+v", seen, p)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// count.sh prints for 30 s.
	waitJS(t, ctx, 90*time.Second, "count.sh SUCCEEDED",
		`document.getElementById("job-state")?.textContent === "SUCCEEDED"`, describePageJS)
	p := evalJS[jobPage](t, ctx, jobPageJS)
	var want strings.Builder
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	want.WriteString("done\n")
	if p.Exit != "0" || p.Output != want.String() || p.Stderr != "" {
		t.Errorf("count.sh page: exit %q, stderr %q, output %q", p.Exit, p.Stderr, p.Output)
	}
	if p.Note != "ended" {
		t.Errorf("count.sh page: stream note %q after the end, want \"ended\"", p.Note)
	}
	// The form started the job with RunJob, and the page followed it to
	// its end through that one call.
	const callsJS = `performance.getEntriesByType("resource").map((e) => e.name.split("/").pop()).filter((n) => ["StartJob", "RunJob", "StreamJobOutput"].includes(n))`
	calls := evalJS[[]string](t, ctx, callsJS)
	if !slices.Equal(calls, []string{"RunJob"}) {
		t.Errorf("count.sh: the page called %v, want RunJob alone", calls)
	}

	// A job that ends before its page is shown: the page takes the whole
	// run, final status included, from the call that started it.
	do(t, ctx, chromedp.Evaluate[chromedp.Void](`location.hash = "#/new"`))
	waitJS(t, ctx, 10*time.Second, "the start form", `!!document.getElementById("new-submit")`, describePageJS)
	fill(t, ctx, map[string]string{"new-command": "sh", "new-path": "", "new-args": "-c\necho fast"})
	do(t, ctx, chromedp.Click(chromedp.ID("new-submit")))
	waitJS(t, ctx, 15*time.Second, "the fast job's page",
		`location.hash.startsWith("#/jobs/") && decodeURIComponent(location.hash) !== "#/jobs/`+countID+`"`, describePageJS)
	waitJS(t, ctx, 30*time.Second, "the fast job SUCCEEDED",
		`document.getElementById("job-state")?.textContent === "SUCCEEDED" && document.getElementById("job-stream-note")?.textContent === "ended"`, describePageJS)
	if p := evalJS[jobPage](t, ctx, jobPageJS); p.Output != "fast\n" {
		t.Errorf("fast job page: output %q", p.Output)
	}
	if calls := evalJS[[]string](t, ctx, callsJS); !slices.Equal(calls, []string{"RunJob", "RunJob"}) {
		t.Errorf("after the fast job the page has called %v, want RunJob twice and nothing else", calls)
	}

	// Markup in the output is text: the literal <b>x</b>, no <b> element;
	// stderr is shown apart.
	do(t, ctx, chromedp.Evaluate[chromedp.Void](`location.hash = "#/new"`))
	waitJS(t, ctx, 10*time.Second, "the start form", `!!document.getElementById("new-submit")`, describePageJS)
	// The pauses keep the screenshot's lines in the order they were
	// written: the two pipes are read apart.
	script := `echo "fetching 3 files"; echo "<b>x</b> and <script>document.title='owned'</script> are printed as text"; sleep 0.2; ` +
		`echo "warning: retrying file 2 (this line is on stderr)" >&2; sleep 0.2; echo "done"`
	fill(t, ctx, map[string]string{"new-command": "sh", "new-path": "", "new-args": "-c\n" + script})
	do(t, ctx, chromedp.Click(chromedp.ID("new-submit")))
	waitJS(t, ctx, 15*time.Second, "the markup job's page",
		`location.hash.startsWith("#/jobs/") && decodeURIComponent(location.hash) !== "#/jobs/`+countID+`"`, describePageJS)
	waitJS(t, ctx, 30*time.Second, "the markup job SUCCEEDED",
		`document.getElementById("job-state")?.textContent === "SUCCEEDED" && document.getElementById("job-stream-note")?.textContent === "ended"`, describePageJS)
	p = evalJS[jobPage](t, ctx, jobPageJS)
	if !strings.Contains(p.Output, "<b>x</b> and <script>document.title='owned'</script> are printed as text\n") || p.Bold != 0 {
		t.Errorf("markup job: %d <b> elements, output %q", p.Bold, p.Output)
	}
	if p.Stderr != "warning: retrying file 2 (this line is on stderr)\n" {
		t.Errorf("markup job: stderr shown as %q", p.Stderr)
	}
	if title := evalJS[string](t, ctx, `document.title`); title != "Baton" {
		t.Errorf("document.title is %q: job output ran as script", title)
	}
	if path := os.Getenv("BATON_SCREENSHOT"); path != "" {
		do(t, ctx, chromedp.EmulateViewport(1100, 720))
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot of a finished job's page saved to %s", path)
		do(t, ctx, chromedp.EmulateViewport(1280, 860))
	}

	// A phone: nothing wider than the screen.
	do(t, ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	if w := evalJS[[]int](t, ctx, `[document.documentElement.scrollWidth, window.innerWidth]`); w[0] > w[1] {
		t.Errorf("job page on a 390 px screen is %d px wide", w[0])
	}

	// 1,000 jobs, started through the API with bounded parallelism.
	seed(t, client, base, 1000)
	do(t, ctx, chromedp.Evaluate[chromedp.Void](`location.hash = "#/"`))
	waitJS(t, ctx, 20*time.Second, "a full first page",
		`document.querySelectorAll("#jobs tr[data-job]").length === 50 && document.getElementById("jobs-page").textContent === "Page 1"`, describePageJS)
	if w := evalJS[[]int](t, ctx, `[document.documentElement.scrollWidth, window.innerWidth]`); w[0] > w[1] {
		t.Errorf("overview on a 390 px screen is %d px wide", w[0])
	}
	do(t, ctx, chromedp.EmulateViewport(1280, 860))
	jobIDs := `[...document.querySelectorAll("#jobs tr[data-job]")].map((r) => r.dataset.job)`
	page1 := evalJS[[]string](t, ctx, jobIDs)
	do(t, ctx, chromedp.Click(chromedp.ID("jobs-next")))
	waitJS(t, ctx, 20*time.Second, "page 2",
		`document.getElementById("jobs-page").textContent === "Page 2" && document.querySelectorAll("#jobs tr[data-job]").length === 50`, describePageJS)
	page2 := evalJS[[]string](t, ctx, jobIDs)
	if len(slices.Compact(slices.Sorted(slices.Values(slices.Concat(page1, page2))))) != 100 {
		t.Errorf("pages 1 and 2 overlap:\n%v\n%v", page1, page2)
	}
	// Newest first across the page boundary.
	created := `[...document.querySelectorAll("#jobs tr[data-job]")].map((r) => Date.parse(r.dataset.created))`
	created2 := evalJS[[]float64](t, ctx, created)
	do(t, ctx, chromedp.Click(chromedp.ID("jobs-prev")))
	waitJS(t, ctx, 20*time.Second, "back on page 1",
		`document.getElementById("jobs-page").textContent === "Page 1" && document.getElementById("jobs-prev").disabled`, describePageJS)
	created1 := evalJS[[]float64](t, ctx, created)
	if !slices.IsSortedFunc(slices.Concat(created1, created2), func(a, b float64) int { return cmp.Compare(b, a) }) {
		t.Errorf("pages 1 and 2 are not newest first: %v then %v", created1, created2)
	}

	// The list updates while it is looked at: a job started elsewhere shows up.
	var started struct {
		JobID string `json:"jobId"`
	}
	if err := jsonCall(t.Context(), client, base, "StartJob", `{"worker_id":"worker-2","command":"sh","args":["-c","true"]}`, &started); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, 20*time.Second, "the new job in the list without a reload",
		`!!document.querySelector('#jobs tr[data-job="`+started.JobID+`"]')`, describePageJS)

	// Filters: one worker's succeeded jobs.
	do(t, ctx, chromedp.Evaluate[chromedp.Void](`(() => {
	  const w = document.getElementById("filter-worker"); w.value = "worker-2"; w.dispatchEvent(new Event("change"));
	  const s = document.getElementById("filter-state"); s.value = "SUCCEEDED"; s.dispatchEvent(new Event("change"));
	})()`))
	waitJS(t, ctx, 20*time.Second, "worker-2's SUCCEEDED jobs only", `(() => {
	  const rows = [...document.querySelectorAll("#jobs tr[data-job]")];
	  return rows.length > 0 && rows.every((r) => r.dataset.state === "SUCCEEDED" && r.dataset.worker === "worker-2");
	})()`, describePageJS)

	if errs := consoleErrors(); len(errs) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(errs, "\n"))
	}
}

// seed starts n quick jobs through the API, 16 at a time.
func seed(t *testing.T, client *http.Client, base string, n int) {
	t.Helper()
	ctx := t.Context()
	sem := make(chan struct{}, 16)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			body := fmt.Sprintf(`{"command":"sh","args":["-c","true"],"idempotency_key":"seed-%d"}`, i)
			// Both workers may be full for a moment: retry what they refuse.
			var err error
			for range 50 {
				if err = jsonCall(ctx, client, base, "StartJob", body, nil); err == nil || !strings.Contains(err.Error(), "resource_exhausted") {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				mu.Lock()
				firstErr = errors.Join(firstErr, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("seeding %d jobs: %v", n, firstErr)
	}
}
