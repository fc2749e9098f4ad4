package scheduler

import (
	"cmp"
	"slices"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// place picks the workers for req and reserves a slot on each (returned by
// release when the start fails; the next heartbeat sets the true count):
// the named worker; every READY worker matching the selector, for a
// fan-out; or else the least-loaded READY matching worker with room.
func (r *registry) place(req *batonv1.StartJobRequest) ([]target, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
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
		m.w.RunningJobs++
		return []target{{id: id, state: m.w.State, client: m.client, gone: m.gone}}, nil
	}

	if req.GetAll() {
		var matching []*member
		for _, m := range r.members {
			if m.w.State == batonv1.WorkerState_WORKER_STATE_READY && matches(m.w.Labels, req.GetSelector()) {
				matching = append(matching, m)
			}
		}
		if len(matching) == 0 {
			return nil, r.noneMatchingLocked()
		}
		slices.SortFunc(matching, func(a, b *member) int { return cmp.Compare(a.w.ID, b.w.ID) })
		out := make([]target, 0, len(matching))
		for _, m := range matching {
			m.w.RunningJobs++
			out = append(out, target{id: m.w.ID, state: m.w.State, client: m.client, gone: m.gone})
		}
		return out, nil
	}
	// One pass, no allocation: this runs under the roster lock on every
	// StartJob, with thousands of workers.
	var best *member
	matched := false
	for _, m := range r.members {
		if m.w.State != batonv1.WorkerState_WORKER_STATE_READY || !matches(m.w.Labels, req.GetSelector()) {
			continue
		}
		matched = true
		if m.w.Capacity > 0 && m.w.RunningJobs >= m.w.Capacity {
			continue
		}
		if best == nil || lessLoaded(m, best) {
			best = m
		}
	}
	if !matched {
		return nil, r.noneMatchingLocked()
	}
	if best == nil {
		return nil, newError(errNoCapacity, "every matching worker runs as many jobs as it can; retry later")
	}
	best.w.RunningJobs++
	return []target{{id: best.w.ID, state: best.w.State, client: best.client, gone: best.gone}}, nil
}

// lessLoaded orders workers by the share of their capacity in use (an
// unlimited worker counts as empty), then by running jobs, then by id so
// that placement is deterministic.
func lessLoaded(a, b *member) bool {
	la, lb := load(a), load(b)
	if la != lb {
		return la < lb
	}
	if a.w.RunningJobs != b.w.RunningJobs {
		return a.w.RunningJobs < b.w.RunningJobs
	}
	return a.w.ID < b.w.ID
}

func load(m *member) float64 {
	if m.w.Capacity <= 0 {
		return 0
	}
	return float64(m.w.RunningJobs) / float64(m.w.Capacity)
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
	for _, m := range r.members {
		if m.w.State == batonv1.WorkerState_WORKER_STATE_READY {
			return newError(errNoMatch, "no ready worker has labels matching the selector")
		}
	}
	return newError(errNoWorkers, "no worker is ready; start a worker or wait for one to register")
}
