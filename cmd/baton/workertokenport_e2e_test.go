package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// TestWorkerAtTheTokenPort: a worker whose scheduler.addr is the
// scheduler's HTTPS token port (http_server) rather than its mutual-TLS
// port is refused at registration, and its log names the setting, the
// address, and the port workers use instead.
func TestWorkerAtTheTokenPort(t *testing.T) {
	bin := e2e.SharedBaton(t)
	certs := filepath.Join(t.TempDir(), "certs")
	issueCerts(t, bin, certs, "e2e", "scheduler", "worker/w1")
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	c := &cluster{
		t:       t,
		bin:     bin,
		dir:     e2e.JobsTempDir(t),
		marker:  "bzp" + hex.EncodeToString(rnd[:]),
		workers: map[string]*workerInfo{},
	}
	t.Cleanup(c.cleanup)
	ca := filepath.Join(certs, "ca.crt")
	c.schedAdr = e2e.FreeAddr(t)
	tokenAddr := e2e.FreeAddr(t)
	c.schedCfg = filepath.Join(c.dir, "scheduler.toml")
	c.writeFile(c.schedCfg, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = true
ca_file = %q
crt_file = %q
key_file = %q

[http_server]
addr = %q
crt_file = %q
key_file = %q
tokens = []

[scheduler]
data_dir = %q

[log]
format = "json"
`, c.schedAdr, ca, filepath.Join(certs, "scheduler.crt"), filepath.Join(certs, "scheduler.key"),
		tokenAddr, filepath.Join(certs, "scheduler.crt"), filepath.Join(certs, "scheduler.key"),
		filepath.Join(c.dir, "scheduler")), 0o600)
	c.startScheduler()
	e2e.WaitListening(t, tokenAddr)

	base := filepath.Join(c.dir, "w1")
	scripts := filepath.Join(base, "scripts")
	if err := os.MkdirAll(scripts, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(base, "worker.toml")
	c.writeFile(cfg, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = true
ca_file = %q
crt_file = %q
key_file = %q

[scheduler]
addr = %q

[worker]
name = "w1"
data_dir = %q
scripts_dir = %q
allowed_commands = ["bash"]

[log]
format = "json"
`, e2e.FreeAddr(t), ca, filepath.Join(certs, "worker-w1.crt"), filepath.Join(certs, "worker-w1.key"),
		tokenAddr, filepath.Join(base, "data"), scripts), 0o600)
	w := c.spawn("w1", "worker", "--config", cfg)

	// The worker keeps retrying; its first refusal is what an operator reads.
	var failure map[string]any
	deadline := time.Now().Add(60 * time.Second)
	for failure == nil {
		raw, _ := os.ReadFile(w.logPath)
		for line := range strings.Lines(string(raw)) {
			var entry map[string]any
			if json.Unmarshal([]byte(line), &entry) == nil && entry["msg"] == "registration failed; retrying" {
				failure = entry
				break
			}
		}
		if failure != nil {
			break
		}
		if w.exited() || time.Now().After(deadline) {
			t.Fatalf("the worker logged no registration failure (exited %v):\n%s", w.exited(), raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
	msg, _ := failure["error"].(string)
	t.Logf("the worker's registration error: %s", msg)
	for _, want := range []string{
		"scheduler.addr " + tokenAddr + ": ",
		"takes bearer tokens only",
		"use the scheduler's mutual-TLS port (grpc_server.addr)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the worker's registration error is %q; want it to say %q", msg, want)
		}
	}
	if code := failure["code"]; code != "unauthenticated" {
		t.Errorf("the registration failure's code is %v, want unauthenticated", code)
	}
}
