package webui

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/baton-run/baton/services/webui/browsertest"
)

// The page's side of tokens and of the Connect stream envelope, in headless
// Chromium against a stand-in API whose answers the test chooses: a secured
// scheduler (Unauthenticated without the right bearer token), an output
// stream with a UTF-8 character split across chunks, and a stream that
// ends with PermissionDenied; and queued jobs, which no scheduler in this
// package can make. The real cluster is driven by cmd/baton's
// TestWebPageInBrowser.

const (
	testToken  = "s3cret-token"
	jobOK      = "01a21d39-0000-7000-8000-000000000001"
	jobRefused = "01a21d39-0000-7000-8000-000000000002"
	jobQueued  = "01a21d39-0000-7000-8000-000000000003"
	jobExpired = "01a21d39-0000-7000-8000-000000000004" // timed out in the queue
)

// queueReason is what jobQueued waits for. The selector behind it is the
// submitter's, so it carries markup that must show as text.
const queueReason = "waiting for a free slot on a worker with zone=<b>b</b>"

// The jobs ListJobs knows, in the API's JSON.
var (
	runningJSON = `{"jobId":"` + jobOK + `","workerId":"w1","state":"JOB_STATE_RUNNING","spec":{"command":"bash","path":"x.sh"},"createdAt":"2026-01-01T00:00:00Z"}`
	queuedJSON  = `{"jobId":"` + jobQueued + `","state":"JOB_STATE_QUEUED","queuePosition":3,"reason":` + quote(queueReason) + `,` +
		`"spec":{"command":"bash","path":"x.sh","priority":80,"selector":{"zone":"<b>b</b>"},"queueTimeout":"-1s"},"createdAt":"2026-01-01T00:00:01Z"}`
	expiredJSON = `{"jobId":"` + jobExpired + `","state":"JOB_STATE_TIMED_OUT","reason":"waited 10m0s in the queue",` +
		`"spec":{"command":"bash","path":"x.sh","priority":10,"queueTimeout":"600s"},"createdAt":"2026-01-01T00:00:02Z","endedAt":"2026-01-01T00:10:02Z"}`
)

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// securedAPI answers like a scheduler that requires a bearer token.
type securedAPI struct {
	placed atomic.Bool // jobQueued has left the queue for worker w1

	mu       sync.Mutex
	auths    []string // Authorization header of every call, in order
	streamed []string // job of every StreamJobOutput call, in order
}

func (a *securedAPI) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.auths)
}

func (a *securedAPI) streams() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.streamed)
}

func (a *securedAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	auth := r.Header.Get("Authorization")
	a.mu.Lock()
	a.auths = append(a.auths, auth)
	a.mu.Unlock()
	method := strings.TrimPrefix(r.URL.Path, "/baton.v1.SchedulerService/")
	if auth != "Bearer "+testToken {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"code":"unauthenticated","message":"a bearer token is required"}`)
		return
	}
	if method == "StreamJobOutput" {
		a.stream(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch method {
	case "ListWorkers":
		_, _ = io.WriteString(w, `{"workers":[{"workerId":"w1","name":"w1","address":"10.0.0.1:7071","state":"WORKER_STATE_READY","labels":{"zone":"a"},"runningJobs":1,"capacity":4,"lastHeartbeat":"2026-01-01T00:00:00Z"}]}`)
	case "ListJobs":
		a.listJobs(w, r)
	case "ListSchedules":
		_, _ = io.WriteString(w, `{"schedules":[{"name":"nightly","cron":"30 2 * * *","timeZone":"Europe/Paris","owner":"user/alice",`+
			`"lastFireTime":"2026-01-01T01:30:00Z","nextFireTime":"2099-01-02T01:30:00Z","fires":"12","misses":"3"},`+
			`{"name":"<b>x</b>","cron":"@hourly","owner":"user/alice","paused":true}]}`)
	case "QueryJob":
		var req struct {
			JobID string `json:"jobId"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		switch {
		case req.JobID == jobQueued && a.placed.Load():
			_, _ = io.WriteString(w, `{"done":false,"status":{"jobId":"`+jobQueued+`","workerId":"w1","state":"JOB_STATE_RUNNING","startedAt":"2026-01-01T00:00:05Z","spec":{"command":"bash","path":"x.sh","priority":80}}}`)
		case req.JobID == jobQueued:
			_, _ = io.WriteString(w, `{"done":false,"status":`+queuedJSON+`}`)
		case req.JobID == jobExpired:
			_, _ = io.WriteString(w, `{"done":true,"status":`+expiredJSON+`}`)
		default:
			_, _ = io.WriteString(w, `{"done":false,"status":{"jobId":"`+jobOK+`","workerId":"w1","state":"JOB_STATE_RUNNING","spec":{"command":"bash","path":"x.sh"}}}`)
		}
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"code":"unimplemented","message":"not in this test"}`)
	}
}

// listJobs answers ListJobs, newest first, keeping the states asked for.
func (a *securedAPI) listJobs(w http.ResponseWriter, r *http.Request) {
	var req struct {
		States []string `json:"states"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"code":"invalid_argument","message":"not a ListJobs request"}`)
		return
	}
	var jobs []string
	for _, j := range []struct{ state, json string }{
		{"JOB_STATE_TIMED_OUT", expiredJSON},
		{"JOB_STATE_QUEUED", queuedJSON},
		{"JOB_STATE_RUNNING", runningJSON},
	} {
		if len(req.States) == 0 || slices.Contains(req.States, j.state) {
			jobs = append(jobs, j.json)
		}
	}
	_, _ = io.WriteString(w, `{"jobs":[`+strings.Join(jobs, ",")+`]}`)
}

// stream answers StreamJobOutput with the Connect streaming protocol:
// enveloped JSON messages, flushed one by one, and an end-of-stream
// message (flag 0x02) that may carry an error.
func (a *securedAPI) stream(w http.ResponseWriter, r *http.Request) {
	var head [5]byte
	if _, err := io.ReadFull(r.Body, head[:]); err != nil || head[0] != 0 || r.Header.Get("Content-Type") != "application/connect+json" {
		http.Error(w, "not a Connect stream request", http.StatusBadRequest)
		return
	}
	body := make([]byte, binary.BigEndian.Uint32(head[1:]))
	if _, err := io.ReadFull(r.Body, body); err != nil {
		http.Error(w, "short request", http.StatusBadRequest)
		return
	}
	var req struct {
		JobID  string `json:"jobId"`
		Follow bool   `json:"follow"`
	}
	if err := json.Unmarshal(body, &req); err != nil || !req.Follow {
		http.Error(w, "bad request message", http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	a.streamed = append(a.streamed, req.JobID)
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/connect+json")
	send := func(flags byte, msg string) {
		var h [5]byte
		h[0] = flags
		binary.BigEndian.PutUint32(h[1:], uint32(len(msg)))
		_, _ = w.Write(h[:])
		_, _ = io.WriteString(w, msg)
		w.(http.Flusher).Flush()
	}
	if req.JobID == jobRefused {
		send(2, `{"error":{"code":"permission_denied","message":"viewers cannot read this job's output"}}`)
		return
	}
	chunk := func(stream string, data []byte, offset int) string {
		raw, _ := json.Marshal(map[string]any{"chunk": map[string]any{"stream": stream, "data": data, "offset": fmt.Sprint(offset)}})
		return string(raw)
	}
	out := []byte("h\u00e9llo <i>w\u00f6rld</i>\n")    // é and ö are two bytes each
	send(0, chunk("OUTPUT_STREAM_STDOUT", out[:2], 0)) // ends inside é
	send(0, chunk("OUTPUT_STREAM_STDOUT", out[2:], 2))
	send(0, chunk("OUTPUT_STREAM_STDERR", []byte("boom\n"), len(out)))
	send(0, `{"status":{"jobId":"`+req.JobID+`","workerId":"w1","state":"JOB_STATE_FAILED","exitCode":3,"reason":"exited with code 3",`+
		`"usage":{"cpuUser":"1.021s","cpuSystem":"0.052s","peakMemoryBytes":"110100480","wall":"2.500s","source":"cgroup"},`+
		`"spec":{"command":"bash","path":"x.sh","retry":{"attempts":3},"after":[{"jobId":"01a21d39-0000-7000-8000-00000000000a","condition":"DEPENDENCY_CONDITION_ENDED"}]},`+
		`"attempt":2,"attempts":[{"number":1,"workerId":"w2","state":"JOB_STATE_LOST","reason":"worker down <b>x</b>"}]}}`)
	send(2, `{}`)
}

func TestTokenAndStreamInBrowser(t *testing.T) {
	api := &securedAPI{}
	srv := httptest.NewServer(Handler(api))
	t.Cleanup(srv.Close)

	// The browser itself logs every 401 answer as a failed resource load;
	// that is the server's answer, not the page's error. Anything the page
	// logs or throws is.
	ctx, consoleErrors := browsertest.Start(t, context.Background(), func(m chromedp.ConsoleMessage) bool {
		return m.Source == "network" && strings.Contains(m.Text, "401")
	})

	eval := func(expr string) string {
		t.Helper()
		return evalJS(t, ctx, expr)
	}
	wait := func(what, expr string) {
		t.Helper()
		waitJS(t, ctx, what, expr)
	}

	// Without a token: a clear message and the token field, open.
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatal(err)
	}
	wait("the unauthenticated message", `!document.getElementById("banner").hidden && document.getElementById("banner").textContent.includes("unauthenticated") && !document.getElementById("token-panel").hidden`)
	if got := eval(`document.activeElement.id`); got != "token-input" {
		t.Errorf("focus is on %q, want the token field", got)
	}

	// The token, entered once, is used on every call and kept for the tab.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`document.getElementById("token-input").value = "`+testToken+`"`),
		chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`))); err != nil {
		t.Fatal(err)
	}
	wait("the roster with the token", `!!document.querySelector('#workers tr[data-worker="w1"]') && document.getElementById("banner").hidden && document.getElementById("token-panel").hidden`)
	if got := eval(`sessionStorage.getItem("baton.token")`); got != testToken {
		t.Errorf("session storage holds %q", got)
	}
	before := len(api.seen())
	if err := chromedp.Do(ctx, chromedp.Reload()); err != nil {
		t.Fatal(err)
	}
	wait("the roster after a reload", `!!document.querySelector('#workers tr[data-worker="w1"]')`)
	after := api.seen()[before:]
	if len(after) == 0 {
		t.Fatal("no call after the reload")
	}
	for _, a := range after {
		if a != "Bearer "+testToken {
			t.Errorf("after the reload a call carried Authorization %q", a)
		}
	}

	// The stream: chunks in order, a character split across chunks decoded
	// whole, markup as text, stderr apart, the final status from the last
	// message.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`location.hash = "#/jobs/`+jobOK+`"`)); err != nil {
		t.Fatal(err)
	}
	wait("the final status", `document.getElementById("job-state")?.textContent === "FAILED" && document.getElementById("job-stream-note")?.textContent === "ended"`)
	if got := eval(`document.getElementById("job-output").textContent`); got != "h\u00e9llo <i>w\u00f6rld</i>\nboom\n" {
		t.Errorf("output shown as %q", got)
	}
	if got := eval(`[...document.querySelectorAll("#job-output .out-stderr")].map((e) => e.textContent).join("|")`); got != "boom\n" {
		t.Errorf("stderr shown as %q", got)
	}
	if got := eval(`document.getElementById("job-exit").textContent + " " + document.querySelectorAll("#job-output i").length`); got != "3 0" {
		t.Errorf("exit code and <i> elements: %q, want \"3 0\"", got)
	}
	if got, want := eval(`document.getElementById("job-cost")?.textContent`), "CPU 1.0 s user + 52 ms system · peak 105.0 MiB · wall 2.5 s (cgroup)"; got != want {
		t.Errorf("cost shown as %q, want %q", got, want)
	}
	// A retried job: its attempt, each earlier one (a reason shown as
	// text), and what it waited for.
	if got, want := eval(`document.getElementById("job-attempt")?.textContent + " | " + [...document.querySelectorAll(".job-earlier-attempt")].map((e) => e.textContent).join("|") + " | " + document.getElementById("job-after")?.textContent + " | " + document.querySelectorAll("#job-facts b").length`),
		"2 of 3 | LOST on w2 (worker down <b>x</b>) | ended:01a21d39-0000-7000-8000-00000000000a | 0"; got != want {
		t.Errorf("attempts shown as %q, want %q", got, want)
	}

	// A stream refused in its end-of-stream message: the message, and the
	// token field again.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`location.hash = "#/jobs/`+jobRefused+`"`)); err != nil {
		t.Fatal(err)
	}
	wait("the permission_denied message", `!document.getElementById("banner").hidden && document.getElementById("banner").textContent.includes("permission_denied") && document.getElementById("banner").textContent.includes("viewers cannot read") && !document.getElementById("token-panel").hidden`)

	if problems := consoleErrors(); len(problems) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(problems, "\n"))
	}
}

// TestQueuedJobsInBrowser checks what a user sees of the queue: a queued
// job set apart in the list with its place and reason, the state filter,
// and a queued job's page that shows its priority and follows the job
// once a worker takes it, or says it never ran.
func TestQueuedJobsInBrowser(t *testing.T) {
	api := &securedAPI{}
	srv := httptest.NewServer(Handler(api))
	t.Cleanup(srv.Close)
	// On the bare icon, opened to set the token, the browser asks for
	// /favicon.ico itself and logs the API's 401; the page never asks.
	ctx, consoleErrors := browsertest.Start(t, context.Background(), func(m chromedp.ConsoleMessage) bool {
		return m.Source == "network" && strings.HasSuffix(m.URL, "/favicon.ico")
	})
	eval := func(expr string) string {
		t.Helper()
		return evalJS(t, ctx, expr)
	}
	wait := func(what, expr string) {
		t.Helper()
		waitJS(t, ctx, what, expr)
	}

	// The token goes in before the page's first call; tokens have their
	// own test.
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/assets/icon.svg"),
		chromedp.Evaluate[chromedp.Void](`sessionStorage.setItem("baton.token", "`+testToken+`")`),
		chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatal(err)
	}
	row := `document.querySelector('#jobs tr[data-job="` + jobQueued + `"]')`
	wait("the queued job in the list", `!!`+row+` && `+row+`.dataset.state === "QUEUED" && !!document.querySelector('#jobs tr[data-job="`+jobOK+`"]')`)
	if got := eval(row + `.querySelector(".badge-queued")?.textContent + " | " + ` + row + `.querySelector(".queue-place")?.textContent + " | " + ` + row + `.querySelector(".queue-reason")?.textContent`); got != "QUEUED | #3 in queue | "+queueReason {
		t.Errorf("queued row shows %q", got)
	}
	if got := eval(`String(document.querySelectorAll("#jobs b").length)`); got != "0" {
		t.Errorf("the reason's markup became %s <b> elements", got)
	}
	background := func(badge string) string {
		t.Helper()
		return eval(`getComputedStyle(document.querySelector("#jobs ` + badge + `")).backgroundColor`)
	}
	if q, r := background(".badge-queued"), background(".badge-running"); q == r {
		t.Errorf("queued and running badges share the background %s", q)
	}
	if got := eval(`[...document.querySelectorAll("#jobs tr[data-state]")].filter((r) => r.dataset.state !== "QUEUED").map((r) => r.querySelectorAll(".queue-note").length).join("")`); strings.Trim(got, "0") != "" {
		t.Errorf("jobs out of the queue carry a queue note: %q", got)
	}

	// The state filter offers queued and asks the API for it.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`(() => {
		const s = document.getElementById("filter-state");
		s.value = "QUEUED";
		s.dispatchEvent(new Event("change"));
	})()`)); err != nil {
		t.Fatal(err)
	}
	wait("only the queued job, filtered", `[...document.querySelectorAll("#jobs tr[data-job]")].map((r) => r.dataset.job).join(",") === "`+jobQueued+`"`)
	if got := eval(`document.querySelector('#filter-state option[value="QUEUED"]').textContent`); got != "queued" {
		t.Errorf("the filter's option reads %q", got)
	}

	// Its page: place, reason and priority, no output stream while it waits.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`location.hash = "#/jobs/`+jobQueued+`"`)); err != nil {
		t.Fatal(err)
	}
	wait("the queued job's page", `document.getElementById("job-state")?.textContent === "QUEUED" && document.getElementById("job-stream-note")?.textContent === "waiting in the queue"`)
	for _, c := range []struct{ id, want string }{
		{"job-queue-place", "#3 in queue"},
		{"job-reason", queueReason},
		{"job-priority", "80"},
	} {
		if got := eval(`document.getElementById("` + c.id + `")?.textContent ?? "(missing)"`); got != c.want {
			t.Errorf("#%s shows %q, want %q", c.id, got, c.want)
		}
	}
	if got := eval(`document.getElementById("job-facts").innerText`); !strings.Contains(got, "none (waits until placed or stopped)") || !strings.Contains(got, "zone=<b>b</b>") {
		t.Errorf("the facts lack the queue timeout or the selector:\n%s", got)
	}
	if got := eval(`String(document.getElementById("job-stop").disabled)`); got != "false" {
		t.Error("a queued job cannot be stopped from its page")
	}
	if s := api.streams(); len(s) != 0 {
		t.Errorf("the page followed a queued job's output: %v", s)
	}

	// A worker takes it: the page notices and follows the output.
	api.placed.Store(true)
	wait("the placed job's output", `document.getElementById("job-state")?.textContent === "FAILED" && document.getElementById("job-stream-note")?.textContent === "ended"`)
	if got := eval(`document.getElementById("job-output").textContent + (document.getElementById("job-queue-place") ? "| still placed in the queue" : "")`); got != "h\u00e9llo <i>w\u00f6rld</i>\nboom\n" {
		t.Errorf("after placement the page shows %q", got)
	}

	// A job that timed out in the queue never ran: no stream, no error.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`location.hash = "#/jobs/`+jobExpired+`"`)); err != nil {
		t.Fatal(err)
	}
	wait("the expired job's page", `document.getElementById("job-state")?.textContent === "TIMED_OUT" && document.getElementById("job-stream-note")?.textContent === "ended"`)
	if got := eval(`document.getElementById("job-output").textContent + " | " + document.getElementById("job-priority").textContent + " | " + document.getElementById("banner").hidden`); got != "(never ran) | 10 | true" {
		t.Errorf("the expired job's page shows %q", got)
	}
	if s := api.streams(); slices.Contains(s, jobExpired) {
		t.Errorf("the page asked for the output of a job that never ran: %v", s)
	}

	if problems := consoleErrors(); len(problems) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(problems, "\n"))
	}
}

// evalJS evaluates expr in the tab and returns its string value.
func evalJS(t *testing.T, ctx context.Context, expr string) string {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS waits for expr to be true in the tab, and fails the test with
// what the page shows if it is not within 15 seconds.
func waitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s (%v); page shows: %s", what, err,
				evalJS(t, ctx, `(document.getElementById("banner").hidden ? "" : "banner: " + document.getElementById("banner").textContent + " | ") + document.body.innerText.slice(0, 800)`))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSchedulesInBrowser opens the schedules page: each schedule with its
// cron and zone, state, last and next fire and its counts; names are text.
func TestSchedulesInBrowser(t *testing.T) {
	api := &securedAPI{}
	srv := httptest.NewServer(Handler(api))
	t.Cleanup(srv.Close)
	ctx, _ := browsertest.Start(t, context.Background(), func(m chromedp.ConsoleMessage) bool {
		return m.Source == "network" && strings.HasSuffix(m.URL, "/favicon.ico")
	})
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/assets/icon.svg"),
		chromedp.Evaluate[chromedp.Void](`sessionStorage.setItem("baton.token", "`+testToken+`")`),
		chromedp.Navigate(srv.URL+"/#/schedules")); err != nil {
		t.Fatal(err)
	}
	row := `document.querySelector('#schedules tr[data-schedule="nightly"]')`
	waitJS(t, ctx, "the schedules listed", `!!`+row+` && document.querySelectorAll("#schedules tbody tr").length === 2`)
	got := evalJS(t, ctx, `[".schedule-state", ".schedule-fires", ".schedule-misses", ".schedule-skips"].map((c) => `+row+`.querySelector(c).textContent).join(" | ") + " | " + (`+row+`.querySelector(".schedule-next").textContent !== "—") + " | " + `+row+`.textContent.includes("Europe/Paris")`)
	if got != "active | 12 | 3 | 0 | true | true" {
		t.Errorf("the nightly row shows %q", got)
	}
	if got := evalJS(t, ctx, `document.querySelector('#schedules tr[data-schedule="<b>x</b>"] .schedule-state')?.textContent + " " + document.querySelectorAll("#schedules b").length`); got != "paused 0" {
		t.Errorf("the paused schedule's row: %q", got)
	}
	if got := evalJS(t, ctx, `document.querySelector('[data-nav="schedules"]').getAttribute("aria-current")`); got != "page" {
		t.Errorf("the nav's schedules link is %q, want the current page", got)
	}
}
