package scheduler_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
)

var (
	modelSeed  = flag.Uint64("model.seed", 0, "seed of TestSchedulerModel (0: a new one, printed)")
	modelSteps = flag.Int("model.steps", 3000, "steps of TestSchedulerModel, in runs of 500")
)

// TestSchedulerModel runs the real scheduler against simulated workers
// through a random sequence of starts, keyed starts and fan-outs, stops,
// job ends, heartbeats sent at once, late, twice or out of order, worker
// restarts, scheduler restarts and spells of store write failures. After
// every step it checks that no job's end is overwritten (LOST aside) and
// that an idempotency key names one job or group; at every settle point,
// once each worker has had a heartbeat through, that the store agrees with
// every worker about every job, that every stop the scheduler took has
// been carried out, and that each worker's running count is what it
// reports. The steps run in runs of 500, each on a fresh cluster (the
// checks list every job, so a run's cost grows with its length). Each
// run's seed is printed; -model.seed replays a run.
func TestSchedulerModel(t *testing.T) {
	t.Parallel()
	const runLength = 500
	first := *modelSeed
	if first == 0 {
		first = uint64(time.Now().UnixNano())
	}
	for i := 0; i*runLength < *modelSteps; i++ {
		seed := first + uint64(i)
		steps := min(runLength, *modelSteps-i*runLength)
		if *modelSeed != 0 {
			steps = *modelSteps // a replay is one run
		}
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runModel(t, seed, steps) })
		if *modelSeed != 0 {
			return
		}
	}
}

func runModel(t *testing.T, seed uint64, steps int) {
	t.Logf("replay: go test -run TestSchedulerModel ./services/scheduler/ -args -model.seed=%d -model.steps=%d", seed, steps)
	m := newModel(t, seed)
	for step := range steps {
		m.step = step
		m.randomStep()
		m.checkHistory()
		if step%50 == 49 {
			m.settle()
		}
		if t.Failed() {
			t.Fatalf("stopped at step %d of seed %d; the last steps: %s", step, seed, strings.Join(m.trail, "; "))
		}
	}
	m.settle()
	t.Logf("%d steps: %v", steps, m.counts)
}

// schedModel is the test's side: the scheduler under test, the simulated
// workers, and what the scheduler has promised so far.
type schedModel struct {
	t       *testing.T
	rnd     *rand.Rand
	step    int
	sched   *testScheduler
	failing *atomic.Bool
	workers []*simWorker
	// keys maps each idempotency key to the job or group it first named.
	keys map[string]string
	// stops holds the jobs whose stop the scheduler accepted (or kept).
	stops map[string]bool
	// ended holds each job's end once the store showed one other than LOST.
	ended  map[string]batonv1.JobState
	jobs   []string
	trail  []string
	counts map[string]int
}

func newModel(t *testing.T, seed uint64) *schedModel {
	m := &schedModel{
		t: t, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), failing: new(atomic.Bool),
		keys: map[string]string{}, stops: map[string]bool{}, ended: map[string]batonv1.JobState{}, counts: map[string]int{},
	}
	m.sched = startScheduler(t, "", m.tune)
	for _, name := range []string{"w1", "w2", "w3"} {
		w := startSimWorker(t, name)
		w.point(m.sched)
		m.workers = append(m.workers, w)
		w.register(t.Context())
	}
	return m
}

// tune makes heartbeats the test's to send: no worker goes DOWN on its own
// during a run, and the store can be made to fail.
func (m *schedModel) tune(o *scheduler.Options) {
	o.HeartbeatInterval = time.Hour
	o.HeartbeatGrace = time.Hour
	o.FailoverGrace = time.Hour
	o.Store = &flakyStore{Store: o.Store, failing: m.failing}
}

func (m *schedModel) note(format string, a ...any) {
	m.trail = append(m.trail, fmt.Sprintf("%d: ", m.step)+fmt.Sprintf(format, a...))
	if len(m.trail) > 12 {
		m.trail = m.trail[1:]
	}
}

// randomStep takes one step, chosen by weight.
func (m *schedModel) randomStep() {
	steps := []struct {
		name   string
		weight int
		do     func()
	}{
		{"start", 12, m.start},
		{"keyed start", 8, m.keyedStart},
		{"fan-out", 4, m.fanOut},
		{"stop", 10, m.stop},
		{"job ends", 10, m.jobEnds},
		{"heartbeat", 20, func() { m.anyWorker().beat(m.t.Context()) }},
		{"heartbeat held back", 6, func() { m.anyWorker().hold() }},
		{"held heartbeat sent", 6, func() { m.anyWorker().sendHeld(m.t.Context(), m.rnd) }},
		{"heartbeat sent twice", 3, func() { m.anyWorker().resend(m.t.Context()) }},
		{"worker restart", 2, func() { w := m.anyWorker(); w.restart(); w.register(m.t.Context()) }},
		{"scheduler restart", 1, m.restartScheduler},
		{"store fails", 2, func() { m.failing.Store(true) }},
		{"store back", 4, func() { m.failing.Store(false) }},
	}
	total := 0
	for _, s := range steps {
		total += s.weight
	}
	n := m.rnd.IntN(total)
	for _, s := range steps {
		if n < s.weight {
			m.note("%s", s.name)
			m.counts[s.name]++
			s.do()
			return
		}
		n -= s.weight
	}
}

func (m *schedModel) anyWorker() *simWorker { return m.workers[m.rnd.IntN(len(m.workers))] }

func (m *schedModel) startRequest() *batonv1.StartJobRequest {
	return &batonv1.StartJobRequest{WorkerId: m.anyWorker().name, Command: "sim"}
}

func (m *schedModel) start() {
	res, err := m.sched.client.StartJob(m.t.Context(), connect.NewRequest(m.startRequest()))
	if err == nil {
		m.jobs = append(m.jobs, res.Msg.GetJobId())
	}
	m.expectOKOrUnavailable("StartJob", err)
}

func (m *schedModel) keyedStart() {
	req := m.startRequest()
	req.WorkerId = "" // placement picks; a retry must not pick again
	req.IdempotencyKey = fmt.Sprintf("job-%d", m.rnd.IntN(8))
	res, err := m.sched.client.StartJob(m.t.Context(), connect.NewRequest(req))
	m.expectOKOrUnavailable("keyed StartJob", err)
	if err == nil {
		m.sameAsBefore(req.IdempotencyKey, res.Msg.GetJobId())
		m.jobs = append(m.jobs, res.Msg.GetJobId())
	}
}

func (m *schedModel) fanOut() {
	req := &batonv1.StartJobRequest{All: true, Command: "sim", IdempotencyKey: fmt.Sprintf("group-%d", m.rnd.IntN(4))}
	// Concurrent duplicates: the race a key must win.
	calls := 1 + m.rnd.IntN(3)
	answers := make([]*batonv1.StartJobResponse, calls)
	errs := make([]error, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			res, err := m.sched.client.StartJob(m.t.Context(), connect.NewRequest(req))
			errs[i] = err
			if err == nil {
				answers[i] = res.Msg
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		m.expectOKOrUnavailable("fan-out", err)
		if err == nil {
			m.sameAsBefore(req.IdempotencyKey, answers[i].GetGroupId())
			for _, j := range answers[i].GetJobs() {
				if !slices.Contains(m.jobs, j.GetJobId()) {
					m.jobs = append(m.jobs, j.GetJobId())
				}
			}
		}
	}
}

func (m *schedModel) stop() {
	if len(m.jobs) == 0 {
		return
	}
	id := m.jobs[m.rnd.IntN(len(m.jobs))]
	_, err := m.sched.client.StopJob(m.t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
	switch {
	case err == nil:
		m.stops[id] = true
	case connect.CodeOf(err) == connect.CodeUnavailable && strings.Contains(err.Error(), "kept"):
		m.stops[id] = true
	case connect.CodeOf(err) == connect.CodeUnavailable:
	default:
		m.t.Errorf("StopJob %s: %v", id, err)
	}
}

func (m *schedModel) jobEnds() {
	w := m.anyWorker()
	if id := w.endOne(m.rnd); id != "" {
		m.note("%s ended %s", w.name, id)
	}
}

func (m *schedModel) restartScheduler() {
	m.sched.kill()
	m.sched = startScheduler(m.t, m.sched.dbPath, m.tune)
	for _, w := range m.workers {
		w.point(m.sched)
	}
}

func (m *schedModel) expectOKOrUnavailable(what string, err error) {
	m.t.Helper()
	if err != nil && connect.CodeOf(err) != connect.CodeUnavailable {
		m.t.Errorf("%s: %v", what, err)
	}
	if err != nil && !m.failing.Load() {
		m.t.Errorf("%s failed with the store working: %v", what, err)
	}
}

// sameAsBefore checks that key names id, as it did the first time.
func (m *schedModel) sameAsBefore(key, id string) {
	m.t.Helper()
	if id == "" {
		m.t.Errorf("key %s answered with no id", key)
		return
	}
	if first, ok := m.keys[key]; ok && first != id {
		m.t.Errorf("key %s named %s, now %s", key, first, id)
	}
	m.keys[key] = id
}

// storeJobs lists every job the store holds.
func (m *schedModel) storeJobs() map[string]*batonv1.JobStatus {
	out := map[string]*batonv1.JobStatus{}
	token := ""
	for {
		res, err := m.sched.client.ListJobs(m.t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{PageSize: 1000, PageToken: token}))
		if err != nil {
			m.t.Fatalf("ListJobs: %v", err)
		}
		for _, j := range res.Msg.GetJobs() {
			out[j.GetJobId()] = j
		}
		if token = res.Msg.GetNextPageToken(); token == "" {
			return out
		}
	}
}

// checkHistory: an end other than LOST is final.
func (m *schedModel) checkHistory() {
	for id, j := range m.storeJobs() {
		st := j.GetState()
		if was, ok := m.ended[id]; ok && st != was {
			m.t.Errorf("job %s ended %v, and is now %v", id, was, st)
		}
		if isEnd(st) && st != batonv1.JobState_JOB_STATE_LOST {
			m.ended[id] = st
		}
	}
}

// settle lets everything through: the store works, held heartbeats go out
// in order, and every worker reports until it has nothing left to say.
// Then the store, the stops and the running counts must agree with the
// workers; kept stops may take a moment, so the check is retried for a
// bounded time.
func (m *schedModel) settle() {
	m.failing.Store(false)
	ctx := m.t.Context()
	for _, w := range m.workers {
		w.flushHeld(ctx)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, w := range m.workers {
			for range 3 {
				w.beat(ctx)
			}
		}
		problems := m.disagreements()
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			m.t.Errorf("after settling, at step %d: %s", m.step, strings.Join(problems, "; "))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (m *schedModel) disagreements() []string {
	var out []string
	stored := m.storeJobs()
	truth := map[string]*batonv1.JobStatus{}
	running := map[string]int32{}
	for _, w := range m.workers {
		for id, st := range w.snapshot() {
			truth[id] = st
			if st.GetState() == batonv1.JobState_JOB_STATE_RUNNING {
				running[w.name]++
			}
		}
	}
	for id, j := range stored {
		real, onWorker := truth[id]
		switch {
		case !onWorker && j.GetState() != batonv1.JobState_JOB_STATE_LOST && j.GetState() != batonv1.JobState_JOB_STATE_PENDING:
			out = append(out, fmt.Sprintf("job %s is %v in the store but unknown to %s", id, j.GetState(), j.GetWorkerId()))
		case !onWorker && j.GetState() == batonv1.JobState_JOB_STATE_PENDING:
			out = append(out, fmt.Sprintf("job %s stays PENDING, unknown to %s", id, j.GetWorkerId()))
		case onWorker && real.GetState() != j.GetState():
			out = append(out, fmt.Sprintf("job %s is %v in the store, %v on %s", id, j.GetState(), real.GetState(), j.GetWorkerId()))
		}
		if m.stops[id] && onWorker && real.GetState() == batonv1.JobState_JOB_STATE_RUNNING {
			out = append(out, fmt.Sprintf("job %s runs on after its stop was taken", id))
		}
	}
	for id, st := range truth {
		if _, ok := stored[id]; !ok {
			out = append(out, fmt.Sprintf("job %s runs %v on %s, unknown to the store", id, st.GetState(), st.GetWorkerId()))
		}
	}
	res, err := m.sched.client.ListWorkers(m.t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
	if err != nil {
		m.t.Fatalf("ListWorkers: %v", err)
	}
	for _, w := range res.Msg.GetWorkers() {
		if w.GetRunningJobs() != running[w.GetName()] {
			out = append(out, fmt.Sprintf("%s counts %d running, runs %d", w.GetName(), w.GetRunningJobs(), running[w.GetName()]))
		}
	}
	return out
}

func isEnd(st batonv1.JobState) bool {
	return st >= batonv1.JobState_JOB_STATE_SUCCEEDED
}

// flakyStore fails every write while failing is set, as a full disk does.
type flakyStore struct {
	store.Store
	failing *atomic.Bool
}

var errInjected = fmt.Errorf("%w: injected write failure", store.ErrUnavailable)

func (f *flakyStore) fail() error {
	if f.failing.Load() {
		return errInjected
	}
	return nil
}

func (f *flakyStore) UpsertWorker(ctx context.Context, w store.Worker) error {
	return f.orStore(func() error { return f.Store.UpsertWorker(ctx, w) })
}

func (f *flakyStore) CreateJob(ctx context.Context, j store.Job) error {
	return f.orStore(func() error { return f.Store.CreateJob(ctx, j) })
}

func (f *flakyStore) UpdateJobStatus(ctx context.Context, id string, st *batonv1.JobStatus) error {
	return f.orStore(func() error { return f.Store.UpdateJobStatus(ctx, id, st) })
}

func (f *flakyStore) ApplyWorkerReport(ctx context.Context, workerID, id string, st *batonv1.JobStatus) error {
	return f.orStore(func() error { return f.Store.ApplyWorkerReport(ctx, workerID, id, st) })
}

func (f *flakyStore) DeleteJob(ctx context.Context, id string) error {
	return f.orStore(func() error { return f.Store.DeleteJob(ctx, id) })
}

func (f *flakyStore) MarkWorkerJobsLost(ctx context.Context, workerID, reason string, at time.Time) (int, error) {
	if err := f.fail(); err != nil {
		return 0, err
	}
	return f.Store.MarkWorkerJobsLost(ctx, workerID, reason, at)
}

func (f *flakyStore) CreateGroup(ctx context.Context, g store.Group) error {
	return f.orStore(func() error { return f.Store.CreateGroup(ctx, g) })
}

func (f *flakyStore) RequestStop(ctx context.Context, id, by string) error {
	return f.orStore(func() error { return f.Store.RequestStop(ctx, id, by) })
}

func (f *flakyStore) ClearStop(ctx context.Context, id string) error {
	return f.orStore(func() error { return f.Store.ClearStop(ctx, id) })
}

// orStore runs write unless writes fail.
func (f *flakyStore) orStore(write func() error) error {
	if err := f.fail(); err != nil {
		return err
	}
	return write()
}

// simWorker is a worker the test drives by hand: its jobs are entries in
// a table, it serves the WorkerService calls the scheduler makes, and it
// sends a heartbeat only when the test says so, now, later, or twice.
type simWorker struct {
	batonv1connect.UnimplementedWorkerServiceHandler
	name string
	addr string

	mu      sync.Mutex
	jobs    map[string]*batonv1.JobStatus
	seq     uint64
	changes map[string]uint64 // job → seq of its unacknowledged change
	held    []heldBeat
	last    *heldBeat
	client  batonv1connect.SchedulerServiceClient
}

type heldBeat struct {
	req  *batonv1.HeartbeatRequest
	seqs map[string]uint64
}

func startSimWorker(t *testing.T, name string) *simWorker {
	t.Helper()
	w := &simWorker{name: name, jobs: map[string]*batonv1.JobStatus{}, changes: map[string]uint64{}}
	_, h := batonv1connect.NewWorkerServiceHandler(w)
	srv, err := serving.Listen("127.0.0.1:0", h, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	w.addr = srv.Addr().String()
	return w
}

func (w *simWorker) point(s *testScheduler) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.client = s.client
}

func (w *simWorker) changedLocked(id string) {
	w.seq++
	w.changes[id] = w.seq
}

func (w *simWorker) StartJob(_ context.Context, req *connect.Request[batonv1.WorkerServiceStartJobRequest]) (*connect.Response[batonv1.WorkerServiceStartJobResponse], error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	id := req.Msg.GetJobId()
	st, ok := w.jobs[id]
	if !ok {
		st = &batonv1.JobStatus{JobId: id, WorkerId: w.name, State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 1}
		w.jobs[id] = st
		w.changedLocked(id)
	}
	return connect.NewResponse(&batonv1.WorkerServiceStartJobResponse{Status: cloneStatus(st)}), nil
}

func (w *simWorker) StopJob(_ context.Context, req *connect.Request[batonv1.WorkerServiceStopJobRequest]) (*connect.Response[batonv1.WorkerServiceStopJobResponse], error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, ok := w.jobs[req.Msg.GetJobId()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such job"))
	}
	if st.GetState() == batonv1.JobState_JOB_STATE_RUNNING {
		st.State, st.Signal, st.StoppedBy = batonv1.JobState_JOB_STATE_STOPPED, "SIGTERM", req.Msg.GetStoppedBy()
		w.changedLocked(st.GetJobId())
	}
	return connect.NewResponse(&batonv1.WorkerServiceStopJobResponse{Status: cloneStatus(st)}), nil
}

func (w *simWorker) QueryJob(_ context.Context, req *connect.Request[batonv1.WorkerServiceQueryJobRequest]) (*connect.Response[batonv1.WorkerServiceQueryJobResponse], error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, ok := w.jobs[req.Msg.GetJobId()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such job"))
	}
	return connect.NewResponse(&batonv1.WorkerServiceQueryJobResponse{Status: cloneStatus(st), Done: isEnd(st.GetState())}), nil
}

// endOne ends one running job with exit 0 and returns its id.
func (w *simWorker) endOne(rnd *rand.Rand) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var running []string
	for id, st := range w.jobs {
		if st.GetState() == batonv1.JobState_JOB_STATE_RUNNING {
			running = append(running, id)
		}
	}
	if len(running) == 0 {
		return ""
	}
	slices.Sort(running)
	id := running[rnd.IntN(len(running))]
	zero := int32(0)
	w.jobs[id].State, w.jobs[id].ExitCode = batonv1.JobState_JOB_STATE_SUCCEEDED, &zero
	w.changedLocked(id)
	return id
}

// restart is the worker process restarting: its running jobs are LOST
// (their processes are gone), and what it had not yet reported is
// forgotten with its memory.
func (w *simWorker) restart() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, st := range w.jobs {
		if st.GetState() == batonv1.JobState_JOB_STATE_RUNNING {
			st.State, st.Reason = batonv1.JobState_JOB_STATE_LOST, "worker restarted"
		}
	}
	w.changes = map[string]uint64{}
	w.held, w.last = nil, nil
}

func (w *simWorker) register(ctx context.Context) {
	w.mu.Lock()
	req := &batonv1.RegisterWorkerRequest{Name: w.name, Address: w.addr}
	for _, st := range w.jobs {
		if !isEnd(st.GetState()) {
			req.Jobs = append(req.Jobs, cloneStatus(st))
		}
	}
	client := w.client
	w.mu.Unlock()
	_, _ = client.RegisterWorker(ctx, connect.NewRequest(req))
}

// build makes a heartbeat of the changes not yet acknowledged.
func (w *simWorker) build() heldBeat {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := heldBeat{req: &batonv1.HeartbeatRequest{WorkerId: w.name}, seqs: map[string]uint64{}}
	for _, st := range w.jobs {
		if st.GetState() == batonv1.JobState_JOB_STATE_RUNNING {
			b.req.RunningJobs++
		}
	}
	for id, seq := range w.changes {
		b.req.Changes = append(b.req.Changes, cloneStatus(w.jobs[id]))
		b.seqs[id] = seq
	}
	return b
}

// send delivers b; an answer acknowledges what it carried unless it
// changed again since, and NotFound makes the worker register again.
func (w *simWorker) send(ctx context.Context, b heldBeat) {
	w.mu.Lock()
	client := w.client
	w.last = &b
	w.mu.Unlock()
	_, err := client.Heartbeat(ctx, connect.NewRequest(b.req))
	if connect.CodeOf(err) == connect.CodeNotFound {
		w.register(ctx)
		return
	}
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, seq := range b.seqs {
		if w.changes[id] == seq {
			delete(w.changes, id)
		}
	}
}

func (w *simWorker) beat(ctx context.Context) { w.send(ctx, w.build()) }

func (w *simWorker) hold() {
	b := w.build()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.held = append(w.held, b)
}

// sendHeld sends one held heartbeat, not necessarily the oldest.
func (w *simWorker) sendHeld(ctx context.Context, rnd *rand.Rand) {
	w.mu.Lock()
	if len(w.held) == 0 {
		w.mu.Unlock()
		return
	}
	i := rnd.IntN(len(w.held))
	b := w.held[i]
	w.held = slices.Delete(w.held, i, i+1)
	w.mu.Unlock()
	w.send(ctx, b)
}

func (w *simWorker) flushHeld(ctx context.Context) {
	w.mu.Lock()
	held := w.held
	w.held = nil
	w.mu.Unlock()
	for _, b := range held {
		w.send(ctx, b)
	}
}

func (w *simWorker) resend(ctx context.Context) {
	w.mu.Lock()
	last := w.last
	w.mu.Unlock()
	if last != nil {
		w.send(ctx, *last)
	}
}

func (w *simWorker) snapshot() map[string]*batonv1.JobStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]*batonv1.JobStatus, len(w.jobs))
	for id, st := range w.jobs {
		out[id] = cloneStatus(st)
	}
	return out
}

func cloneStatus(st *batonv1.JobStatus) *batonv1.JobStatus { return proto.CloneOf(st) }
