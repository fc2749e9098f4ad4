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
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/baton-run/baton/services/webui/browsertest"
)

// The page's side of tokens and of the Connect stream envelope, in headless
// Chromium against a stand-in API whose answers the test chooses: a secured
// scheduler (Unauthenticated without the right bearer token), an output
// stream with a UTF-8 character split across chunks, and a stream that
// ends with PermissionDenied. The real cluster is driven by
// cmd/baton's TestWebPageInBrowser.

const (
	testToken  = "s3cret-token"
	jobOK      = "01a21d39-0000-7000-8000-000000000001"
	jobRefused = "01a21d39-0000-7000-8000-000000000002"
)

// securedAPI answers like a scheduler that requires a bearer token.
type securedAPI struct {
	mu    sync.Mutex
	auths []string // Authorization header of every call, in order
}

func (a *securedAPI) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.auths)
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
		_, _ = io.WriteString(w, `{"jobs":[{"jobId":"`+jobOK+`","workerId":"w1","state":"JOB_STATE_RUNNING","spec":{"command":"bash","path":"x.sh"},"createdAt":"2026-01-01T00:00:00Z"}]}`)
	case "QueryJob":
		_, _ = io.WriteString(w, `{"done":false,"status":{"jobId":"`+jobOK+`","workerId":"w1","state":"JOB_STATE_RUNNING","spec":{"command":"bash","path":"x.sh"}}}`)
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"code":"unimplemented","message":"not in this test"}`)
	}
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
	send(0, `{"status":{"jobId":"`+jobOK+`","workerId":"w1","state":"JOB_STATE_FAILED","exitCode":3,"reason":"exited with code 3"}}`)
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
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	wait := func(what, expr string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
			if err == nil && ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 15s (%v); page shows: %s", what, err,
					eval(`(document.getElementById("banner").hidden ? "" : "banner: " + document.getElementById("banner").textContent + " | ") + document.body.innerText.slice(0, 800)`))
			}
			time.Sleep(50 * time.Millisecond)
		}
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
