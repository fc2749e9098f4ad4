package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// The registry's indexes against scans of the whole roster: on random
// fleets driven through random registrations, heartbeats, placements,
// drains, departures, restarts and expiries, every question the indexes
// answer gets the answer a scan of every member gives.

// scanLeastLoaded is placement by a scan of every member: the least-loaded
// READY worker matching selector with room, and whether any READY worker
// matched.
func scanLeastLoaded(r *registry, selector map[string]string) (*member, bool) {
	var best *member
	var bestRunning int32
	matched := false
	for _, m := range r.members {
		if m.w.State != batonv1.WorkerState_WORKER_STATE_READY || !matches(m.w.Labels, selector) {
			continue
		}
		matched = true
		running := m.w.RunningJobs
		if m.w.Capacity > 0 && running >= m.w.Capacity {
			continue
		}
		if best == nil || lessLoaded(m, running, m.w.Capacity, best, bestRunning, best.w.Capacity) {
			best, bestRunning = m, running
		}
	}
	return best, matched
}

// scanList is ListWorkers by a scan: every listed member matching q, by
// name, as a page.
func scanList(r *registry, q listQuery) (names []string, next string) {
	for _, m := range r.members {
		if m.w.State == batonv1.WorkerState_WORKER_STATE_UNSPECIFIED || m.w.ID <= q.after ||
			len(q.states) > 0 && !slices.Contains(q.states, m.w.State) || !matches(m.w.Labels, q.selector) {
			continue
		}
		names = append(names, m.w.ID)
	}
	slices.Sort(names)
	if q.pageSize > 0 && len(names) > q.pageSize {
		names = names[:q.pageSize]
		next = pageToken(names[q.pageSize-1])
	}
	return names, next
}

// fleetModel drives a registry at random.
type fleetModel struct {
	t   *testing.T
	rnd *rand.Rand
	r   *registry
	// names are the workers it may touch; jobs numbers the jobs placed.
	names []string
	jobs  int
	// offset is how far the model's clock is ahead of the real one: expiry
	// moves it on, so that deadlines a heartbeat moved later come due.
	offset time.Duration
}

func (f *fleetModel) now() time.Time { return time.Now().Add(f.offset) }

// deadline is an hour before the model's now, now, or an hour after.
func (f *fleetModel) deadline() time.Time {
	return f.now().Add(time.Duration(f.rnd.IntN(3)-1) * time.Hour)
}

var labelValues = map[string][]string{"zone": {"a", "b", "c"}, "gpu": {"yes"}, "disk": {"ssd", "hdd"}}

func (f *fleetModel) labels() map[string]string {
	out := map[string]string{}
	for k, vs := range labelValues {
		if f.rnd.IntN(2) == 0 {
			out[k] = vs[f.rnd.IntN(len(vs))]
		}
	}
	return out
}

func (f *fleetModel) selector() map[string]string {
	out := map[string]string{}
	for k, vs := range labelValues {
		if f.rnd.IntN(3) == 0 {
			out[k] = vs[f.rnd.IntN(len(vs))]
		}
	}
	if f.rnd.IntN(10) == 0 {
		out["zone"] = "nowhere"
	}
	return out
}

func (f *fleetModel) register(name string) {
	m := f.r.getOrCreate(name)
	capacity := int32(f.rnd.IntN(4)) // 0: unlimited
	running := int32(f.rnd.IntN(int(capacity) + 2))
	f.r.register(m, &batonv1.RegisterWorkerRequest{Name: name, Address: "127.0.0.1:1", Capacity: capacity, Labels: f.labels()},
		running, f.deadline())
}

// step does one random thing to one random worker.
func (f *fleetModel) step() {
	name := f.names[f.rnd.IntN(len(f.names))]
	m := f.r.get(name)
	switch op := f.rnd.IntN(10); {
	case op < 2 || m == nil:
		f.register(name)
	case op < 5:
		f.r.heartbeat(m, int32(f.rnd.IntN(5)), nil, f.deadline())
	case op < 7:
		slots, err := f.r.place(&batonv1.StartJobRequest{Command: "true", Selector: f.selector()})
		if err == nil {
			f.jobs++
			switch f.rnd.IntN(3) {
			case 0:
				slots[0].release()
			case 1:
				slots[0].confirm(fmt.Sprint("job-", f.jobs))
			default:
				// Started, then ended before any heartbeat told of it.
				slots[0].confirm(fmt.Sprint("job-", f.jobs))
				f.r.ended(slots[0].id, fmt.Sprint("job-", f.jobs))
			}
		}
	case op == 7:
		_, _ = f.r.drain(name)
	case op == 8:
		if f.rnd.IntN(2) == 0 {
			f.r.leave(name)
		} else {
			f.r.restart(name, f.deadline().Sub(time.Now()))
		}
	default:
		f.r.unadmit(m)
	}
}

// check compares every indexed answer with its scan.
func (f *fleetModel) check(round int) {
	t := f.t
	for range 20 {
		sel := f.selector()
		f.r.mu.RLock()
		got, gotMatched := f.r.leastLoadedLocked(sel)
		want, wantMatched := scanLeastLoaded(f.r, sel)
		f.r.mu.RUnlock()
		if got != want || gotMatched != wantMatched {
			t.Fatalf("round %d, selector %v: placement picks %s (matched %v), a scan %s (matched %v)",
				round, sel, memberName(got), gotMatched, memberName(want), wantMatched)
		}
	}
	var wantOpen []string
	for _, m := range f.r.members {
		if m.w.State == batonv1.WorkerState_WORKER_STATE_READY && m.live && (m.w.Capacity <= 0 || m.w.RunningJobs < m.w.Capacity) {
			wantOpen = append(wantOpen, m.w.ID)
		}
	}
	var gotOpen []string
	for _, m := range f.r.openWorkers() {
		gotOpen = append(gotOpen, m.w.ID)
	}
	slices.Sort(gotOpen)
	slices.Sort(wantOpen)
	if !slices.Equal(gotOpen, wantOpen) {
		t.Fatalf("round %d: open workers %v, a scan finds %v", round, gotOpen, wantOpen)
	}
	states := []batonv1.WorkerState{batonv1.WorkerState_WORKER_STATE_READY, batonv1.WorkerState_WORKER_STATE_DRAINING,
		batonv1.WorkerState_WORKER_STATE_DOWN, batonv1.WorkerState_WORKER_STATE_LEFT, batonv1.WorkerState_WORKER_STATE_RESTARTING}
	for range 10 {
		q := listQuery{pageSize: f.rnd.IntN(6), selector: f.selector()}
		for _, st := range states {
			if f.rnd.IntN(4) == 0 {
				q.states = append(q.states, st)
			}
		}
		// Walk every page, as a client would.
		for page := 0; ; page++ {
			res := f.r.list(q)
			var got []string
			for _, w := range res.GetWorkers() {
				got = append(got, w.GetName())
			}
			want, next := scanList(f.r, q)
			if !slices.Equal(got, want) || res.GetNextPageToken() != next {
				t.Fatalf("round %d, %+v, page %d: listed %v (next %q), a scan %v (next %q)", round, q, page, got, res.GetNextPageToken(), want, next)
			}
			if next == "" || q.pageSize == 0 {
				break
			}
			q.after, _ = parsePageToken(next)
		}
	}
	byState, running := f.r.tally()
	wantState, wantRunning := map[batonv1.WorkerState]int{}, 0
	for _, m := range f.r.members {
		if m.w.State == batonv1.WorkerState_WORKER_STATE_UNSPECIFIED {
			continue
		}
		wantState[m.w.State]++
		if runsJobs(m.w.State) {
			wantRunning += int(m.w.RunningJobs)
		}
	}
	if fmt.Sprint(byState) != fmt.Sprint(wantState) || running != wantRunning {
		t.Fatalf("round %d: tally %v, %d running; a scan %v, %d", round, byState, running, wantState, wantRunning)
	}
}

// restart loads the roster into a new registry, as a scheduler starting
// again does from its store, with a grace before anyone is DOWN.
func (f *fleetModel) restart() {
	var workers []store.Worker
	for _, m := range f.r.members {
		if m.w.State != batonv1.WorkerState_WORKER_STATE_UNSPECIFIED {
			workers = append(workers, f.r.snapshot(m))
		}
	}
	f.r = newRegistry(testDial)
	f.r.load(workers, f.deadline().Sub(time.Now()))
}

// expire marks DOWN whom a scan says is late, and no one else.
func (f *fleetModel) expire(round int) {
	f.offset += time.Duration(f.rnd.IntN(90)) * time.Minute
	now := f.now()
	var want []string
	for _, m := range f.r.members {
		if runsJobs(m.w.State) && now.After(m.deadline) && m.reporting == 0 {
			want = append(want, m.w.ID)
		}
	}
	var got []string
	for _, d := range f.r.expire(now) {
		got = append(got, d.id)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		f.t.Fatalf("round %d: expired %v, a scan says %v", round, got, want)
	}
}

func memberName(m *member) string {
	if m == nil {
		return "none"
	}
	return m.w.ID
}

func TestIndexesAnswerAsScans(t *testing.T) {
	t.Parallel()
	for seed := range uint64(30) {
		f := &fleetModel{t: t, rnd: rand.New(rand.NewPCG(seed, 7)), r: newRegistry(testDial)}
		for i := range 5 + f.rnd.IntN(60) {
			f.names = append(f.names, fmt.Sprintf("w%03d", i))
		}
		for round := range 40 {
			for range 1 + f.rnd.IntN(20) {
				f.step()
			}
			f.check(round)
			if f.rnd.IntN(4) == 0 {
				f.expire(round)
				f.check(round)
			}
			if f.rnd.IntN(15) == 0 {
				f.restart()
				f.check(round)
			}
			if f.rnd.IntN(10) == 0 {
				// forget takes only workers down since before the cutoff:
				// some are, some are not.
				f.r.forget(f.now().Add(-time.Duration(f.rnd.IntN(2)) * time.Hour))
				f.check(round)
			}
		}
	}
}

// TestPlacementAmongFiftyThousand places on a fleet of 50,000 workers: with
// a selector that one worker matches, and least loaded, each as a scan
// would.
func TestPlacementAmongFiftyThousand(t *testing.T) {
	t.Parallel()
	const n = 50000
	rnd := rand.New(rand.NewPCG(1, 2))
	r := newRegistry(testDial)
	for i := range n {
		name := fmt.Sprintf("w%05d", i)
		labels := map[string]string{"zone": fmt.Sprint("z", i%100)}
		if i == 31337 {
			labels["gpu"] = "yes"
		}
		m := r.getOrCreate(name)
		r.register(m, &batonv1.RegisterWorkerRequest{Name: name, Address: "127.0.0.1:1", Capacity: 8, Labels: labels},
			int32(1+rnd.IntN(8)), time.Now().Add(time.Hour))
	}
	slots, err := r.place(&batonv1.StartJobRequest{Command: "true", Selector: map[string]string{"gpu": "yes", "zone": "z37"}})
	if err != nil || slots[0].id != "w31337" {
		t.Fatalf("placement with a selector that one worker matches: %v, %v", slots, err)
	}
	slots[0].release()
	for i := range 200 {
		sel := map[string]string{}
		if i%2 == 0 {
			sel["zone"] = fmt.Sprint("z", rnd.IntN(100))
		}
		r.mu.RLock()
		want, _ := scanLeastLoaded(r, sel)
		r.mu.RUnlock()
		slots, err := r.place(&batonv1.StartJobRequest{Command: "true", Selector: sel})
		if want == nil {
			if err == nil {
				t.Fatalf("placement %d (%v) found room where a scan finds none: %s", i, sel, slots[0].id)
			}
			continue
		}
		if err != nil || slots[0].id != want.w.ID {
			t.Fatalf("placement %d (%v): %v %v, a scan picks %s", i, sel, slots, err, want.w.ID)
		}
		slots[0].confirm(fmt.Sprint("job-", i))
	}
	res := r.list(listQuery{pageSize: 500, selector: map[string]string{"zone": "z7"}})
	if len(res.GetWorkers()) != 500 || !strings.HasPrefix(res.GetWorkers()[0].GetName(), "w00007") {
		t.Fatalf("a page of zone z7: %d workers from %s", len(res.GetWorkers()), res.GetWorkers()[0].GetName())
	}
}
