package scheduler_test

import (
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler"
)

// TestRosterForgetsOldWorkers: a worker that left (or went DOWN) longer
// than the retention ago is dropped from the roster and the store, so the
// roster does not keep every name it ever saw; one that comes back later
// registers afresh.
func TestRosterForgetsOldWorkers(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", func(o *scheduler.Options) { o.Retention = time.Second })
	c := s.client
	for _, name := range []string{"old-1", "old-2"} {
		if _, err := c.RegisterWorker(t.Context(), connect.NewRequest(&batonv1.RegisterWorkerRequest{Name: name, Address: "127.0.0.1:1"})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.DeregisterWorker(t.Context(), connect.NewRequest(&batonv1.DeregisterWorkerRequest{WorkerId: "old-1"})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the LEFT worker to be forgotten", func() bool {
		_, known := workerStates(t, c)["old-1"]
		return !known
	})
	if st := workerStates(t, c)["old-2"]; st != stateReady && st != stateDown {
		t.Errorf("the other worker is %v", st)
	}
	// It is gone from the store too: a restarted scheduler does not list it.
	s.kill()
	s2 := startScheduler(t, s.dbPath, func(o *scheduler.Options) { o.Retention = time.Hour })
	if _, known := workerStates(t, s2.client)["old-1"]; known {
		t.Error("a restarted scheduler lists the forgotten worker")
	}
	if _, err := s2.client.RegisterWorker(t.Context(), connect.NewRequest(&batonv1.RegisterWorkerRequest{Name: "old-1", Address: "127.0.0.1:1"})); err != nil {
		t.Fatalf("a forgotten worker registering again: %v", err)
	}
	if st := workerStates(t, s2.client)["old-1"]; st != stateReady {
		t.Errorf("a forgotten worker that registered again is %v, want READY", st)
	}
}
