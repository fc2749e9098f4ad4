package scheduler

import (
	"fmt"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// reservation holds one slot of a worker's capacity for a start in
// flight (see startCount). It ends once: confirm turns it into the started
// job, release gives the slot back, and whichever comes second does
// nothing, so a caller defers release and confirms on success.
type reservation struct {
	target
	reg   *registry
	ended bool
}

// confirm counts the slot as the started job jobID.
func (r *reservation) confirm(jobID string) {
	if !r.ended {
		r.ended = true
		r.reg.confirm(r.id, jobID)
	}
}

// release gives the slot back unless it was confirmed.
func (r *reservation) release() {
	if !r.ended {
		r.ended = true
		r.reg.release(r.id)
	}
}

// releaseAll releases every reservation of a placement.
func releaseAll(slots []*reservation) {
	for _, r := range slots {
		r.release()
	}
}

// place picks the worker for a single job and reserves a slot on it:
// the named worker, or else the least-loaded READY matching worker with
// room. A fan-out is placed with placeAll.
//
// It holds the roster lock for reading only, so heartbeats (which take
// only their member's lock) and other placements go on meanwhile; running
// counts are read and reserved under each member's own lock.
func (r *registry) place(req *batonv1.StartJobRequest) ([]*reservation, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if id := req.GetWorkerId(); id != "" {
		m := r.members[id]
		switch {
		case m == nil || m.w.State == batonv1.WorkerState_WORKER_STATE_UNSPECIFIED:
			return nil, errWorkerNotFound(id)
		case m.w.State == batonv1.WorkerState_WORKER_STATE_DRAINING:
			return nil, newError(errDraining, "worker %q is draining and takes no new jobs", id)
		case m.w.State != batonv1.WorkerState_WORKER_STATE_READY:
			return nil, errWorkerGone(id, m.w.State)
		}
		m.hot.Lock()
		r.reserveHot(m)
		m.hot.Unlock()
		return []*reservation{r.reservationLocked(m)}, nil
	}

	// A concurrent placement may fill the chosen worker between the scan
	// and the reservation; then scan again. Each round reserves a slot or
	// finds the workers fuller, so this ends.
	for {
		best, matched := r.leastLoadedLocked(req.GetSelector())
		if !matched {
			return nil, r.noneMatchingLocked()
		}
		if best == nil {
			return nil, newError(errNoCapacity, "every matching worker runs as many jobs as it can; retry later")
		}
		best.hot.Lock()
		ok := best.w.Capacity <= 0 || best.w.RunningJobs < best.w.Capacity
		if ok {
			r.reserveHot(best)
		}
		best.hot.Unlock()
		if ok {
			return []*reservation{r.reservationLocked(best)}, nil
		}
	}
}

// openWorkers lists the workers a queued job may be handed to now: READY,
// registered with this scheduler (so that their running count is their
// own word, not a stored one) and with a free slot. When every worker is
// busy, as while jobs queue, the list is empty and the queue is not
// looked at; finding that costs one look at the least-loaded worker.
func (r *registry) openWorkers() []*member {
	var out []*member
	for _, m := range r.loads.withRoom() {
		m.hot.Lock()
		open := m.live && m.w.State == batonv1.WorkerState_WORKER_STATE_READY && (m.w.Capacity <= 0 || m.w.RunningJobs < m.w.Capacity)
		m.hot.Unlock()
		if open {
			out = append(out, m)
		}
	}
	return out
}

// reserveAmong reserves a slot for a queued job on one of open (from
// openWorkers): the named worker, or the least-loaded one matching
// selector, if it still has room. It returns nil when none has.
func (r *registry) reserveAmong(open []*member, worker string, selector map[string]string) *reservation {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var best *member
	var bestRunning int32
	for _, m := range open {
		if r.members[m.w.ID] != m || m.w.State != batonv1.WorkerState_WORKER_STATE_READY {
			continue
		}
		if worker != "" && m.w.ID != worker || worker == "" && !matches(m.w.Labels, selector) {
			continue
		}
		m.hot.Lock()
		running, room := m.w.RunningJobs, m.live && (m.w.Capacity <= 0 || m.w.RunningJobs < m.w.Capacity)
		m.hot.Unlock()
		if room && (best == nil || lessLoaded(m, running, m.w.Capacity, best, bestRunning, best.w.Capacity)) {
			best, bestRunning = m, running
		}
	}
	if best == nil {
		return nil
	}
	best.hot.Lock()
	ok := best.live && (best.w.Capacity <= 0 || best.w.RunningJobs < best.w.Capacity)
	if ok {
		r.reserveHot(best)
	}
	best.hot.Unlock()
	if !ok {
		return nil
	}
	return r.reservationLocked(best)
}

// checkNamed refuses a job for a worker that is unknown or draining: it
// would wait forever. A worker that is down, restarting or gone may come
// back, and a job may wait for it.
func (r *registry) checkNamed(id string) error {
	if id == "" {
		return nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	m := r.members[id]
	switch {
	case m == nil || m.w.State == batonv1.WorkerState_WORKER_STATE_UNSPECIFIED:
		return errWorkerNotFound(id)
	case m.w.State == batonv1.WorkerState_WORKER_STATE_DRAINING:
		return newError(errDraining, "worker %q is draining and takes no new jobs", id)
	}
	return nil
}

// waitReason says what a queued job waits for: the named worker, or a
// worker matching selector with a free slot.
func (r *registry) waitReason(worker string, selector map[string]string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if worker != "" {
		m := r.members[worker]
		if m == nil {
			return fmt.Sprintf("waiting for worker %q, which is not registered", worker)
		}
		m.hot.Lock()
		st, running, capacity := m.w.State, m.w.RunningJobs, m.w.Capacity
		m.hot.Unlock()
		if st != batonv1.WorkerState_WORKER_STATE_READY {
			return fmt.Sprintf("waiting for worker %q, which is %s", worker, stateWord(st))
		}
		return fmt.Sprintf("waiting for a free slot on worker %q (%d of %d in use)", worker, running, capacity)
	}
	ready := r.idx.state(batonv1.WorkerState_WORKER_STATE_READY).Len()
	matching := ready
	if len(selector) > 0 {
		matching = 0
		r.readyMatchingLocked(selector, func(*member) bool {
			matching++
			return true
		})
	}
	switch {
	case ready == 0:
		return "waiting for a worker: none is ready"
	case matching == 0:
		return "waiting for a worker: no ready worker has labels matching the selector"
	case matching == 1:
		return "waiting for a free slot: the 1 matching worker is full"
	}
	return fmt.Sprintf("waiting for a free slot: all %d matching workers are full", matching)
}

// placeAll picks every READY worker matching selector, for a fan-out, and
// reserves a slot on each, in worker order. With roomOnly, a worker that
// is full gets no reservation and is listed in full instead, for its job
// to wait in the queue; otherwise every worker gets one, full or not.
func (r *registry) placeAll(selector map[string]string, roomOnly bool) (slots []*reservation, full []string, err error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var matching []*member
	r.readyMatchingLocked(selector, func(m *member) bool {
		matching = append(matching, m)
		return true
	})
	if len(matching) == 0 {
		return nil, nil, r.noneMatchingLocked()
	}
	for _, m := range matching {
		m.hot.Lock()
		room := m.w.Capacity <= 0 || m.w.RunningJobs < m.w.Capacity
		if room || !roomOnly {
			r.reserveHot(m)
		}
		m.hot.Unlock()
		if room || !roomOnly {
			slots = append(slots, r.reservationLocked(m))
		} else {
			full = append(full, m.w.ID)
		}
	}
	return slots, full, nil
}

// reservationLocked is the reservation just counted on m; the caller
// holds r.mu.
func (r *registry) reservationLocked(m *member) *reservation {
	return &reservation{target: r.targetLocked(m), reg: r}
}

// leastLoadedLocked is the least-loaded READY worker matching selector
// with room, and whether any READY worker matched at all. Without a
// selector that is the top of registry.loads; with one, the workers of
// its rarest label pair are compared. The caller holds r.mu.
func (r *registry) leastLoadedLocked(selector map[string]string) (*member, bool) {
	if len(selector) == 0 {
		return r.loads.least()
	}
	var best *member
	var bestRunning int32
	matched := false
	r.readyMatchingLocked(selector, func(m *member) bool {
		matched = true
		m.hot.Lock()
		running := m.w.RunningJobs
		m.hot.Unlock()
		if m.w.Capacity > 0 && running >= m.w.Capacity {
			return true
		}
		if best == nil || lessLoaded(m, running, m.w.Capacity, best, bestRunning, best.w.Capacity) {
			best, bestRunning = m, running
		}
		return true
	})
	return best, matched
}

// readyMatchingLocked calls fn with each READY worker whose labels match
// selector, in name order, until fn returns false. It walks the workers
// of the selector's rarest label pair, or the READY ones for an empty
// selector. The caller holds r.mu.
func (r *registry) readyMatchingLocked(selector map[string]string, fn func(*member) bool) {
	if len(selector) == 0 {
		r.idx.state(batonv1.WorkerState_WORKER_STATE_READY).Ascend(fn)
		return
	}
	r.idx.narrowest(selector).Ascend(func(m *member) bool {
		if m.w.State != batonv1.WorkerState_WORKER_STATE_READY || !matches(m.w.Labels, selector) {
			return true
		}
		return fn(m)
	})
}

// lessLoaded orders workers, given their running counts and capacities,
// by the share of their capacity in use (an unlimited worker counts as
// empty), then by running jobs, then by id so that placement is
// deterministic.
func lessLoaded(a *member, ra, ca int32, b *member, rb, cb int32) bool {
	la, lb := load(ra, ca), load(rb, cb)
	if la != lb {
		return la < lb
	}
	if ra != rb {
		return ra < rb
	}
	return a.w.ID < b.w.ID
}

func load(running, capacity int32) float64 {
	if capacity <= 0 {
		return 0
	}
	return float64(running) / float64(capacity)
}

// matches reports whether labels hold every pair of selector.
func matches(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// noneMatchingLocked says why no worker matched: none is ready at all, or
// none has the labels asked for.
func (r *registry) noneMatchingLocked() error {
	if r.idx.state(batonv1.WorkerState_WORKER_STATE_READY).Len() > 0 {
		return newError(errNoMatch, "no ready worker has labels matching the selector")
	}
	return newError(errNoWorkers, "no worker is ready; start a worker or wait for one to register")
}
