package scheduler

import (
	"container/heap"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// queue holds the jobs waiting on the scheduler for a slot, in the order
// they get one: higher priority first; at one priority, owners take turns
// (round), and each owner's jobs go in submission order (seq). The store
// keeps the same places, so that a restarted scheduler loads the same
// order (see store.QueuePlace).
//
// Jobs are grouped by what they can run on (a named worker, or a
// selector): within one group, if the first job finds no slot, none of
// the others can. So handing out the next job looks at each group's first
// job only, however long the queue is, and only when some worker has a
// free slot.
//
// Turns are taken within a group, among the owners competing for the same
// workers: a group's round is the one being served there, and an owner's
// next job gets the later of its own next round and that one, so an owner
// who arrives late takes turns from now on, not from the start.
//
// The queue only orders and hands out; placing a job and recording it is
// the dispatcher's (dispatch.go). It is safe for concurrent use.
type queue struct {
	mu     sync.Mutex
	groups map[string]*waitGroup
	jobs   map[string]*waiting
	size   atomic.Int64 // len(jobs), read without mu
	seq    int64
	// deadlines holds the waiting jobs with a queue timeout, soonest first.
	deadlines deadlineHeap
	// owned counts each owner's jobs in the queue, against limit (0: none).
	owned map[string]int
	limit int
	// wake is signalled when a job is added or comes back: the dispatcher
	// should look again.
	wake chan struct{}
	// held are the jobs that wait for other jobs or their array's turn
	// (holds.go), out of the order until nothing holds them; waiters maps
	// a job or group id to the held jobs waiting for it, and arrays an
	// array's group id to its turns.
	held    map[string]*waiting
	waiters map[string]map[*waiting]struct{}
	arrays  map[string]*arrayTurns
}

// turn is where an owner is in the turns of one group at one priority.
type turn struct {
	group    string
	owner    string
	priority int32
}

// waiting is one queued job: what ordering and timing it out need, not
// its spec (a spec may be 256 KiB; the store has it).
type waiting struct {
	id    string
	owner string
	// run is the run id of the attempt it waits to start ("" for the first).
	run   string
	place store.QueuePlace
	// queueTimeout is the job's queue_timeout, for the reason it gets
	// when that passes.
	queueTimeout time.Duration
	group        *waitGroup
	selector     map[string]string
	// held is true while something besides a slot holds the job: deps it
	// still waits for, or its array's turn (array is its group then).
	held       bool
	deps       []dep
	array      string
	arrayIndex int32
	arrayMax   int
	notBefore  time.Time
	// timer releases the job at notBefore.
	timer *time.Timer
	// queuedAt is when the job entered the queue (this process's clock,
	// for the wait metric).
	queuedAt time.Time
	// handed is true while the dispatcher starts the job: it is out of
	// its group but not yet out of the queue.
	handed bool
	// tries counts the hand-outs that did not start the job, for the
	// pause before the next; pausing is true during that pause, when the
	// job is handed but nobody is starting it.
	tries   int
	pausing bool
	// heapIndex is the job's index in deadlines, -1 when not in it.
	heapIndex int
	// done is closed when the job leaves the queue: started, or ended
	// without running.
	done chan struct{}
}

// waitGroup is the jobs that can run on the same workers, in order.
type waitGroup struct {
	key      string
	worker   string
	selector map[string]string
	jobs     []*waiting
	// served is, per priority, the latest round handed out; last and
	// count are, per owner and priority, the latest round given and the
	// jobs waiting.
	served map[int32]int64
	last   map[turn]int64
	count  map[turn]int
}

// newQueue returns an empty queue in which an owner may have at most
// limit jobs (0: no limit).
func newQueue(limit int) *queue {
	return &queue{
		groups: make(map[string]*waitGroup),
		jobs:   make(map[string]*waiting),
		wake:   make(chan struct{}, 1),
		owned:  make(map[string]int),
		limit:  limit,

		held:    make(map[string]*waiting),
		waiters: make(map[string]map[*waiting]struct{}),
		arrays:  make(map[string]*arrayTurns),
	}
}

// before orders places: priority, then round, then seq.
func before(a, b store.QueuePlace) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	if a.Round != b.Round {
		return a.Round < b.Round
	}
	return a.Seq < b.Seq
}

// groupKey names the workers a job can run on.
func groupKey(worker string, selector map[string]string) string {
	if worker != "" {
		return "worker\x00" + worker
	}
	var b strings.Builder
	b.WriteString("selector")
	for _, k := range slices.Sorted(maps.Keys(selector)) {
		b.WriteString("\x00" + k + "=" + selector[k])
	}
	return b.String()
}

// groupLocked returns the group of worker and selector, made if needed.
func (q *queue) groupLocked(worker string, selector map[string]string) *waitGroup {
	key := groupKey(worker, selector)
	g := q.groups[key]
	if g == nil {
		g = &waitGroup{
			key: key, worker: worker, selector: selector,
			served: make(map[int32]int64), last: make(map[turn]int64), count: make(map[turn]int),
		}
		q.groups[key] = g
	}
	return g
}

// place gives a new job of owner its place: the next seq, and its round
// at priority in its group. The caller records the job with it, then adds
// it. It fails when the owner has as many jobs queued as the limit allows.
func (q *queue) place(owner, worker string, selector map[string]string, priority int32, deadline time.Time) (store.QueuePlace, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.limit > 0 && q.owned[owner] >= q.limit {
		return store.QueuePlace{}, newError(errQueueFull, "%s has %d jobs queued, the most the scheduler's max_queued_per_owner allows; wait for some to start, or stop some", owner, q.owned[owner])
	}
	// The group is made when the job is added: a job whose record fails
	// leaves nothing behind.
	var last, served int64
	if g := q.groups[groupKey(worker, selector)]; g != nil {
		t := turn{g.key, owner, priority}
		last, served = g.last[t], g.served[priority]
		g.last[t] = max(last+1, served)
	}
	round := max(last+1, served)
	q.seq++
	return store.QueuePlace{WorkerID: worker, Priority: priority, Round: round, Seq: q.seq, Deadline: deadline}, nil
}

// add puts job j, recorded with j.Queue as its place, in the queue.
func (q *queue) add(j store.Job, queuedAt time.Time) *waiting {
	q.mu.Lock()
	defer q.mu.Unlock()
	w := q.addLocked(j, queuedAt)
	q.signal()
	return w
}

func (q *queue) addLocked(j store.Job, queuedAt time.Time) *waiting {
	spec := j.Status.GetSpec()
	w := &waiting{
		id: j.ID, owner: j.Owner, place: *j.Queue, queuedAt: queuedAt,
		queueTimeout: spec.GetQueueTimeout().AsDuration(), heapIndex: -1, done: make(chan struct{}),
		selector: spec.GetSelector(), run: j.Status.GetRunId(),
	}
	w.group = q.groupLocked(w.place.WorkerID, spec.GetSelector())
	q.seq = max(q.seq, w.place.Seq)
	q.insertLocked(w)
	return w
}

// insertLocked puts w, whose group is set, in the queue's indexes.
func (q *queue) insertLocked(w *waiting) {
	g := w.group
	g.insert(w)
	t := turn{g.key, w.owner, w.place.Priority}
	g.count[t]++
	g.last[t] = max(g.last[t], w.place.Round)
	q.jobs[w.id] = w
	q.size.Store(int64(len(q.jobs)))
	q.owned[w.owner]++
	if !w.place.Deadline.IsZero() {
		heap.Push(&q.deadlines, w)
	}
}

// load fills the queue from the store's queued jobs. Each group's turns go
// on from its first waiting job: owners keep their places, and one who
// comes later joins the turns there.
func (q *queue) load(jobs []store.Job, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, j := range jobs {
		q.seq = max(q.seq, j.Queue.Seq)
		if j.Status.GetState() != batonv1.JobState_JOB_STATE_QUEUED {
			continue // handed out: its worker's registration settles it
		}
		if isHeld(j) {
			q.holdLocked(j, now)
			continue
		}
		w := q.addLocked(j, now)
		g, p := w.group, w.place
		if s, ok := g.served[p.Priority]; !ok || p.Round < s {
			g.served[p.Priority] = p.Round
		}
	}
	q.signal()
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// insert puts w in g at its place.
func (g *waitGroup) insert(w *waiting) {
	i := countBefore(g.jobs, w.place)
	g.jobs = slices.Insert(g.jobs, i, w)
}

// remove takes w out of g's order.
func (g *waitGroup) remove(w *waiting) {
	if i := slices.Index(g.jobs, w); i >= 0 {
		g.jobs = slices.Delete(g.jobs, i, i+1)
	}
}

// next hands out the first job, in queue order, that reserve finds a slot
// for, and its slot; reserve is asked about each group's first job only.
// The job stays in the queue, handed, until finish or putBack.
func (q *queue) next(reserve func(worker string, selector map[string]string) *reservation) (*waiting, *reservation) {
	if q.size.Load() == 0 {
		return nil, nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	var heads []*waitGroup
	for _, g := range q.groups {
		if len(g.jobs) > 0 {
			heads = append(heads, g)
		}
	}
	slices.SortFunc(heads, func(a, b *waitGroup) int {
		if before(a.jobs[0].place, b.jobs[0].place) {
			return -1
		}
		return 1
	})
	for _, g := range heads {
		slot := reserve(g.worker, g.selector)
		if slot == nil {
			continue
		}
		w := g.jobs[0]
		g.jobs = g.jobs[1:]
		w.handed = true
		q.unheapLocked(w)
		g.served[w.place.Priority] = max(g.served[w.place.Priority], w.place.Round)
		return w, slot
	}
	return nil, nil
}

// finish takes a handed job out of the queue: it started, or ended.
func (q *queue) finish(w *waiting) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dropLocked(w) {
		close(w.done)
	}
}

// dropLocked takes w out of the queue, and reports whether it was in.
// Its done channel stays open: the caller closes it once the job's end is
// recorded, or puts the job back with restore.
func (q *queue) dropLocked(w *waiting) bool {
	if q.jobs[w.id] != w {
		return false
	}
	delete(q.jobs, w.id)
	q.size.Store(int64(len(q.jobs)))
	g := w.group
	g.remove(w)
	q.unheapLocked(w)
	t := turn{g.key, w.owner, w.place.Priority}
	if g.count[t]--; g.count[t] <= 0 {
		// An owner with nothing waiting here starts afresh next time, at
		// the round being served.
		delete(g.count, t)
		delete(g.last, t)
	}
	if len(g.count) == 0 && q.groups[g.key] == g {
		delete(q.groups, g.key)
	}
	if q.owned[w.owner]--; q.owned[w.owner] <= 0 {
		delete(q.owned, w.owner)
	}
	return true
}

// unheapLocked takes w out of the deadlines, if it is in them.
func (q *queue) unheapLocked(w *waiting) {
	if w.heapIndex >= 0 {
		heap.Remove(&q.deadlines, w.heapIndex)
	}
}

// putBack returns a handed job to its place: its worker did not take it.
func (q *queue) putBack(w *waiting) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.jobs[w.id] != w || !w.handed {
		return
	}
	w.handed, w.pausing = false, false
	// A handed job still counts in its group, so the group is the one in
	// q.groups (dropLocked removes a group only when nothing counts).
	w.group.insert(w)
	if !w.place.Deadline.IsZero() {
		heap.Push(&q.deadlines, w)
	}
	q.signal()
}

// pause marks a handed job as waiting out a pause before putBack.
func (q *queue) pause(w *waiting) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.jobs[w.id] == w && w.handed {
		w.pausing = true
	}
}

// take removes job id from the queue if it is waiting (or pausing before
// it waits again), for a stop. A job being started is not taken: handed
// reports it.
func (q *queue) take(id string) (w *waiting, handed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if w := q.held[id]; w != nil {
		q.takeHeldLocked(w)
		return w, false
	}
	w = q.jobs[id]
	switch {
	case w == nil:
		return nil, false
	case w.handed && !w.pausing:
		return nil, true
	}
	q.dropLocked(w)
	w.handed, w.pausing = false, false
	return w, false
}

// expired takes out the waiting jobs whose deadline is before now, and
// tells when the next deadline is (zero for none).
func (q *queue) expired(now time.Time) (out []*waiting, next time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.deadlines.Len() > 0 {
		w := q.deadlines[0]
		if w.place.Deadline.After(now) {
			return out, w.place.Deadline
		}
		q.dropLocked(w)
		out = append(out, w)
	}
	return out, time.Time{}
}

// restore puts back a job taken out by take or expired whose end could
// not be recorded: it waits again, at its place; retryAt, when set, is
// when its queue timeout is tried again.
func (q *queue) restore(w *waiting, retryAt time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.jobs[w.id] != nil || q.held[w.id] != nil {
		return
	}
	if w.held {
		q.reholdLocked(w)
		return
	}
	if !retryAt.IsZero() {
		w.place.Deadline = retryAt
	}
	w.handed = false
	// Its group may have gone with its last job, and a new one of the same
	// workers come since: the job joins whichever is there.
	w.group = q.groupLocked(w.place.WorkerID, w.group.selector)
	// The same w, so the same done channel: callers may wait on it.
	q.insertLocked(w)
	q.signal()
}

// requeued puts back a job the store put back (store.RequeueJob): the
// handed job, if this process handed it out, or else a job a scheduler
// before it handed out. It reports whether the job was added rather than
// put back.
func (q *queue) requeued(j store.Job) (added bool) {
	q.mu.Lock()
	w := q.jobs[j.ID]
	q.mu.Unlock()
	if w != nil {
		q.putBack(w)
		return false
	}
	q.add(j, time.Now())
	return true
}

// leaves returns a channel closed when job id leaves the queue; closed
// already when it is not in it.
func (q *queue) leaves(id string) <-chan struct{} {
	if done := q.leavesIfIn(id); done != nil {
		return done
	}
	gone := make(chan struct{})
	close(gone)
	return gone
}

// position is job id's place in the order jobs are handed out (1 is
// next), counting the jobs waiting; zero when it is not waiting.
func (q *queue) position(id string) int32 {
	q.mu.Lock()
	defer q.mu.Unlock()
	w := q.jobs[id]
	if w == nil || w.handed {
		return 0
	}
	n := 1
	for _, g := range q.groups {
		n += countBefore(g.jobs, w.place)
	}
	return int32(n)
}

// countBefore counts the jobs of a sorted group placed before p.
func countBefore(jobs []*waiting, p store.QueuePlace) int {
	i, _ := slices.BinarySearchFunc(jobs, p, func(a *waiting, p store.QueuePlace) int {
		if before(a.place, p) {
			return -1
		}
		return 1
	})
	return i
}

// waitingCount is how many jobs wait, by priority.
func (q *queue) waitingCount() map[int32]int {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make(map[int32]int)
	for _, w := range q.jobs {
		if !w.handed {
			out[w.place.Priority]++
		}
	}
	return out
}

// empty reports whether no job waits or is being handed out. It takes no
// lock: StartJob asks it every time.
func (q *queue) empty() bool { return q.size.Load() == 0 }

// deadlineHeap orders waiting jobs by deadline; each knows its index.
type deadlineHeap []*waiting

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].place.Deadline.Before(h[j].place.Deadline) }
func (h deadlineHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex, h[j].heapIndex = i, j
}

func (h *deadlineHeap) Push(x any) {
	w := x.(*waiting)
	w.heapIndex = len(*h)
	*h = append(*h, w)
}

func (h *deadlineHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	w.heapIndex = -1
	*h = old[:len(old)-1]
	return w
}
