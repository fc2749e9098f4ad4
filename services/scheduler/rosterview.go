package scheduler

import (
	"slices"
	"sync"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// rosterViewTTL bounds how stale a ListWorkers answer's last_heartbeat
// times may be. Any other roster change (a join, a state change, a new
// running count) invalidates the view at once.
const rosterViewTTL = time.Second

// rosterView caches the ListWorkers answer. With thousands of workers,
// copying, sorting and converting the roster on every call cost more than
// heartbeat fields fresher than a second are worth. It is safe for
// concurrent use; the cached messages are shared and never modified.
type rosterView struct {
	mu      sync.Mutex
	built   time.Time
	version uint64
	workers []*batonv1.Worker
}

// list returns the workers in the given states (all when empty), by name.
func (v *rosterView) list(reg *registry, states []batonv1.WorkerState) []*batonv1.Worker {
	v.mu.Lock()
	if v.workers == nil || time.Since(v.built) > rosterViewTTL || reg.currentVersion() != v.version {
		ws, version := reg.listVersion()
		workers := make([]*batonv1.Worker, 0, len(ws))
		for _, w := range ws {
			workers = append(workers, workerToProto(w))
		}
		v.workers, v.version, v.built = workers, version, time.Now()
	}
	all := v.workers
	v.mu.Unlock()
	if len(states) == 0 {
		return all
	}
	out := make([]*batonv1.Worker, 0, len(all))
	for _, w := range all {
		if slices.Contains(states, w.GetState()) {
			out = append(out, w)
		}
	}
	return out
}
