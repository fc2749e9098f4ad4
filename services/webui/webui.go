// Package webui serves Baton's web page: the workers, the jobs and a job's
// live output, in a browser. The page is plain HTML, CSS and JavaScript
// modules embedded in the binary (no build step); it talks to the scheduler
// only through the public Connect JSON API, like any other client.
package webui

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"
)

//go:embed static
var static embed.FS

// contentSecurityPolicy allows the page's own files and calls to its own
// origin, and nothing else: no inline script or style, no frames, no
// plugins. Job output is rendered as text, so this is a second line of
// defence against a job that prints markup.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// contentTypes is set explicitly rather than from mime.TypeByExtension,
// whose answer depends on the host's /etc/mime.types: a JavaScript module
// served with the wrong type is refused by the browser.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// asset is one embedded file, ready to serve.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

// page serves the embedded files. It is immutable after construction, so
// safe for concurrent use.
type page struct {
	assets map[string]asset // by URL path
}

func newPage() *page {
	p := &page{assets: map[string]asset{}}
	err := fs.WalkDir(static, "static", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ct, ok := contentTypes[path.Ext(name)]
		if !ok {
			return nil
		}
		body, err := static.ReadFile(name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		urlPath := strings.TrimPrefix(name, "static")
		p.assets[urlPath] = asset{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		// The files are compiled in; failing to read them is a build defect.
		panic("webui: reading embedded files: " + err.Error())
	}
	p.assets["/"] = p.assets["/index.html"]
	delete(p.assets, "/index.html")
	return p
}

func (p *page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	a, ok := p.assets[r.URL.Path]
	if !ok {
		http.Error(w, "404 page not found", http.StatusNotFound)
		return
	}
	h.Set("Content-Type", a.contentType)
	// no-cache still lets the browser keep a copy, but it revalidates
	// with the ETag, so a new binary's page is never mixed with old files.
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	if match := r.Header.Get("If-None-Match"); match != "" && match == a.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(a.body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(a.body)
}

// Handler serves the page at / (GET and HEAD of the page's own paths) and
// passes every other request to api unchanged, so the API's routes,
// including Connect GET requests, stay exactly as api defines them.
// The returned handler is safe for concurrent use.
func Handler(api http.Handler) http.Handler {
	p := newPage()
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", p)
	mux.Handle("GET /assets/", p)
	mux.Handle("/", api)
	return mux
}
