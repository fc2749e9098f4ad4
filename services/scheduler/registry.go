package scheduler

import (
	"maps"
	"sync"
	"sync/atomic"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler/store"
)

// registry is the roster in memory. Its locks guard only memory: no store
// I/O and no network call happens under them. It is safe for concurrent
// use.
//
// Heartbeats take no registry-wide lock: a heartbeat looks its member up in
// index and changes only the member's own fields, under member.hot. With
// 10,000 workers that is 2,000 heartbeats a second; when they took the
// roster lock three times each, a CPU-starved machine turned that lock into
// a convoy (Go's mutex hands a contended lock to the next waiter in line,
// which must first be scheduled) and heartbeats queued for seconds.
type registry struct {
	// dial makes the pooled client of one worker.
	dial func(name, addr string) batonv1connect.WorkerServiceClient

	// mu guards members, idx, membership and the members' cold fields
	// (see member). Changes of membership, state or labels hold it for
	// writing; placement and listing hold it for reading.
	mu      sync.RWMutex
	members map[string]*member // by worker id (== name)
	// idx orders the members by name: all, by state and by label pair.
	idx rosterIndex
	// loads orders the READY workers by load, for placement.
	loads *loadHeap
	// due orders the workers that heartbeat or restart by deadline, for
	// the DOWN sweep.
	due *deadlines
	// running is the sum of the running counts of the workers that run
	// jobs (see runsJobs), for the metrics.
	running atomic.Int64
	// membership counts additions to and removals from members, so that
	// the roster view knows when to sort its order again.
	membership uint64
	// index holds the same members as members, for lookups without mu.
	index sync.Map // string → *member
	// version counts roster changes other than a heartbeat's timestamp
	// (joins, state changes, a changed running count), so cached views
	// know when they are out of date.
	version atomic.Uint64
	// freed is signalled when a worker may have a slot it did not have:
	// a running count went down, or a worker registered. The queue's
	// dispatcher waits on it.
	freed chan struct{}
}

// slotFreed wakes the queue's dispatcher, without waiting.
func (r *registry) slotFreed() {
	select {
	case r.freed <- struct{}{}:
	default:
	}
}

// member is one worker.
//
// Its fields have two guards. The cold ones (the roster entry's name,
// address, labels, capacity and registration time; gen, gone, client) are
// written holding registry.mu and hot, so either is enough to read them.
// The hot ones, which a heartbeat changes, are guarded by hot: the entry's
// running count and last heartbeat, deadline, reporting and rev. State,
// live and the restart fields are written holding both too. Lock order:
// registry.mu, then hot. The labels map is never modified once stored,
// only replaced.
type member struct {
	// opMu serialises the multi-step changes of one worker (registration,
	// heartbeat, the DOWN transition) and the store writes they make, so
	// that they land in order. It is never taken while holding registry.mu
	// or hot.
	opMu sync.Mutex
	hot  sync.Mutex

	w store.Worker
	// deadline is when the worker is marked DOWN without a heartbeat (or,
	// RESTARTING, without registering again); it carries a monotonic
	// reading, so wall-clock jumps do not matter.
	deadline time.Time
	// restartGrace is how long a RESTARTING worker was given to come back,
	// for the reason its jobs get if it does not; restartDraining is
	// whether it was DRAINING when it left, which it stays when it is back.
	restartGrace    time.Duration
	restartDraining bool
	// live is true once the worker registered with this process; a
	// heartbeat before that is answered NotFound so that it registers
	// again with its whole job table.
	live bool
	// gen counts registrations, so that a DOWN transition can tell that
	// the worker came back meanwhile.
	gen uint64
	// gone is closed when the worker goes DOWN, LEFT or RESTARTING; relayed
	// streams watch it. A new registration replaces it.
	gone chan struct{}
	// client calls the worker; nil until first needed (see targetLocked).
	// It is written holding registry.mu (either mode) and hot, and read
	// holding hot.
	client batonv1connect.WorkerServiceClient
	// reporting counts the worker's registrations and heartbeats being
	// processed. A worker that is talking to us is not down, however long
	// the store takes to record what it said.
	reporting int
	// starts makes up w.RunningJobs; see startCount.
	starts startCount
	// rev is the roster version of the worker's last change other than a
	// heartbeat's timestamp: the roster view re-encodes only the workers
	// whose rev moved.
	rev uint64

	// Where the member is filed (see reindexHot and rosterIndex.file):
	// heapAt and key in registry.loads (guarded by its lock), dueAt and
	// dueTime in registry.due (likewise), filed, filedState and
	// filedLabels in registry.idx (guarded by registry.mu), and the
	// running count registry.running includes (guarded by hot).
	heapAt         int
	key            heapKey
	dueAt          int
	dueTime        time.Time
	filed          bool
	filedState     batonv1.WorkerState
	filedLabels    map[string]string
	countedRunning int32
}

// newMember makes the member of roster entry w, filed nowhere yet.
func newMember(w store.Worker) *member {
	return &member{w: w, gone: make(chan struct{}), heapAt: -1, dueAt: -1}
}

// downed is a worker the sweeper marked DOWN.
type downed struct {
	m   *member
	id  string
	gen uint64
	// restarting says the worker was RESTARTING and not back within grace,
	// rather than silent.
	restarting bool
	grace      time.Duration
}

func newRegistry(dial func(name, addr string) batonv1connect.WorkerServiceClient) *registry {
	return &registry{dial: dial, members: make(map[string]*member), idx: newRosterIndex(),
		loads: newLoadHeap(), due: newDeadlines(), freed: make(chan struct{}, 1)}
}

// load fills the roster from the store. READY, DRAINING and RESTARTING
// workers have grace from now to register again. A RESTARTING worker
// comes back READY: whether it was draining is not stored.
func (r *registry) load(workers []store.Worker, grace time.Duration) {
	deadline := time.Now().Add(grace)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range workers {
		m := newMember(w)
		m.deadline, m.rev = deadline, r.version.Add(1)
		if !active(w.State) {
			close(m.gone)
		}
		if w.State == batonv1.WorkerState_WORKER_STATE_RESTARTING {
			m.restartGrace = grace
		}
		r.addLocked(m)
		m.hot.Lock()
		r.reindexHot(m)
		if runsJobs(w.State) {
			r.due.watch(m, deadline)
		}
		m.hot.Unlock()
	}
}

// addLocked adds (or replaces) m; the caller holds r.mu for writing.
func (r *registry) addLocked(m *member) {
	old := r.members[m.w.ID]
	switch {
	case old == nil:
		r.membership++
	case old != m:
		r.removeLocked(old)
		r.membership++ // the roster view holds members, not names
	}
	r.members[m.w.ID] = m
	r.index.Store(m.w.ID, m)
	r.idx.add(m)
}

// removeLocked takes m out of the indexes, as it leaves the roster; the
// caller holds r.mu for writing and deletes it from members and index.
// (registry.due lets go of it when it comes due: it is not active.)
func (r *registry) removeLocked(m *member) {
	r.idx.remove(m)
	m.hot.Lock()
	r.loads.set(m, false, 0, 0)
	r.running.Add(-int64(m.countedRunning))
	m.countedRunning = 0
	m.hot.Unlock()
}

// reindexHot files m's placement facts (state, capacity, running count)
// after a change of any of them; the caller holds m.hot.
func (r *registry) reindexHot(m *member) {
	r.loads.set(m, m.w.State == batonv1.WorkerState_WORKER_STATE_READY, m.w.RunningJobs, m.w.Capacity)
	var counted int32
	if runsJobs(m.w.State) {
		counted = m.w.RunningJobs
	}
	if d := counted - m.countedRunning; d != 0 {
		r.running.Add(int64(d))
		m.countedRunning = counted
	}
}

// refileLocked files m everywhere after a change of its state or labels;
// the caller holds r.mu for writing and m.hot.
func (r *registry) refileLocked(m *member) {
	r.idx.file(m)
	r.reindexHot(m)
}

// changedHot records a change of m other than its heartbeat time; the
// caller holds m.hot.
func (r *registry) changedHot(m *member) {
	m.rev = r.version.Add(1)
}

// active reports whether a worker in state st heartbeats.
func active(st batonv1.WorkerState) bool {
	return st == batonv1.WorkerState_WORKER_STATE_READY || st == batonv1.WorkerState_WORKER_STATE_DRAINING
}

// runsJobs reports whether a worker in state st runs the jobs it last
// reported: an active one, or one restarting, whose jobs outlive it.
func runsJobs(st batonv1.WorkerState) bool {
	return active(st) || st == batonv1.WorkerState_WORKER_STATE_RESTARTING
}

// get returns the member with id, or nil. It takes no lock.
func (r *registry) get(id string) *member {
	if m, ok := r.index.Load(id); ok {
		return m.(*member)
	}
	return nil
}

// getOrCreate returns the member with id, adding an empty one if needed.
func (r *registry) getOrCreate(id string) *member {
	if m := r.get(id); m != nil {
		return m
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.members[id]
	if m == nil {
		m = newMember(store.Worker{ID: id, Name: id, State: batonv1.WorkerState_WORKER_STATE_UNSPECIFIED})
		close(m.gone)
		r.addLocked(m)
	}
	return m
}

// register admits the worker described by req, whose member the caller got
// from getOrCreate and whose opMu it holds.
func (r *registry) register(m *member, req *batonv1.RegisterWorkerRequest, running int32, deadline time.Time) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.members[m.w.ID] != m {
		// forget removed it after the caller looked it up.
		r.addLocked(m)
	}
	m.hot.Lock()
	defer m.hot.Unlock()
	r.changedHot(m)
	switch {
	case m.w.State == batonv1.WorkerState_WORKER_STATE_DRAINING:
	case m.w.State == batonv1.WorkerState_WORKER_STATE_RESTARTING && m.restartDraining:
		m.w.State = batonv1.WorkerState_WORKER_STATE_DRAINING
	default:
		m.w.State = batonv1.WorkerState_WORKER_STATE_READY
	}
	m.restartDraining = false
	if m.w.Address != req.GetAddress() {
		m.client = nil // made again, for the new address, on first use
	}
	m.w.Name = req.GetName()
	m.w.Address = req.GetAddress()
	m.w.Labels = maps.Clone(req.GetLabels())
	m.w.Capacity = req.GetCapacity()
	r.resetHot(m, running)
	m.w.LastHeartbeat = now
	m.w.RegisteredAt = now
	m.deadline = deadline
	m.live = true
	m.gen++
	r.refileLocked(m)
	r.due.watch(m, deadline)
	r.slotFreed()
	select {
	case <-m.gone:
		m.gone = make(chan struct{})
	default:
	}
}

// unadmit undoes the admission of a registration that could not be
// recorded: the worker stays placeable, but its next heartbeat is answered
// NotFound, so that it registers again. The caller holds m.opMu.
func (r *registry) unadmit(m *member) {
	m.hot.Lock()
	defer m.hot.Unlock()
	m.live = false
}

// heartbeat refreshes a live worker and returns its state, or false when
// the worker must register again. running is the worker's count and
// changed the jobs the heartbeat reports changes of. It takes only m's own
// lock.
func (r *registry) heartbeat(m *member, running int32, changed []string, deadline time.Time) (batonv1.WorkerState, bool) {
	now := time.Now()
	m.hot.Lock()
	defer m.hot.Unlock()
	if !m.live || !active(m.w.State) {
		return m.w.State, false
	}
	r.reportedHot(m, running, changed)
	m.w.LastHeartbeat = now
	r.setDeadlineHot(m, deadline)
	return m.w.State, true
}

// forget removes the workers that have been DOWN or LEFT since before
// cutoff (by their last heartbeat) and returns them: a roster does not
// keep every name it ever saw.
func (r *registry) forget(cutoff time.Time) []*member {
	r.mu.Lock()
	defer r.mu.Unlock()
	var gone []*member
	for _, st := range []batonv1.WorkerState{batonv1.WorkerState_WORKER_STATE_DOWN, batonv1.WorkerState_WORKER_STATE_LEFT} {
		r.idx.state(st).Ascend(func(m *member) bool {
			m.hot.Lock()
			old := !m.live && m.w.LastHeartbeat.Before(cutoff)
			m.hot.Unlock()
			if old {
				gone = append(gone, m)
			}
			return true
		})
	}
	for _, m := range gone {
		r.removeLocked(m)
		delete(r.members, m.w.ID)
		r.index.Delete(m.w.ID)
	}
	if len(gone) > 0 {
		r.membership++
		r.version.Add(1)
	}
	return gone
}

// leave marks a worker LEFT; it reports false if the worker is unknown.
func (r *registry) leave(id string) (*member, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.members[id]
	if m == nil {
		return nil, false
	}
	m.hot.Lock()
	defer m.hot.Unlock()
	if m.w.State == batonv1.WorkerState_WORKER_STATE_UNSPECIFIED {
		return nil, false
	}
	r.endLocked(m, batonv1.WorkerState_WORKER_STATE_LEFT)
	return m, true
}

// restart marks a worker RESTARTING for grace: it takes no placements and
// its relayed streams end, but its jobs and their running count stay as
// they are. It reports false if the worker is unknown. A worker that is
// DOWN or LEFT already, or RESTARTING, stays as it is: a DOWN worker's
// jobs are LOST already, and a repeated deregistration does not extend
// the grace.
func (r *registry) restart(id string, grace time.Duration) (*member, bool) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.members[id]
	if m == nil {
		return nil, false
	}
	m.hot.Lock()
	defer m.hot.Unlock()
	if m.w.State == batonv1.WorkerState_WORKER_STATE_UNSPECIFIED {
		return nil, false
	}
	if !active(m.w.State) {
		return m, true
	}
	r.changedHot(m)
	m.restartDraining = m.w.State == batonv1.WorkerState_WORKER_STATE_DRAINING
	m.restartGrace = grace
	m.w.State = batonv1.WorkerState_WORKER_STATE_RESTARTING
	m.deadline = now.Add(grace)
	m.live = false
	r.refileLocked(m)
	r.due.watch(m, m.deadline)
	select {
	case <-m.gone:
	default:
		close(m.gone)
	}
	return m, true
}

// endLocked ends m's membership in state st; the caller holds r.mu and
// m.hot.
func (r *registry) endLocked(m *member, st batonv1.WorkerState) {
	r.changedHot(m)
	m.w.State = st
	m.starts = startCount{pending: m.starts.pending}
	m.w.RunningJobs = 0
	m.live = false
	r.refileLocked(m)
	select {
	case <-m.gone:
	default:
		close(m.gone)
	}
}

// drain moves a READY worker to DRAINING.
func (r *registry) drain(id string) (*member, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.members[id]
	if m == nil || m.w.State == batonv1.WorkerState_WORKER_STATE_UNSPECIFIED {
		return nil, errWorkerNotFound(id)
	}
	if !active(m.w.State) {
		return nil, errWorkerGone(id, m.w.State)
	}
	m.hot.Lock()
	defer m.hot.Unlock()
	r.changedHot(m)
	m.w.State = batonv1.WorkerState_WORKER_STATE_DRAINING
	r.refileLocked(m)
	return m, nil
}

// expire marks DOWN every active or restarting worker whose deadline is
// before now. It looks only at the workers registry.due has due: those
// whose deadline moved meanwhile are filed again at it, and only the ones
// to mark DOWN take the roster lock.
func (r *registry) expire(now time.Time) []downed {
	var late []*member
	for _, m := range r.due.due(now) {
		m.hot.Lock()
		switch {
		case !runsJobs(m.w.State):
			// Not watched until it registers or restarts again.
		case now.After(m.deadline) && m.reporting == 0:
			late = append(late, m)
		default:
			// Heartbeating (or reporting right now: then due again at the
			// next sweep).
			r.due.watch(m, m.deadline)
		}
		m.hot.Unlock()
	}
	if len(late) == 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []downed
	for _, m := range late {
		if r.members[m.w.ID] != m {
			continue
		}
		m.hot.Lock()
		restarting := m.w.State == batonv1.WorkerState_WORKER_STATE_RESTARTING
		switch {
		case !runsJobs(m.w.State):
		case now.After(m.deadline) && m.reporting == 0:
			r.endLocked(m, batonv1.WorkerState_WORKER_STATE_DOWN)
			out = append(out, downed{m: m, id: m.w.ID, gen: m.gen, restarting: restarting, grace: m.restartGrace})
		default:
			r.due.watch(m, m.deadline)
		}
		m.hot.Unlock()
	}
	return out
}

// setDeadlineHot sets m's deadline; the caller holds m.hot. A later one
// (a heartbeat's, nearly always) costs nothing more: registry.due finds it
// when the earlier one comes due.
func (r *registry) setDeadlineHot(m *member, deadline time.Time) {
	if deadline.Before(m.deadline) {
		r.due.watch(m, deadline)
	}
	m.deadline = deadline
}

// stillDown reports whether m is still DOWN from the transition of gen.
func (r *registry) stillDown(m *member, gen uint64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return m.gen == gen && m.w.State == batonv1.WorkerState_WORKER_STATE_DOWN
}

// snapshot returns a copy of m's roster entry.
func (r *registry) snapshot(m *member) store.Worker {
	r.mu.RLock()
	defer r.mu.RUnlock()
	m.hot.Lock()
	defer m.hot.Unlock()
	w := m.w
	w.Labels = maps.Clone(w.Labels)
	return w
}

// tally counts the workers by state and the jobs running on active and
// restarting ones, for the metrics; it copies nothing else.
func (r *registry) tally() (byState map[batonv1.WorkerState]int, running int) {
	byState = make(map[batonv1.WorkerState]int, 5)
	r.mu.RLock()
	defer r.mu.RUnlock()
	for st, t := range r.idx.byState {
		// UNSPECIFIED: made by a registration still in progress.
		if n := t.Len(); n > 0 && st != batonv1.WorkerState_WORKER_STATE_UNSPECIFIED {
			byState[st] = n
		}
	}
	return byState, int(r.running.Load())
}

// target is what a call to a worker needs, copied out of the registry.
type target struct {
	id string
	// addr is the address the worker registered, for messages.
	addr   string
	state  batonv1.WorkerState
	client batonv1connect.WorkerServiceClient
	gone   <-chan struct{}
}

// target returns the worker id as a call target.
func (r *registry) target(id string) (target, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	m := r.members[id]
	if m == nil || m.w.State == batonv1.WorkerState_WORKER_STATE_UNSPECIFIED {
		return target{}, false
	}
	return r.targetLocked(m), true
}

// targetLocked returns m as a call target; the caller holds r.mu, in
// either mode.
func (r *registry) targetLocked(m *member) target {
	m.hot.Lock()
	defer m.hot.Unlock()
	// The client is made on first use: one holds a connect client per
	// WorkerService method, ~7 KB, and at 10,000 workers they were most
	// of the heap the collector had to mark (68 of ~80 MB), its cycles
	// long enough to show in the tail of every call.
	if m.client == nil {
		m.client = r.dial(m.w.ID, m.w.Address)
	}
	return target{id: m.w.ID, addr: m.w.Address, state: m.w.State, client: m.client, gone: m.gone}
}

// release gives back a placement reservation after a failed start.
func (r *registry) release(id string) {
	m := r.get(id)
	if m == nil {
		return
	}
	m.hot.Lock()
	defer m.hot.Unlock()
	if m.starts.pending > 0 {
		m.starts.pending--
	}
	if runsJobs(m.w.State) {
		r.totalHot(m)
	}
}

// beginReport marks a registration or heartbeat of m as in progress; the
// returned func ends it and restarts the worker's deadline from now, since
// the report may have taken a while to record. It takes only m's own lock.
func (r *registry) beginReport(m *member, ttl time.Duration) (end func()) {
	m.hot.Lock()
	m.reporting++
	m.hot.Unlock()
	return func() {
		now := time.Now()
		m.hot.Lock()
		defer m.hot.Unlock()
		m.reporting--
		if m.live && active(m.w.State) {
			r.setDeadlineHot(m, now.Add(ttl))
		}
	}
}
