package clientcli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batoncerts "github.com/baton-run/baton/cmd/baton/internal/certs"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	"github.com/baton-run/baton/services/identity"
)

// TestCheckAgainstAScheduler runs a scheduler over mutual TLS in this
// process and checks worker and client configs against it: the worker's
// identity reaches the scheduler, the scheduler dials the advertised
// address back and finds that worker there, and the client's identity is
// accepted; an address nobody listens on, or where another worker
// answers, fails naming worker.advertise_addr.
func TestCheckAgainstAScheduler(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	w1 := identity.Principal{Role: identity.RoleWorker, Name: "w1"}
	w2 := identity.Principal{Role: identity.RoleWorker, Name: "w2"}
	alice := identity.Principal{Role: identity.RoleUser, Name: "alice"}
	caFile, certs, err := batoncerts.Ensure(filepath.Join(dir, "certs"), "e2e", identity.Scheduler, w1, w2, alice)
	if err != nil {
		t.Fatal(err)
	}
	_, staging, err := batoncerts.Ensure(filepath.Join(dir, "staging"), "staging", w1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "scripts"), 0o755); err != nil {
		t.Fatal(err)
	}
	schedAddr := e2e.FreeAddr(t)
	schedConfig := filepath.Join(dir, "scheduler.toml")
	writeCheckConfig(t, schedConfig, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = true
ca_file = "certs/ca.crt"
crt_file = "certs/scheduler.crt"
key_file = "certs/scheduler.key"

[scheduler]
data_dir = "data"

[log]
level = "error"
`, schedAddr))
	cfg := daemon.DefaultSchedulerConfig()
	if _, err := config.Load(&cfg, config.Source{File: schedConfig, Environ: []string{}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.RunScheduler(ctx, cfg, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("scheduler: %v", err)
		}
	})
	e2e.WaitListening(t, schedAddr)

	check := func(path string) *checkReport {
		t.Helper()
		return checkConfig(t.Context(), checkOptions{file: path, timeout: 20 * time.Second, environ: []string{}})
	}
	rel := func(path string) string {
		r, err := filepath.Rel(dir, path)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	worker := func(name, listen, advertise string, files [2]string, ca string) string {
		path := filepath.Join(dir, name+".toml")
		adv := ""
		if advertise != "" {
			adv = fmt.Sprintf("advertise_addr = %q\n", advertise)
		}
		writeCheckConfig(t, path, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = true
ca_file = %q
crt_file = %q
key_file = %q

[scheduler]
addr = %q

[worker]
name = "w1"
scripts_dir = "scripts"
%s`, listen, ca, rel(files[0]), rel(files[1]), schedAddr, adv))
		return path
	}

	if r := check(schedConfig); !r.ok() {
		t.Errorf("the scheduler's own config:\n%s", r)
	}

	t.Run("worker passes", func(t *testing.T) {
		t.Parallel()
		listen := e2e.FreeAddr(t)
		r := check(worker("w1-good", listen, "", certs[w1], "certs/ca.crt"))
		if !r.ok() {
			t.Fatalf("want every finding ok:\n%s", r)
		}
		f, _ := r.finding("ok", "worker.advertise_addr")
		if !strings.Contains(f.msg, "the scheduler dialed "+listen+" and found worker/w1") {
			t.Errorf("the dial back is not reported:\n%s", r)
		}
		if f, _ := r.finding("ok", "scheduler.addr"); !strings.Contains(f.msg, "answers as the scheduler of cluster e2e and takes worker/w1's certificate") {
			t.Errorf("the call to the scheduler is not reported:\n%s", r)
		}
	})

	t.Run("scheduler.addr as a URL, as the worker takes it", func(t *testing.T) {
		t.Parallel()
		path := worker("w1-url", e2e.FreeAddr(t), "", certs[w1], "certs/ca.crt")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.Replace(string(b), fmt.Sprintf("addr = %q\n\n[worker]", schedAddr), fmt.Sprintf("addr = %q\n\n[worker]", "https://"+schedAddr), 1))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if r := check(path); !r.ok() {
			t.Fatalf("https://%s: want every finding ok:\n%s", schedAddr, r)
		}
		b = []byte(strings.Replace(string(b), "https://", "http://", 1))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if r := check(path); r.ok() {
			t.Fatalf("http:// with use_tls = true: want a FAIL:\n%s", r)
		}
	})

	t.Run("nobody listens at the advertised address", func(t *testing.T) {
		t.Parallel()
		nobody := e2e.FreeAddr(t)
		r := check(worker("w1-nobody", e2e.FreeAddr(t), nobody, certs[w1], "certs/ca.crt"))
		f, ok := r.finding("FAIL", "worker.advertise_addr")
		if r.ok() || !ok || !strings.Contains(f.msg, "cannot reach worker/w1 at "+nobody) || !strings.Contains(f.msg, "connection refused") {
			t.Fatalf("want FAIL worker.advertise_addr, connection refused:\n%s", r)
		}
	})

	t.Run("another worker answers at the advertised address", func(t *testing.T) {
		t.Parallel()
		// w2's listener: the scheduler must not take it for w1.
		taken := e2e.FreeAddr(t)
		creds, err := identity.LoadCredentials(caFile, certs[w2][0], certs[w2][1])
		if err != nil {
			t.Fatal(err)
		}
		impostor, err := startStandIn(taken, creds)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(impostor.stop)
		r := check(worker("w1-impostor", taken, "", certs[w1], "certs/ca.crt"))
		f, ok := r.finding("FAIL", "worker.advertise_addr")
		if r.ok() || !ok || !strings.Contains(f.msg, "peer worker/w2: want worker/w1") {
			t.Fatalf("want FAIL worker.advertise_addr naming worker/w2:\n%s", r)
		}
	})

	t.Run("worker of another cluster", func(t *testing.T) {
		t.Parallel()
		r := check(worker("w1-staging", e2e.FreeAddr(t), "", staging[w1], "staging/ca.crt"))
		if _, ok := r.finding("FAIL", "grpc_server.ca_file"); !ok {
			t.Fatalf("want FAIL grpc_server.ca_file:\n%s", r)
		}
	})

	t.Run("client passes", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(dir, "client.toml")
		writeCheckConfig(t, path, fmt.Sprintf("[client]\nscheduler = %q\nca_file = \"certs/ca.crt\"\ncert_file = %q\nkey_file = %q\n",
			schedAddr, rel(certs[alice][0]), rel(certs[alice][1])))
		r := check(path)
		f, _ := r.finding("ok", "client.scheduler")
		if !r.ok() || !strings.Contains(f.msg, "accepts user/alice") {
			t.Fatalf("want every finding ok, user/alice accepted:\n%s", r)
		}
	})

	t.Run("client without a certificate", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(dir, "anonymous.toml")
		writeCheckConfig(t, path, fmt.Sprintf("[client]\nscheduler = %q\nca_file = \"certs/ca.crt\"\n", schedAddr))
		r := check(path)
		if f, ok := r.finding("FAIL", "client.cert_file"); !ok || !strings.Contains(f.msg, "certificate") {
			t.Fatalf("want FAIL client.cert_file, a certificate needed:\n%s", r)
		}
	})
}

func writeCheckConfig(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}
