package scheduler

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler/store"
)

// TestPlaceConcurrently places more jobs than there is room for, all at
// once: placements scan under the read lock and reserve under each
// worker's own, so none may overfill a worker.
func TestPlaceConcurrently(t *testing.T) {
	t.Parallel()
	const workers, capacity, attempts = 4, 3, 40
	r := newRegistry(testDial)
	for i := range workers {
		name := fmt.Sprintf("w%d", i)
		m := r.getOrCreate(name)
		r.register(m, &batonv1.RegisterWorkerRequest{Name: name, Address: "127.0.0.1:1", Capacity: capacity}, 0, time.Now().Add(time.Minute))
	}
	// The roster view walks the workers meanwhile, as ListWorkers does.
	stop := make(chan struct{})
	var readers sync.WaitGroup
	var v rosterView
	for range 2 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if n := len(v.list(r, listQuery{}).GetWorkers()); n != workers {
					t.Errorf("the view lists %d workers, want %d", n, workers)
					return
				}
			}
		})
	}
	var placed sync.WaitGroup
	var mu sync.Mutex
	perWorker := map[string]int{}
	var fullCount int
	for range attempts {
		placed.Go(func() {
			ts, err := r.place(&batonv1.StartJobRequest{Command: "true"})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, errNoCapacity):
				fullCount++
			case err != nil:
				t.Errorf("place: %v", err)
			default:
				perWorker[ts[0].id]++
			}
		})
	}
	placed.Wait()
	close(stop)
	readers.Wait()
	total := 0
	for id, n := range perWorker {
		if n > capacity {
			t.Errorf("%s got %d jobs, capacity %d", id, n, capacity)
		}
		total += n
	}
	if total != workers*capacity || fullCount != attempts-workers*capacity {
		t.Errorf("placed %d (%v), refused %d; want %d placed and %d refused", total, perWorker, fullCount, workers*capacity, attempts-workers*capacity)
	}
	for i := range workers {
		m := r.get(fmt.Sprintf("w%d", i))
		if w := r.snapshot(m); w.RunningJobs != capacity {
			t.Errorf("%s runs %d, want %d", w.ID, w.RunningJobs, capacity)
		}
	}
}

// testDial makes worker clients that are never called.
func testDial(_, addr string) batonv1connect.WorkerServiceClient {
	return batonv1connect.NewWorkerServiceClient(http.DefaultClient, "http://"+addr)
}

// TestRegistryRestart: a worker deregistered for a restart is RESTARTING:
// it takes no placement and no heartbeat, and keeps its running count. It
// comes back READY, or DRAINING if it was; only once its grace has passed
// is it marked DOWN, as a worker that did not come back.
func TestRegistryRestart(t *testing.T) {
	t.Parallel()
	const grace = time.Minute
	restarting := batonv1.WorkerState_WORKER_STATE_RESTARTING
	r := newRegistry(testDial)
	ready := joinWorker(r, "ready", nil)
	draining := joinWorker(r, "draining", nil)
	if _, err := r.drain("draining"); err != nil {
		t.Fatal(err)
	}
	restart := func() {
		t.Helper()
		for _, m := range []*member{ready, draining} {
			if _, ok := r.heartbeat(m, 2, nil, time.Now().Add(time.Hour)); !ok {
				t.Fatalf("heartbeat of %s refused", m.w.ID)
			}
			if _, ok := r.restart(m.w.ID, grace); !ok {
				t.Fatalf("restart of %s refused", m.w.ID)
			}
		}
	}
	restart()
	for _, m := range []*member{ready, draining} {
		w := r.snapshot(m)
		if w.State != restarting || w.RunningJobs != 2 {
			t.Errorf("%s after its restarting deregistration: %v running %d, want RESTARTING running 2", w.ID, w.State, w.RunningJobs)
		}
		select {
		case <-m.gone:
		default:
			t.Errorf("%s: relayed streams were not told it is gone", w.ID)
		}
		if _, ok := r.heartbeat(m, 2, nil, time.Now().Add(time.Hour)); ok {
			t.Errorf("%s: a heartbeat was taken instead of asking for a registration", w.ID)
		}
	}
	if byState, running := r.tally(); byState[restarting] != 2 || running != 4 {
		t.Errorf("tally: %v, %d running; want 2 RESTARTING running 4 jobs", byState, running)
	}
	if _, err := r.place(&batonv1.StartJobRequest{}); !errors.Is(err, errNoWorkers) {
		t.Errorf("placement with only restarting workers: %v, want %v", err, errNoWorkers)
	}
	if _, err := r.place(&batonv1.StartJobRequest{WorkerId: "ready"}); !errors.Is(err, errWorkerUnavailable) {
		t.Errorf("placement on a restarting worker: %v, want %v", err, errWorkerUnavailable)
	}
	// A repeated deregistration does not extend the grace.
	if _, ok := r.restart("ready", 10*grace); !ok {
		t.Fatal("second restart refused")
	}
	if got := r.expire(time.Now().Add(grace / 2)); len(got) != 0 {
		t.Fatalf("expire within the grace marked %d workers DOWN", len(got))
	}

	joinWorker(r, "ready", nil)
	joinWorker(r, "draining", nil)
	for m, want := range map[*member]batonv1.WorkerState{ready: batonv1.WorkerState_WORKER_STATE_READY, draining: batonv1.WorkerState_WORKER_STATE_DRAINING} {
		if got := r.snapshot(m).State; got != want {
			t.Errorf("%s back from its restart is %v, want %v", m.w.ID, got, want)
		}
	}

	restart()
	downed := r.expire(time.Now().Add(grace + time.Second))
	if len(downed) != 2 {
		t.Fatalf("expire past the grace marked %d workers DOWN, want 2", len(downed))
	}
	for _, d := range downed {
		if !d.restarting || d.grace != grace {
			t.Errorf("%s marked DOWN as restarting %v with grace %v, want restarting with %v", d.id, d.restarting, d.grace, grace)
		}
		if w := r.snapshot(d.m); w.State != batonv1.WorkerState_WORKER_STATE_DOWN || w.RunningJobs != 0 {
			t.Errorf("%s past its grace: %v running %d, want DOWN running 0", d.id, w.State, w.RunningJobs)
		}
	}
	// A DOWN worker's jobs are LOST already: a restarting deregistration
	// leaves it DOWN.
	if _, ok := r.restart("ready", grace); !ok || r.snapshot(ready).State != batonv1.WorkerState_WORKER_STATE_DOWN {
		t.Errorf("a DOWN worker deregistered for a restart is %v, want DOWN", r.snapshot(ready).State)
	}
}

// TestRegistryLoadRestarting: a worker the store holds as RESTARTING, after
// a scheduler restart, has the failover grace to come back, as READY and
// DRAINING ones do, and is then marked DOWN as one that did not.
func TestRegistryLoadRestarting(t *testing.T) {
	t.Parallel()
	const failover = 5 * time.Minute
	r := newRegistry(testDial)
	r.load([]store.Worker{
		{ID: "restarting", Name: "restarting", State: batonv1.WorkerState_WORKER_STATE_RESTARTING, RunningJobs: 3},
		{ID: "left", Name: "left", State: batonv1.WorkerState_WORKER_STATE_LEFT},
	}, failover)
	tg, ok := r.target("restarting")
	if !ok || tg.state != batonv1.WorkerState_WORKER_STATE_RESTARTING {
		t.Fatalf("loaded worker: %v %v, want RESTARTING", ok, tg.state)
	}
	select {
	case <-tg.gone:
	default:
		t.Error("a loaded restarting worker is taken for reachable")
	}
	if got := r.expire(time.Now().Add(failover / 2)); len(got) != 0 {
		t.Fatalf("expire within the failover grace marked %d workers DOWN", len(got))
	}
	got := r.expire(time.Now().Add(failover + time.Second))
	if len(got) != 1 || got[0].id != "restarting" || !got[0].restarting || got[0].grace != failover {
		t.Fatalf("expire past the failover grace: %+v, want restarting DOWN with grace %v", got, failover)
	}
}
