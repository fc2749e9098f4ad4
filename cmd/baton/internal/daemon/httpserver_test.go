package daemon

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	batoncerts "github.com/baton-run/baton/cmd/baton/internal/certs"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	"github.com/baton-run/baton/services/identity"
)

// TestHTTPServerWithTLSAndTokens runs a scheduler whose [http_server]
// serves TLS with bearer tokens: a token is required there (no anonymous
// caller), and a SIGHUP takes the token list the config holds now, so a
// removed token stops working and a new one starts.
func TestHTTPServerWithTLSAndTokens(t *testing.T) {
	dir := t.TempDir()
	caFile, certs, err := batoncerts.Ensure(filepath.Join(dir, "certs"), "t", identity.Scheduler)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := e2e.LoadCA(caFile)
	if err != nil {
		t.Fatal(err)
	}
	oldToken, oldEntry, err := identity.NewToken(identity.Principal{Role: identity.RoleViewer, Name: "v"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	newToken, newEntry, err := identity.NewToken(identity.Principal{Role: identity.RoleViewer, Name: "w"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultSchedulerConfig()
	cfg.GRPCServer.Addr = e2e.FreeAddr(t)
	cfg.HTTPServer = HTTPServerConfig{Addr: e2e.FreeAddr(t), CrtFile: certs[identity.Scheduler][0], KeyFile: certs[identity.Scheduler][1], Tokens: []string{oldEntry}}
	cfg.Scheduler.DataDir = filepath.Join(dir, "data")
	cfg.Log = config.LogConfig{Level: "error", Format: "text"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// What the config file says after the operator's edit.
	var mu sync.Mutex
	current := cfg
	reload := func() (SchedulerConfig, error) {
		mu.Lock()
		defer mu.Unlock()
		return current, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunScheduler(ctx, cfg, reload) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("scheduler: %v", err)
		}
	})
	e2e.WaitListening(t, cfg.HTTPServer.Addr)

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool},
	}}
	t.Cleanup(client.CloseIdleConnections)
	call := func(method, path, token string) int {
		t.Helper()
		req, err := http.NewRequest(method, "https://"+cfg.HTTPServer.Addr+path, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	status := func(token string) int {
		t.Helper()
		return call(http.MethodPost, "/baton.v1.SchedulerService/ListWorkers", token)
	}
	if code := status(oldToken); code != http.StatusOK {
		t.Errorf("with the configured token: HTTP %d", code)
	}
	// What is served beside the API follows the same rule: /metrics for a
	// viewer's token, health for any caller the listener knows.
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{http.MethodGet, "/metrics", "", http.StatusUnauthorized},
		{http.MethodGet, "/metrics", oldToken, http.StatusOK},
		{http.MethodPost, "/grpc.health.v1.Health/Check", "", http.StatusUnauthorized},
		{http.MethodPost, "/grpc.health.v1.Health/Check", oldToken, http.StatusOK},
	} {
		if code := call(tc.method, tc.path, tc.token); code != tc.want {
			t.Errorf("%s %s with token %v: HTTP %d, want %d", tc.method, tc.path, tc.token != "", code, tc.want)
		}
	}
	if code := status(""); code != http.StatusUnauthorized {
		t.Errorf("without a token: HTTP %d, want 401", code)
	}
	if code := status(newToken); code != http.StatusUnauthorized {
		t.Errorf("with a token not yet configured: HTTP %d, want 401", code)
	}

	mu.Lock()
	current.HTTPServer.Tokens = []string{newEntry}
	mu.Unlock()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); status(newToken) != http.StatusOK; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the new token was not taken after SIGHUP")
		}
	}
	if code := status(oldToken); code != http.StatusUnauthorized {
		t.Errorf("the removed token after SIGHUP: HTTP %d, want 401", code)
	}
}
