package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	"github.com/baton-run/baton/services/serving"
)

// newGuardedCluster runs the real `baton scheduler` (a plain gRPC listener
// and a plain [http_server] without tokens, every caller an anonymous
// admin, with allowed_hosts = ["baton.internal"]) and one real worker,
// and returns the cluster and the http_server address.
func newGuardedCluster(t *testing.T) (*cluster, string) {
	t.Helper()
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	c := &cluster{
		t:       t,
		bin:     e2e.SharedBaton(t),
		dir:     e2e.JobsTempDir(t),
		marker:  "bzt" + hex.EncodeToString(rnd[:]),
		opts:    clusterOptions{capacity: 8},
		workers: map[string]*workerInfo{},
		client:  &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{}},
	}
	t.Cleanup(c.cleanup)
	c.schedAdr = e2e.FreeAddr(t)
	httpAddr := e2e.FreeAddr(t)
	c.schedCfg = filepath.Join(c.dir, "scheduler.toml")
	c.writeFile(c.schedCfg, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = false

[http_server]
addr = %q
allowed_hosts = ["baton.internal"]

[scheduler]
data_dir = %q
heartbeat_interval = %q
heartbeat_grace = %q

[log]
format = "json"
`, c.schedAdr, httpAddr, filepath.Join(c.dir, "scheduler"), testHeartbeat.String(), testGrace.String()), 0o600)
	c.startScheduler()
	e2e.WaitListening(t, httpAddr)

	w := &workerInfo{name: "w1", addr: e2e.FreeAddr(t), dataDir: filepath.Join(c.dir, "w1", "data")}
	scripts := filepath.Join(c.dir, "w1", "scripts")
	if err := os.MkdirAll(scripts, 0o755); err != nil {
		t.Fatal(err)
	}
	for file, body := range clusterScripts {
		c.writeFile(filepath.Join(scripts, file), body, 0o755)
	}
	w.cfgPath = filepath.Join(c.dir, "w1", "worker.toml")
	c.writeFile(w.cfgPath, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = false

[scheduler]
addr = %q

[worker]
name = "w1"
data_dir = %q
scripts_dir = %q
allowed_commands = ["bash"]
stop_grace = "2s"

[log]
format = "json"
`, w.addr, c.schedAdr, w.dataDir, scripts), 0o600)
	c.workers[w.name] = w
	c.startWorker(w.name)
	c.waitWorkerState(w.name, "WORKER_STATE_READY", 30*time.Second)
	return c, httpAddr
}

// rawCall sends method path with body to addr over client, with the
// given Host and Origin (none when empty), and returns status and body.
func rawCall(t *testing.T, client *http.Client, method, addr, path, host, origin, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	// An answer the test did not expect is shown in part: /metrics is long.
	if len(raw) > 300 {
		raw = append(raw[:300:300], "…"...)
	}
	return res.StatusCode, string(raw)
}

// TestPlainListenersRefuseRebinding plays DNS rebinding against the real
// `baton scheduler`: a page on attacker.example:PORT whose name now points
// at 127.0.0.1 calls StartJob with its own name in Host and Origin, and a
// page on another origin calls it on 127.0.0.1. Every plain listener (the
// http_server, the scheduler's gRPC one, the worker's) refuses, and no job
// exists afterwards. Loopback names, the configured name and callers
// without Origin (curl, the CLI) are served, as are the web page, /metrics
// and health on loopback.
func TestPlainListenersRefuseRebinding(t *testing.T) {
	t.Parallel()
	c, httpAddr := newGuardedCluster(t)
	_, port, _ := strings.Cut(httpAddr, ":")
	w := c.workers["w1"]
	h1 := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{}}
	h2c := serving.NewHTTPClient(nil)
	h2c.Timeout = 30 * time.Second
	t.Cleanup(h1.CloseIdleConnections)
	t.Cleanup(h2c.CloseIdleConnections)
	start := "/baton.v1.SchedulerService/StartJob"
	job := c.napJob("", 30)

	refused := []struct {
		name, addr, path, host, origin string
		client                         *http.Client
		want                           int
	}{
		{"rebound name", httpAddr, start, "attacker.example:" + port, "http://attacker.example:" + port, h1, http.StatusMisdirectedRequest},
		{"rebound name over h2c", httpAddr, start, "attacker.example:" + port, "http://attacker.example:" + port, h2c, http.StatusMisdirectedRequest},
		{"rebound name, no origin", httpAddr, start, "attacker.example:" + port, "", h1, http.StatusMisdirectedRequest},
		{"foreign origin, loopback host", httpAddr, start, "127.0.0.1:" + port, "http://attacker.example:" + port, h1, http.StatusForbidden},
		{"another local origin", httpAddr, start, "127.0.0.1:" + port, "http://localhost:3000", h1, http.StatusForbidden},
		{"address that is not loopback", httpAddr, start, "10.1.2.3:7080", "", h1, http.StatusMisdirectedRequest},
		{"0.0.0.0", httpAddr, start, "0.0.0.0:" + port, "http://0.0.0.0:" + port, h1, http.StatusMisdirectedRequest},
		{"scheduler's plain gRPC listener", c.schedAdr, start, "attacker.example:7070", "http://attacker.example:7070", h1, http.StatusMisdirectedRequest},
		{"worker's plain listener", w.addr, "/baton.v1.WorkerService/StartJob", "attacker.example:7071", "http://attacker.example:7071", h1, http.StatusMisdirectedRequest},
		{"/metrics for a rebound name", httpAddr, "/metrics", "attacker.example:" + port, "", h1, http.StatusMisdirectedRequest},
	}
	for _, tt := range refused {
		method, body := http.MethodPost, job
		if tt.path == "/metrics" {
			method, body = http.MethodGet, ""
		}
		code, body := rawCall(t, tt.client, method, tt.addr, tt.path, tt.host, tt.origin, body)
		if code != tt.want {
			t.Errorf("%s: HTTP %d %q, want %d", tt.name, code, body, tt.want)
		} else if !strings.Contains(body, "refused") && !strings.Contains(body, "misdirected") {
			t.Errorf("%s: the refusal %q gives no reason", tt.name, body)
		}
	}
	if jobs := c.listJobs(); len(jobs) != 0 {
		t.Fatalf("refused calls started jobs: %v", jobs)
	}
	if left := markedProcs(c.marker); len(left) > 0 {
		t.Fatalf("refused calls started processes %v", left)
	}

	served := []struct{ name, host, origin string }{
		{"127.0.0.1, no origin", "127.0.0.1:" + port, ""},
		{"localhost, no origin", "localhost:" + port, ""},
		{"[::1], no origin", "[::1]:" + port, ""},
		{"127.0.0.1, its own origin", "127.0.0.1:" + port, "http://127.0.0.1:" + port},
		{"localhost, its own origin", "localhost:" + port, "http://localhost:" + port},
		{"configured name", "baton.internal:" + port, ""},
		{"configured name, its own origin", "baton.internal:" + port, "http://baton.internal:" + port},
	}
	for _, tt := range served {
		for _, client := range []*http.Client{h1, h2c} {
			if code, body := rawCall(t, client, http.MethodPost, httpAddr, "/baton.v1.SchedulerService/ListWorkers", tt.host, tt.origin, "{}"); code != http.StatusOK {
				t.Errorf("%s: HTTP %d %q, want 200", tt.name, code, body)
			}
		}
	}
	for _, get := range []string{"/", "/metrics"} {
		if code, body := rawCall(t, h1, http.MethodGet, httpAddr, get, "127.0.0.1:"+port, "", ""); code != http.StatusOK {
			t.Errorf("GET %s on loopback: HTTP %d %q", get, code, body)
		}
	}
	if code, body := rawCall(t, h1, http.MethodPost, httpAddr, "/grpc.health.v1.Health/Check", "localhost:"+port, "", "{}"); code != http.StatusOK {
		t.Errorf("health on loopback: HTTP %d %q", code, body)
	}

	// The web page's own call: same origin, so it starts the job.
	code, body := rawCall(t, h1, http.MethodPost, httpAddr, start, "127.0.0.1:"+port, "http://127.0.0.1:"+port, job)
	if code != http.StatusOK {
		t.Fatalf("StartJob from the page's own origin: HTTP %d %q", code, body)
	}
	if jobs := c.listJobs(); len(jobs) != 1 {
		t.Errorf("after one StartJob from the page, ListJobs has %d jobs", len(jobs))
	}
}

// TestAllowedHostsConfig: http_server.allowed_hosts loads from the file
// and the environment, takes names only, is refused beside a certificate,
// and a misspelt key is still an error.
func TestAllowedHostsConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		file    string
		environ []string
		want    []string
		err     string
	}{
		{"file", "[http_server]\naddr = \"127.0.0.1:7080\"\nallowed_hosts = [\"baton.internal\", \"10.1.2.3\"]\n", nil, []string{"baton.internal", "10.1.2.3"}, ""},
		{"environment", "[http_server]\naddr = \"127.0.0.1:7080\"\n", []string{"BATON_HTTP_SERVER_ALLOWED_HOSTS=a.internal,b.internal"}, []string{"a.internal", "b.internal"}, ""},
		{"misspelt key", "[http_server]\nallowed_host = [\"baton.internal\"]\n", nil, nil, "allowed_host"},
		{"port", "[http_server]\nallowed_hosts = [\"baton.internal:7080\"]\n", nil, nil, "http_server.allowed_hosts"},
		{"wildcard", "[http_server]\nallowed_hosts = [\"*\"]\n", nil, nil, "http_server.allowed_hosts"},
		{"with TLS", "[http_server]\naddr = \"0.0.0.0:7443\"\ncrt_file = \"s.crt\"\nkey_file = \"s.key\"\nallowed_hosts = [\"baton.internal\"]\n", nil, nil, "http_server.allowed_hosts is for the plain listener"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := daemon.DefaultSchedulerConfig()
			environ := tt.environ
			if environ == nil {
				environ = []string{}
			}
			_, err := config.Load(&cfg, config.Source{File: e2e.WriteConfig(t, tt.file), Environ: environ})
			if err == nil {
				err = cfg.Validate()
			}
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("got %v, want an error naming %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cfg.HTTPServer.AllowedHosts, tt.want) {
				t.Errorf("allowed_hosts = %q, want %q", cfg.HTTPServer.AllowedHosts, tt.want)
			}
		})
	}
	t.Run("example file", func(t *testing.T) {
		t.Parallel()
		cfg := daemon.DefaultSchedulerConfig()
		if _, err := config.Load(&cfg, config.Source{File: "../../examples/config/scheduler.toml", Environ: []string{}}); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
	})
}
