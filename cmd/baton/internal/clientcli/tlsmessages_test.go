package clientcli

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	batoncerts "github.com/baton-run/baton/cmd/baton/internal/certs"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/identity"
)

// TestTLSRefusalsSayWhatToFix: a scheduler over mutual TLS, and clients
// that get it wrong in the usual ways. Each gets one message naming the
// setting to change, the same every time, however the refusal surfaced
// on the connection.
func TestTLSRefusalsSayWhatToFix(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	alice := identity.Principal{Role: identity.RoleUser, Name: "alice"}
	caFile, certs, err := batoncerts.Ensure(filepath.Join(dir, "certs"), "t", identity.Scheduler, alice)
	if err != nil {
		t.Fatal(err)
	}
	_, otherCerts, err := batoncerts.Ensure(filepath.Join(dir, "other"), "t", alice)
	if err != nil {
		t.Fatal(err)
	}
	cfg := daemon.DefaultSchedulerConfig()
	cfg.GRPCServer = config.GRPCServerConfig{Addr: e2e.FreeAddr(t), UseTLS: true, CAFile: caFile, CrtFile: certs[identity.Scheduler][0], KeyFile: certs[identity.Scheduler][1]}
	cfg.Scheduler.DataDir = filepath.Join(dir, "data")
	cfg.Log = config.LogConfig{Level: "error", Format: "text"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.RunScheduler(ctx, cfg, func() (daemon.SchedulerConfig, error) { return cfg, nil })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("scheduler: %v", err)
		}
	})
	e2e.WaitListening(t, cfg.GRPCServer.Addr)

	call := func(c config.ClientSection) string {
		t.Helper()
		cl, err := newClient(c)
		if err != nil {
			return err.Error()
		}
		defer cl.Close()
		_, err = cl.Scheduler().ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
		if err == nil {
			return "ok"
		}
		return errorLine(explain(err))
	}
	good := config.ClientSection{Scheduler: "https://" + cfg.GRPCServer.Addr, CAFile: caFile, CertFile: certs[alice][0], KeyFile: certs[alice][1]}
	if got := call(good); got != "ok" {
		t.Fatalf("a client with its certificate: %s", got)
	}
	for _, tc := range []struct {
		name string
		c    config.ClientSection
		want string
	}{
		{"no certificate", config.ClientSection{Scheduler: good.Scheduler, CAFile: caFile}, "sent no certificate; set client.cert_file and client.key_file"},
		{"another cluster's certificate", config.ClientSection{Scheduler: good.Scheduler, CAFile: caFile, CertFile: otherCerts[alice][0], KeyFile: otherCerts[alice][1]}, "not signed by the cluster's CA"},
		{"another cluster's CA", config.ClientSection{Scheduler: good.Scheduler, CAFile: filepath.Join(dir, "other", "ca.crt"), CertFile: certs[alice][0], KeyFile: certs[alice][1]}, "not signed by the CA in client.ca_file"},
		{"plain http to the TLS port", config.ClientSection{Scheduler: "http://" + cfg.GRPCServer.Addr}, "the scheduler's port at " + cfg.GRPCServer.Addr + " speaks TLS: use https:// in client.scheduler and set client.ca_file"},
	} {
		first := call(tc.c)
		if !strings.Contains(first, tc.want) {
			t.Errorf("%s: %q, want it to say %q", tc.name, first, tc.want)
		}
		for range 2 {
			if again := call(tc.c); again != first {
				t.Errorf("%s: %q, then %q: one cause, two messages", tc.name, first, again)
			}
		}
	}
}
