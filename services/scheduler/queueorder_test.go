package scheduler

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// addJob queues job id of owner at priority, for any worker matching
// selector (or worker, when set), the way enqueue does.
func addJob(q *queue, id, owner, worker string, priority int32, selector map[string]string, deadline time.Time) *waiting {
	p, err := q.place(owner, worker, selector, priority, deadline)
	if err != nil {
		panic(err)
	}
	j := store.Job{ID: id, Owner: owner, WorkerID: worker, Queue: &p, Status: &batonv1.JobStatus{
		State: batonv1.JobState_JOB_STATE_QUEUED, Spec: &batonv1.JobSpec{Selector: selector},
	}}
	return q.add(j, time.Now())
}

// drain hands out every job, one slot at a time, and returns their ids in
// the order handed out.
func drain(q *queue) []string {
	var out []string
	for {
		w, _ := q.next(func(string, map[string]string) *reservation { return &reservation{} })
		if w == nil {
			return out
		}
		q.finish(w)
		out = append(out, w.id)
	}
}

func TestQueueOrderPriorityTurnsAndSubmission(t *testing.T) {
	q := newQueue(0)
	for i := range 3 {
		addJob(q, fmt.Sprintf("a%d", i), "alice", "", 50, nil, time.Time{})
	}
	addJob(q, "b0", "bob", "", 50, nil, time.Time{})
	addJob(q, "b1", "bob", "", 50, nil, time.Time{})
	addJob(q, "urgent", "carol", "", 90, nil, time.Time{})
	addJob(q, "low", "carol", "", 10, nil, time.Time{})
	if p := q.position("urgent"); p != 1 {
		t.Errorf("position of the urgent job = %d, want 1", p)
	}
	if p := q.position("b1"); p != 5 {
		t.Errorf("position of bob's second job = %d, want 5 (urgent, a0, b0, a1, b1)", p)
	}
	if p := q.position("missing"); p != 0 {
		t.Errorf("position of an unknown job = %d, want 0", p)
	}
	want := []string{"urgent", "a0", "b0", "a1", "b1", "a2", "low"}
	if got := drain(q); !slices.Equal(got, want) {
		t.Fatalf("handed out %v, want %v", got, want)
	}
}

func TestQueueLateOwnerJoinsTheTurnsFromNow(t *testing.T) {
	q := newQueue(0)
	for i := range 6 {
		addJob(q, fmt.Sprintf("a%d", i), "alice", "", 50, nil, time.Time{})
	}
	// Three of alice's jobs run before bob comes.
	for range 3 {
		w, _ := q.next(func(string, map[string]string) *reservation { return &reservation{} })
		q.finish(w)
	}
	addJob(q, "b0", "bob", "", 50, nil, time.Time{})
	addJob(q, "b1", "bob", "", 50, nil, time.Time{})
	// Bob's first job takes his turn in the round being served (alice
	// had hers: a2), then they alternate; bob never goes ahead of the
	// round being served.
	want := []string{"b0", "a3", "b1", "a4", "a5"}
	if got := drain(q); !slices.Equal(got, want) {
		t.Fatalf("handed out %v, want %v", got, want)
	}
}

func TestQueueSkipsGroupsWithoutSlotButKeepsTheirPlace(t *testing.T) {
	q := newQueue(0)
	addJob(q, "gpu0", "alice", "", 50, map[string]string{"gpu": "1"}, time.Time{})
	addJob(q, "cpu0", "alice", "", 50, nil, time.Time{})
	addJob(q, "gpu1", "alice", "", 50, map[string]string{"gpu": "1"}, time.Time{})
	asked := 0
	noGPU := func(_ string, sel map[string]string) *reservation {
		asked++
		if sel["gpu"] != "" {
			return nil
		}
		return &reservation{}
	}
	w, _ := q.next(noGPU)
	if w == nil || w.id != "cpu0" {
		t.Fatalf("with no GPU slot, handed out %v, want cpu0", w)
	}
	q.finish(w)
	if w, _ := q.next(noGPU); w != nil {
		t.Fatalf("handed out %s with no slot for it", w.id)
	}
	if asked != 3 {
		t.Errorf("asked for a slot %d times, want 3: once per group and round, never per job", asked)
	}
	// A handed job its worker did not take gets its place back.
	w, _ = q.next(func(string, map[string]string) *reservation { return &reservation{} })
	if w.id != "gpu0" {
		t.Fatalf("handed out %s, want gpu0", w.id)
	}
	if p := q.position("gpu0"); p != 0 {
		t.Errorf("a handed job has position %d, want 0", p)
	}
	q.putBack(w)
	if got := drain(q); !slices.Equal(got, []string{"gpu0", "gpu1"}) {
		t.Fatalf("after the put-back, handed out %v, want gpu0, gpu1", got)
	}
}

func TestQueueTakeExpireAndRestore(t *testing.T) {
	q := newQueue(0)
	now := time.Now()
	a := addJob(q, "a", "alice", "", 50, nil, now.Add(time.Second))
	addJob(q, "b", "alice", "", 50, nil, now.Add(time.Hour))
	addJob(q, "c", "alice", "", 50, nil, time.Time{})

	out, next := q.expired(now)
	if len(out) != 0 || !next.Equal(now.Add(time.Second)) {
		t.Fatalf("expired(now) = %d jobs, next %v; want none, next in 1s", len(out), next)
	}
	out, next = q.expired(now.Add(2 * time.Second))
	if len(out) != 1 || out[0] != a || !next.Equal(now.Add(time.Hour)) {
		t.Fatalf("expired(+2s) = %v, next %v; want job a, next in 1h", out, next)
	}
	// Its end could not be recorded: it waits again, at its place, and
	// its timeout is tried again later.
	q.restore(a, now.Add(3*time.Second))
	if p := q.position("a"); p != 1 {
		t.Errorf("restored job at position %d, want 1", p)
	}
	w, handed := q.take("b")
	if w == nil || handed {
		t.Fatalf("take(b) = %v, %v; want the waiting job", w, handed)
	}
	h, _ := q.next(func(string, map[string]string) *reservation { return &reservation{} })
	if h.id != "a" {
		t.Fatalf("handed out %s, want a", h.id)
	}
	if w, handed := q.take("a"); w != nil || !handed {
		t.Fatalf("take of a handed job = %v, %v; want it reported as handed", w, handed)
	}
	q.finish(h)
	select {
	case <-q.leaves("a"):
	default:
		t.Error("leaves(a) is open after a finished")
	}
	if got := drain(q); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("left in the queue: %v, want c", got)
	}
	if !q.empty() {
		t.Error("queue not empty after draining")
	}
}

func TestQueueLimitsEachOwner(t *testing.T) {
	q := newQueue(2)
	addJob(q, "a0", "alice", "", 50, nil, time.Time{})
	addJob(q, "a1", "alice", "", 50, nil, time.Time{})
	if _, err := q.place("alice", "", nil, 50, time.Time{}); !errors.Is(err, errQueueFull) {
		t.Fatalf("a third job of alice's: %v, want errQueueFull", err)
	}
	if _, err := q.place("bob", "", nil, 50, time.Time{}); err != nil {
		t.Fatalf("bob's first job: %v", err)
	}
	w, _ := q.take("a0")
	close(w.done)
	if _, err := q.place("alice", "", nil, 50, time.Time{}); err != nil {
		t.Fatalf("alice's job after one left: %v", err)
	}
}

func TestQueueKeepsDeadlinesOfPutBackJobsAndNoOthers(t *testing.T) {
	q := newQueue(0)
	now := time.Now()
	addJob(q, "a", "alice", "", 50, nil, now.Add(time.Second))
	w, _ := q.next(func(string, map[string]string) *reservation { return &reservation{} })
	if out, _ := q.expired(now.Add(time.Hour)); len(out) != 0 {
		t.Fatalf("a job being started timed out: %v", out)
	}
	q.putBack(w)
	if out, _ := q.expired(now.Add(time.Hour)); len(out) != 1 || out[0].id != "a" {
		t.Fatalf("a job put back lost its queue timeout: expired = %v", out)
	}
	// Jobs that leave take their deadline with them.
	for i := range 1000 {
		id := fmt.Sprintf("s%d", i)
		addJob(q, id, "alice", "", 50, nil, now.Add(time.Duration(i+1)*time.Hour))
		if w, _ := q.take(id); w == nil {
			t.Fatalf("take(%s) found nothing", id)
		}
	}
	if n := q.deadlines.Len(); n != 0 {
		t.Errorf("%d deadlines left after every job with one left", n)
	}
}

func TestQueueTurnsArePerGroupAndForgetOwnersWhoLeft(t *testing.T) {
	q := newQueue(0)
	// A fast group where alice's 100 jobs are handed out, and a slow one
	// where bob waits with 3.
	for i := range 100 {
		addJob(q, fmt.Sprintf("a%d", i), "alice", "", 50, map[string]string{"pool": "fast"}, time.Time{})
	}
	for i := range 3 {
		addJob(q, fmt.Sprintf("b%d", i), "bob", "", 50, map[string]string{"pool": "slow"}, time.Time{})
	}
	fastOnly := func(_ string, sel map[string]string) *reservation {
		if sel["pool"] == "fast" {
			return &reservation{}
		}
		return nil
	}
	for {
		w, _ := q.next(fastOnly)
		if w == nil {
			break
		}
		q.finish(w)
	}
	// Carol joins the slow group: she takes turns with bob there, whatever
	// went on in the fast group.
	addJob(q, "c0", "carol", "", 50, map[string]string{"pool": "slow"}, time.Time{})
	if p := q.position("c0"); p != 2 {
		t.Errorf("carol's first job in the slow group is at %d, want 2 (after bob's first)", p)
	}
	// Dave queues 50 and stops them all; his next job is not behind them.
	for i := range 50 {
		addJob(q, fmt.Sprintf("d%d", i), "dave", "", 50, map[string]string{"pool": "slow"}, time.Time{})
	}
	for i := range 50 {
		q.take(fmt.Sprintf("d%d", i))
	}
	addJob(q, "d-again", "dave", "", 50, map[string]string{"pool": "slow"}, time.Time{})
	if p := q.position("d-again"); p > 3 {
		t.Errorf("dave's job after he stopped his others is at %d, want at most 3", p)
	}
}

func TestQueueStopTakesAPausingJob(t *testing.T) {
	q := newQueue(0)
	addJob(q, "a", "alice", "", 50, nil, time.Time{})
	w, _ := q.next(func(string, map[string]string) *reservation { return &reservation{} })
	if got, handed := q.take("a"); got != nil || !handed {
		t.Fatalf("take of a job being started = %v, %v; want handed", got, handed)
	}
	q.pause(w)
	got, handed := q.take("a")
	if got != w || handed {
		t.Fatalf("take of a pausing job = %v, %v; want the job", got, handed)
	}
	q.putBack(w) // the pause ends: nothing comes back
	if !q.empty() {
		t.Error("a stopped job came back after its pause")
	}
}

func TestQueueRestoreJoinsTheGroupThatIsThere(t *testing.T) {
	q := newQueue(0)
	now := time.Now()
	sel := map[string]string{"pool": "a"}
	addJob(q, "a", "alice", "", 50, sel, now.Add(time.Second))
	out, _ := q.expired(now.Add(2 * time.Second)) // a's group goes with it
	if len(out) != 1 {
		t.Fatalf("expired %d jobs, want 1", len(out))
	}
	addJob(q, "b", "alice", "", 50, sel, time.Time{}) // a new group, same workers
	q.restore(out[0], now.Add(time.Hour))             // a's end could not be recorded
	if got := drain(q); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("handed out %v, want a then b: no job left behind", got)
	}
}

func TestQueuePlaceLeavesNothingBehind(t *testing.T) {
	q := newQueue(0)
	for i := range 100 {
		if _, err := q.place("alice", "", map[string]string{"n": fmt.Sprint(i)}, 50, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(q.groups); n != 0 {
		t.Errorf("%d groups left by places whose jobs were never added", n)
	}
}
