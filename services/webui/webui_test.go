package webui

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// recorder is a stand-in API that says which requests reached it.
type recorder struct{ got []string }

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.got = append(r.got, req.Method+" "+req.URL.Path)
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"api":true}`)
}

func TestHandlerServesPageAndPassesAPIThrough(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		method      string
		target      string
		wantStatus  int
		wantType    string // Content-Type of a page answer
		wantAPI     bool   // the request reached the API unchanged
		wantHeaders bool   // the page's security headers are set
	}{
		{name: "page", method: http.MethodGet, target: "/", wantStatus: 200, wantType: "text/html; charset=utf-8", wantHeaders: true},
		{name: "page HEAD", method: http.MethodHead, target: "/", wantStatus: 200, wantType: "text/html; charset=utf-8", wantHeaders: true},
		{name: "module", method: http.MethodGet, target: "/assets/app.js", wantStatus: 200, wantType: "text/javascript; charset=utf-8", wantHeaders: true},
		{name: "stylesheet", method: http.MethodGet, target: "/assets/style.css", wantStatus: 200, wantType: "text/css; charset=utf-8", wantHeaders: true},
		{name: "icon", method: http.MethodGet, target: "/assets/icon.svg", wantStatus: 200, wantType: "image/svg+xml", wantHeaders: true},
		{name: "missing asset", method: http.MethodGet, target: "/assets/nope.js", wantStatus: 404, wantHeaders: true},
		{name: "no directory listing", method: http.MethodGet, target: "/assets/", wantStatus: 404, wantHeaders: true},
		{name: "unary call", method: http.MethodPost, target: "/baton.v1.SchedulerService/ListWorkers", wantStatus: 200, wantAPI: true},
		{name: "Connect GET", method: http.MethodGet, target: "/baton.v1.SchedulerService/ListJobs?encoding=json&message=%7B%7D", wantStatus: 200, wantAPI: true},
		{name: "health", method: http.MethodPost, target: "/grpc.health.v1.Health/Check", wantStatus: 200, wantAPI: true},
		{name: "POST to the page's path", method: http.MethodPost, target: "/", wantStatus: 200, wantAPI: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			api := &recorder{}
			h := Handler(api)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(tt.method, tt.target, nil))
			res := w.Result()
			if res.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d", res.StatusCode, tt.wantStatus)
			}
			if reached := len(api.got) == 1; reached != tt.wantAPI {
				t.Fatalf("API got %v, want reached=%v", api.got, tt.wantAPI)
			}
			if tt.wantAPI {
				if api.got[0] != tt.method+" "+strings.SplitN(tt.target, "?", 2)[0] {
					t.Errorf("API got %q", api.got[0])
				}
				if res.Header.Get("Content-Security-Policy") != "" {
					t.Error("the page's headers leaked onto an API answer")
				}
				return
			}
			h2 := res.Header
			if tt.wantHeaders {
				if got := h2.Get("X-Content-Type-Options"); got != "nosniff" {
					t.Errorf("X-Content-Type-Options %q", got)
				}
				csp := h2.Get("Content-Security-Policy")
				for _, want := range []string{"default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'"} {
					if !strings.Contains(csp, want) {
						t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
					}
				}
				if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
					t.Errorf("Content-Security-Policy %q allows inline or eval", csp)
				}
			}
			if tt.wantType != "" {
				if got := h2.Get("Content-Type"); got != tt.wantType {
					t.Errorf("Content-Type %q, want %q", got, tt.wantType)
				}
				body, _ := io.ReadAll(res.Body)
				if tt.method == http.MethodHead && len(body) != 0 {
					t.Errorf("HEAD answered with %d bytes", len(body))
				}
				if tt.method == http.MethodGet && len(body) == 0 {
					t.Error("empty body")
				}
				if h2.Get("ETag") == "" {
					t.Error("no ETag")
				}
			}
		})
	}
}

func TestHandlerRevalidatesWithETag(t *testing.T) {
	t.Parallel()
	h := Handler(&recorder{})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/assets/app.js", nil))
	etag := w.Result().Header.Get("ETag")
	req := httptest.NewRequest(http.MethodGet, "/assets/app.js", nil)
	req.Header.Set("If-None-Match", etag)
	w = httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusNotModified || w.Body.Len() != 0 {
		t.Errorf("revalidation: %d with %d bytes, want 304 and none", w.Code, w.Body.Len())
	}
}

// TestPageSources checks the rules the browser test cannot see fail:
// every file the page refers to is embedded, no script is inline (the CSP
// would block it), and no script turns data into markup.
func TestPageSources(t *testing.T) {
	t.Parallel()
	index, err := static.ReadFile("static/index.html")
	if err != nil {
		t.Fatal(err)
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllStringSubmatch(string(index), -1)
	if len(refs) == 0 {
		t.Fatal("index.html refers to no file")
	}
	for _, m := range refs {
		if _, err := fs.Stat(static, "static/"+m[1]); err != nil {
			t.Errorf("index.html refers to %s, which is not embedded", m[1])
		}
	}
	if regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`).Match(index) || !strings.Contains(string(index), `<script type="module" src=`) {
		t.Error("index.html has inline script; the CSP allows only files")
	}
	if strings.Contains(string(index), "style=") {
		t.Error("index.html has inline style; the CSP allows only the stylesheet")
	}
	markup := regexp.MustCompile(`\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(`)
	err = fs.WalkDir(static, "static/assets", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(name, ".js") {
			return err
		}
		src, err := static.ReadFile(name)
		if err != nil {
			return err
		}
		if loc := markup.FindIndex(src); loc != nil {
			t.Errorf("%s uses %s: output and API data must go in as text", name, src[loc[0]:loc[1]])
		}
		for _, m := range regexp.MustCompile(`from "\./([^"]+)"`).FindAllSubmatch(src, -1) {
			if _, err := fs.Stat(static, "static/assets/"+string(m[1])); err != nil {
				t.Errorf("%s imports %s, which is not embedded", name, m[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
