package scheduler

import (
	"testing"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestRunningCountSurvivesStaleHeartbeats walks a worker's running count
// through the orders in which starts and heartbeats can arrive. Each step
// is what the scheduler sees; want is the count placement then uses.
func TestRunningCountSurvivesStaleHeartbeats(t *testing.T) {
	t.Parallel()
	r := newRegistry(testDial)
	m := r.getOrCreate("w")
	soon := time.Now().Add(time.Minute)
	r.register(m, &batonv1.RegisterWorkerRequest{Name: "w", Address: "127.0.0.1:1", Capacity: 10}, 0, soon)
	running := func() int32 {
		m.hot.Lock()
		defer m.hot.Unlock()
		return m.w.RunningJobs
	}
	place := func() {
		t.Helper()
		if _, err := r.place(&batonv1.StartJobRequest{WorkerId: "w", Command: "true"}); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat := func(n int32, changed ...string) {
		t.Helper()
		if _, ok := r.heartbeat(m, n, changed, soon); !ok {
			t.Fatal("heartbeat refused")
		}
	}
	steps := []struct {
		name string
		do   func()
		want int32
	}{
		{"placed", place, 1},
		{"started", func() { r.confirm("w", "a") }, 1},
		// Built before job a started, arriving after: it must not forget a.
		{"a stale heartbeat", func() { heartbeat(0) }, 1},
		{"the heartbeat naming a", func() { heartbeat(1, "a") }, 1},
		{"b placed", place, 2},
		// The worker reports b before the scheduler has b's answer.
		{"a heartbeat naming b early", func() { heartbeat(2, "b") }, 3},
		{"b's answer", func() { r.confirm("w", "b") }, 2},
		{"a and b end", func() { heartbeat(0, "a", "b") }, 0},
		{"c placed, its start fails", func() { place(); r.release("w") }, 0},
		{"d started, reported, answered after two heartbeats", func() {
			place()
			heartbeat(1, "d")
			heartbeat(1)
			heartbeat(1)
			r.confirm("w", "d") // too late to match: counted twice for now
		}, 2},
		{"a heartbeat after d's answer", func() { heartbeat(1) }, 2},
		// Built after the worker took d: its count holds d, so the count
		// does not drift.
		{"the second heartbeat after d's answer", func() { heartbeat(1) }, 1},
		{"d ends", func() { heartbeat(0, "d") }, 0},
		{"e started, a heartbeat built before it, then e ended unseen", func() {
			place()
			r.confirm("w", "e")
			heartbeat(0)
		}, 1},
		{"the next heartbeat: e is not running", func() { heartbeat(0) }, 0},
		{"registered again with 3 jobs", func() {
			r.register(m, &batonv1.RegisterWorkerRequest{Name: "w", Address: "127.0.0.1:1", Capacity: 10}, 3, soon)
		}, 3},
	}
	for _, s := range steps {
		s.do()
		if got := running(); got != s.want {
			t.Fatalf("after %s: running %d, want %d", s.name, got, s.want)
		}
	}
}

// TestReservationEndsOnce: a reservation is confirmed or released once;
// the second of the two does nothing, so a deferred release after a
// confirm leaves the count alone, and releasing twice gives back one slot.
func TestReservationEndsOnce(t *testing.T) {
	t.Parallel()
	r := newRegistry(testDial)
	m := r.getOrCreate("w")
	r.register(m, &batonv1.RegisterWorkerRequest{Name: "w", Address: "127.0.0.1:1", Capacity: 10}, 0, time.Now().Add(time.Minute))
	running := func() int32 {
		m.hot.Lock()
		defer m.hot.Unlock()
		return m.w.RunningJobs
	}
	place := func() *reservation {
		t.Helper()
		slots, err := r.place(&batonv1.StartJobRequest{WorkerId: "w", Command: "true"})
		if err != nil || len(slots) != 1 {
			t.Fatal(slots, err)
		}
		return slots[0]
	}
	a, b := place(), place()
	if got := running(); got != 2 {
		t.Fatalf("two reservations: running %d, want 2", got)
	}
	a.confirm("a")
	a.release()
	b.release()
	b.release()
	b.confirm("b")
	if got := running(); got != 1 {
		t.Errorf("one confirmed, one released twice: running %d, want 1", got)
	}
}
