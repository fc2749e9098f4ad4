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
