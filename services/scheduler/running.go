package scheduler

// How the scheduler counts a worker's running jobs, for placement.
//
// A heartbeat carries the worker's count, but that count can be older than
// a start the scheduler just made: the worker may build a heartbeat, then
// accept a StartJob, and the heartbeat arrive after the StartJob's answer.
// Taking its count as it is would forget that job, and least-loaded
// placement would pick the same worker twice. So the count is
//
//	reported + pending + len(unreported)
//
// where reported is the worker's last count, pending the placements whose
// start has no outcome yet, and unreported the jobs started since that no
// heartbeat has mentioned. Heartbeats list every job that changed since
// the previous one, a start included, so a job leaves unreported with the
// first heartbeat that names it; a heartbeat that names a job before its
// start's answer is remembered for two heartbeats (early), so that the
// answer does not count the job again. A job leaves unreported at the
// latest with the second heartbeat after its start was confirmed: heartbeats
// go one at a time, so that one was built after the worker took the job,
// and its count includes the job if it still runs. The count cannot drift
// for longer than that. Every field here is guarded by member.hot.
type startCount struct {
	reported int32
	pending  int32
	// unreported maps each job to the number of heartbeats taken when its
	// start was confirmed.
	unreported map[string]uint64
	beats      uint64
	// early holds jobs that the latest two heartbeats named before their
	// start was confirmed: [0] the latest, [1] the one before.
	early [2]map[string]struct{}
}

// totalHot sets m's running count from its parts; the caller holds m.hot.
func (r *registry) totalHot(m *member) {
	c := &m.starts
	n := c.reported + c.pending + int32(len(c.unreported))
	if m.w.RunningJobs != n {
		r.changedHot(m)
		freed := n < m.w.RunningJobs
		m.w.RunningJobs = n
		r.reindexHot(m)
		// After the index has it: the queue's dispatcher finds workers
		// with room there.
		if freed {
			r.slotFreed()
		}
	}
}

// reserveHot counts a placement on m; the caller holds m.hot.
func (r *registry) reserveHot(m *member) {
	m.starts.pending++
	r.totalHot(m)
}

// confirm turns worker id's reservation into the started job jobID.
func (r *registry) confirm(id, jobID string) {
	m := r.get(id)
	if m == nil {
		return
	}
	m.hot.Lock()
	defer m.hot.Unlock()
	c := &m.starts
	if c.pending > 0 {
		c.pending--
	}
	_, seen0 := c.early[0][jobID]
	_, seen1 := c.early[1][jobID]
	if !seen0 && !seen1 {
		if c.unreported == nil {
			c.unreported = make(map[string]uint64)
		}
		c.unreported[jobID] = c.beats
	}
	r.totalHot(m)
}

// ended takes the end of job jobID on worker id, learnt from its final
// status on an output stream: a job counted as unreported stops counting at
// once, so that a worker running short jobs is not taken for full until its
// next heartbeats. A job the worker's reported count includes keeps
// counting until a heartbeat brings the count without it.
func (r *registry) ended(id, jobID string) {
	m := r.get(id)
	if m == nil {
		return
	}
	m.hot.Lock()
	defer m.hot.Unlock()
	if _, ok := m.starts.unreported[jobID]; ok {
		delete(m.starts.unreported, jobID)
		r.totalHot(m)
	}
}

// reportedHot takes a heartbeat's count and the jobs it names; the caller
// holds m.hot.
func (r *registry) reportedHot(m *member, running int32, changed []string) {
	c := &m.starts
	c.beats++
	for id, at := range c.unreported {
		if c.beats-at >= 2 {
			delete(c.unreported, id)
		}
	}
	c.early[1], c.early[0] = c.early[0], nil
	for _, id := range changed {
		if _, ok := c.unreported[id]; ok {
			delete(c.unreported, id)
			continue
		}
		if c.early[0] == nil {
			c.early[0] = make(map[string]struct{})
		}
		c.early[0][id] = struct{}{}
	}
	c.reported = running
	r.totalHot(m)
}

// resetHot starts counting afresh from a registration's whole job table;
// starts still in flight stay pending. The caller holds m.hot.
func (r *registry) resetHot(m *member, running int32) {
	m.starts = startCount{reported: running, pending: m.starts.pending}
	r.totalHot(m)
}
