package scheduler

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// Held jobs are QUEUED jobs that may not have a slot yet: they wait for
// other jobs to end (a job's after), or for their turn in an array that
// runs at most so many at once. A held job has its place in the store's
// queue like any queued job, but is kept out of the queue's order until
// nothing holds it, so a group's first job is always one that may run.
// Nothing about a hold is kept beside the job: its spec says what it waits
// for, and a restarted scheduler works out again what still holds it.

// dep is one job or group a held job still waits for.
type dep struct {
	id    string
	group bool
	cond  batonv1.DependencyCondition
}

// arrayTurns is how many jobs of one array may be out of their hold at
// once, and the jobs that wait for their turn, by index.
type arrayTurns struct {
	max  int
	held []*waiting
}

// holdsOf returns what holds job j when it is recorded: the dependencies
// in its spec and its array's turns.
func holdsOf(j store.Job) (deps []dep, array string) {
	spec := j.Status.GetSpec()
	for _, d := range spec.GetAfter() {
		cond := d.GetCondition()
		if cond == batonv1.DependencyCondition_DEPENDENCY_CONDITION_UNSPECIFIED {
			cond = batonv1.DependencyCondition_DEPENDENCY_CONDITION_SUCCEEDED
		}
		if d.GetGroupId() != "" {
			deps = append(deps, dep{id: d.GetGroupId(), group: true, cond: cond})
		} else {
			deps = append(deps, dep{id: d.GetJobId(), cond: cond})
		}
	}
	if spec.GetArrayMaxRunning() > 0 {
		array = j.GroupID
	}
	return deps, array
}

// isHeld reports whether job j waits for something besides a slot: other
// jobs, its array's turn, or a time (a retry's backoff).
func isHeld(j store.Job) bool {
	deps, array := holdsOf(j)
	return len(deps) > 0 || array != "" || j.Status.GetNotBefore() != nil
}

// hold adds job j, recorded QUEUED with its place, as held. The caller
// then settles its dependencies (see Scheduler.settleHolds); its array
// turn is given by releaseTurns.
func (q *queue) hold(j store.Job, queuedAt time.Time) *waiting {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.holdLocked(j, queuedAt)
}

func (q *queue) holdLocked(j store.Job, queuedAt time.Time) *waiting {
	spec := j.Status.GetSpec()
	w := &waiting{
		id: j.ID, owner: j.Owner, place: *j.Queue, queuedAt: queuedAt,
		queueTimeout: spec.GetQueueTimeout().AsDuration(), heapIndex: -1, done: make(chan struct{}),
		selector: spec.GetSelector(), held: true, arrayIndex: spec.GetArrayIndex(),
		run: j.Status.GetRunId(),
	}
	w.deps, w.array = holdsOf(j)
	if nb := j.Status.GetNotBefore(); nb != nil && time.Until(nb.AsTime()) > 0 {
		w.notBefore = nb.AsTime()
		w.timer = time.AfterFunc(time.Until(w.notBefore), func() { q.timeCame(w) })
	}
	// A retry's dependencies held before its first attempt ran.
	if j.Status.GetAttempt() > 1 {
		w.deps = nil
	}
	// Its wait for a slot starts when nothing else holds it.
	w.place.Deadline = time.Time{}
	q.seq = max(q.seq, w.place.Seq)
	q.held[w.id] = w
	q.owned[w.owner]++
	for _, d := range w.deps {
		q.waitersLocked(d.id)[w] = struct{}{}
	}
	if w.array != "" {
		q.awaitTurnLocked(w, int(spec.GetArrayMaxRunning()))
	}
	// A retry whose backoff passed already (while the scheduler was
	// down, say) waits for nothing but a slot.
	q.releaseLocked(w, time.Now())
	return w
}

func (q *queue) waitersLocked(id string) map[*waiting]struct{} {
	m := q.waiters[id]
	if m == nil {
		m = make(map[*waiting]struct{})
		q.waiters[id] = m
	}
	return m
}

// waitingOn returns the held jobs that wait for job or group id.
func (q *queue) waitingOn(id string) []*waiting {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]*waiting, 0, len(q.waiters[id]))
	for w := range q.waiters[id] {
		out = append(out, w)
	}
	return out
}

// heldDeps returns the dependencies held job w still waits for.
func (q *queue) heldDeps(w *waiting) []dep {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(w.deps)
}

// depHolds records that w's dependency on id holds, and moves w into the
// queue's order when nothing else holds it.
func (q *queue) depHolds(w *waiting, id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.held[w.id] != w {
		return
	}
	w.deps = slices.DeleteFunc(w.deps, func(d dep) bool { return d.id == id })
	q.unwaitLocked(w, id)
	q.releaseLocked(w, time.Now())
}

func (q *queue) unwaitLocked(w *waiting, id string) {
	if m := q.waiters[id]; m != nil {
		delete(m, w)
		if len(m) == 0 {
			delete(q.waiters, id)
		}
	}
}

// releaseLocked moves held job w into the queue's order if nothing holds
// it: no dependency left, and its array's turn. Its queue timeout runs
// from now.
func (q *queue) releaseLocked(w *waiting, now time.Time) {
	if len(w.deps) > 0 || !w.held || now.Before(w.notBefore) {
		return
	}
	if a := q.arrays[w.array]; a != nil && slices.Contains(a.held, w) {
		return // waits for its array's turn: releaseTurns gives it
	}
	delete(q.held, w.id)
	w.held = false
	if w.queueTimeout > 0 {
		w.place.Deadline = now.Add(w.queueTimeout)
	}
	w.group = q.groupLocked(w.place.WorkerID, w.selector)
	q.owned[w.owner]-- // insertLocked counts it again
	q.insertLocked(w)
	q.signal()
}

// releaseTurns gives array's turns: active is how many of its jobs are out
// of the turn's hold and not ended. The first held jobs, by index, take
// the free turns.
func (q *queue) releaseTurns(array string, active int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	a := q.arrays[array]
	if a == nil {
		return
	}
	now := time.Now()
	for active < a.max && len(a.held) > 0 {
		w := a.held[0]
		a.held = a.held[1:]
		active++
		q.releaseLocked(w, now)
	}
	if len(a.held) == 0 {
		delete(q.arrays, array)
	}
}

// heldInArray counts array's jobs that wait for a turn.
func (q *queue) heldInArray(array string) (n int, throttled bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	a := q.arrays[array]
	if a == nil {
		return 0, false
	}
	return len(a.held), true
}

// takeHeldLocked takes held job w out of every hold, for an end.
func (q *queue) takeHeldLocked(w *waiting) {
	delete(q.held, w.id)
	if w.timer != nil {
		w.timer.Stop()
	}
	for _, d := range w.deps {
		q.unwaitLocked(w, d.id)
	}
	if a := q.arrays[w.array]; a != nil {
		a.held = slices.DeleteFunc(a.held, func(x *waiting) bool { return x == w })
		if len(a.held) == 0 {
			delete(q.arrays, w.array)
		}
	}
	if q.owned[w.owner]--; q.owned[w.owner] <= 0 {
		delete(q.owned, w.owner)
	}
}

// takeHeld takes held job w out of the queue, for an end; false when it is
// no longer held.
func (q *queue) takeHeld(w *waiting) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.held[w.id] != w {
		return false
	}
	q.takeHeldLocked(w)
	return true
}

// heldReason says what held job id waits for, or "" when it is not held.
func (q *queue) heldReason(id string) string {
	q.mu.Lock()
	defer q.mu.Unlock()
	w := q.held[id]
	if w == nil {
		return ""
	}
	if len(w.deps) > 0 {
		parts := make([]string, 0, len(w.deps))
		for _, d := range w.deps {
			parts = append(parts, d.describe())
		}
		return "waits for " + strings.Join(parts, ", ")
	}
	if a := q.arrays[w.array]; a != nil {
		return fmt.Sprintf("waits for its turn: its array runs at most %d jobs at once", a.max)
	}
	return ""
}

// timeCame releases held job w once the time it waited for came.
func (q *queue) timeCame(w *waiting) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.held[w.id] == w {
		q.releaseLocked(w, time.Now())
	}
}

// describe says what d waits for: "job X to succeed".
func (d dep) describe() string {
	what := "job " + d.id
	if d.group {
		what = "every job of group " + d.id
	}
	switch d.cond {
	case batonv1.DependencyCondition_DEPENDENCY_CONDITION_FAILED:
		if d.group {
			return what + " to end, one of them unsucceeded"
		}
		return what + " to end unsucceeded"
	case batonv1.DependencyCondition_DEPENDENCY_CONDITION_ENDED:
		return what + " to end"
	}
	return what + " to succeed"
}

// outcome says whether d holds, or never can, for a job that ended in
// state (a job's dependency), or a group with progress p.
func (d dep) outcome(state batonv1.JobState, p store.GroupProgress) (holds, never bool) {
	if !d.group {
		if !terminal(state) {
			return false, false
		}
		ok := state == batonv1.JobState_JOB_STATE_SUCCEEDED
		switch d.cond {
		case batonv1.DependencyCondition_DEPENDENCY_CONDITION_FAILED:
			return !ok, ok
		case batonv1.DependencyCondition_DEPENDENCY_CONDITION_ENDED:
			return true, false
		}
		return ok, !ok
	}
	switch d.cond {
	case batonv1.DependencyCondition_DEPENDENCY_CONDITION_FAILED:
		if p.Open > 0 {
			return false, false
		}
		return p.Unsucceeded > 0, p.Unsucceeded == 0
	case batonv1.DependencyCondition_DEPENDENCY_CONDITION_ENDED:
		return p.Open == 0, false
	}
	if p.Unsucceeded > 0 {
		return false, true
	}
	return p.Open == 0, false
}

// reholdLocked puts back held job w, taken out for an end that could not
// be recorded, with the holds it had.
func (q *queue) reholdLocked(w *waiting) {
	q.held[w.id] = w
	q.owned[w.owner]++
	for _, d := range w.deps {
		q.waitersLocked(d.id)[w] = struct{}{}
	}
	if w.array != "" {
		q.awaitTurnLocked(w, w.arrayMax)
	}
}

// awaitTurnLocked puts held job w among the jobs of its array that wait for
// a turn, by index; the array runs at most max at once.
func (q *queue) awaitTurnLocked(w *waiting, max int) {
	a := q.arrays[w.array]
	if a == nil {
		a = &arrayTurns{max: max}
		q.arrays[w.array] = a
	}
	w.arrayMax = max
	i, _ := slices.BinarySearchFunc(a.held, w, func(a, b *waiting) int { return cmp.Compare(a.arrayIndex, b.arrayIndex) })
	a.held = slices.Insert(a.held, i, w)
}

// holding reports whether any job is held: only then do job ends matter
// beyond their count.
func (q *queue) holding() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.held) > 0 || len(q.arrays) > 0
}

// heldJobs returns the held jobs.
func (q *queue) heldJobs() []*waiting {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]*waiting, 0, len(q.held))
	for _, w := range q.held {
		out = append(out, w)
	}
	return out
}

// arrayIDs returns the arrays with jobs held for a turn.
func (q *queue) arrayIDs() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Collect(maps.Keys(q.arrays))
}

// has reports whether job id is in the queue, held or not.
func (q *queue) has(id string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.jobs[id] != nil || q.held[id] != nil
}

// retry holds job j, which the store queued again for its next attempt
// (run id j.Status.run_id). A waiting the dispatcher still holds for the
// attempt that ended is dropped first: the dispatcher's finish or putBack
// of it then does nothing. It returns nil when the attempt is in the
// queue already.
func (q *queue) retry(j store.Job, now time.Time) *waiting {
	q.mu.Lock()
	defer q.mu.Unlock()
	run := j.Status.GetRunId()
	if w := q.held[j.ID]; w != nil {
		return nil
	}
	if old := q.jobs[j.ID]; old != nil {
		if old.run == run {
			return nil
		}
		q.dropLocked(old)
		close(old.done)
	}
	return q.holdLocked(j, now)
}

// roomFor refuses n more jobs of owner's when they would take it past the
// most jobs an owner may have queued: an array is queued whole or not at
// all. Concurrent requests may still pass the limit by what they queue
// at the same time.
func (q *queue) roomFor(owner string, n int) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.limit > 0 && q.owned[owner]+n > q.limit {
		return newError(errQueueFull, "%s has %d jobs queued; %d more would pass the scheduler's max_queued_per_owner (%d)", owner, q.owned[owner], n, q.limit)
	}
	return nil
}

// leavesIfIn is leaves for a job in the queue, and nil (never ready) for
// one that is not.
func (q *queue) leavesIfIn(id string) <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if w := q.jobs[id]; w != nil {
		return w.done
	}
	if w := q.held[id]; w != nil {
		return w.done
	}
	return nil
}
