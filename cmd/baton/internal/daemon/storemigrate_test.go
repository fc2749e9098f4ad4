package daemon

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	"github.com/baton-run/baton/services/etcdmember"
	"github.com/baton-run/baton/services/scheduler/store"
)

// runStoreCommand runs `baton store ARGS` and returns its output.
func runStoreCommand(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := NewStoreCommand()
	cmd.SilenceUsage = true
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(t.Context())
	return out.String(), err
}

// TestStoreMigrate: the copy lands under an empty prefix and says what it
// copied; a prefix that holds a store (here, one worker) is refused and
// left as it was; an embedded member's config is refused with what to do.
func TestStoreMigrate(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := filepath.Join(t.TempDir(), "baton.db")
	src, err := store.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.UpsertWorker(ctx, store.Worker{ID: "w1", Name: "alpha"}); err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	cluster := etcdmember.StartTestCluster(t, 1)
	endpoint := cluster.Endpoints()[0]
	cli, err := etcdmember.NewClient([]string{endpoint}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	taken, err := store.OpenEtcd(ctx, cli, store.EtcdOptions{Prefix: "/taken/"})
	if err != nil {
		t.Fatal(err)
	}
	if err := taken.UpsertWorker(ctx, store.Worker{ID: "w9", Name: "other"}); err != nil {
		t.Fatal(err)
	}

	t.Run("non-empty target", func(t *testing.T) {
		out, err := runStoreCommand(t, "migrate", "--from", db, "--etcd-endpoints", endpoint, "--prefix", "/taken/")
		if err == nil || !strings.Contains(err.Error(), "1 worker") || !strings.Contains(err.Error(), "nothing was copied") {
			t.Fatalf("migrate into a prefix holding a worker: %v (output %q), want a refusal naming what it holds", err, out)
		}
		ws, err := taken.ListWorkers(ctx)
		if err != nil || len(ws) != 1 || ws[0].ID != "w9" {
			t.Fatalf("after the refusal the target lists %v (%v), want w9 alone", ws, err)
		}
	})

	t.Run("config target", func(t *testing.T) {
		file := e2e.WriteConfig(t, `
[store]
backend = "etcd"

[store.etcd]
endpoints = ["`+endpoint+`"]
prefix = "/fresh/"
`)
		out, err := runStoreCommand(t, "migrate", "--from", db, "--config", file)
		if err != nil {
			t.Fatalf("migrate: %v\n%s", err, out)
		}
		if !strings.Contains(out, "1 worker, 0 groups, 0 jobs, 0 schedules, 0 fires") {
			t.Errorf("output does not count what was copied:\n%s", out)
		}
		fresh, err := store.OpenEtcd(ctx, cli, store.EtcdOptions{Prefix: "/fresh/"})
		if err != nil {
			t.Fatal(err)
		}
		if w, err := fresh.GetWorker(ctx, "w1"); err != nil || w.Name != "alpha" {
			t.Errorf("copied worker w1 = %+v, %v", w, err)
		}
	})

	t.Run("embedded member", func(t *testing.T) {
		file := e2e.WriteConfig(t, `
[store]
backend = "etcd"

[store.etcd.embedded]
name = "s1"
peer_url = "http://127.0.0.1:2380"
client_url = "http://127.0.0.1:2379"
initial_cluster = "s1=http://127.0.0.1:2380"
`)
		_, err := runStoreCommand(t, "migrate", "--from", db, "--config", file)
		if err == nil || !strings.Contains(err.Error(), "embedded member") || !strings.Contains(err.Error(), "--etcd-endpoints") {
			t.Fatalf("migrate into an embedded member's config: %v, want a refusal that says to give the running member's URL", err)
		}
	})
}
