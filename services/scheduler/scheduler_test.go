package scheduler_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
)

const (
	stateReady = batonv1.WorkerState_WORKER_STATE_READY
	stateDown  = batonv1.WorkerState_WORKER_STATE_DOWN
)

func TestEndToEnd(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", func(o *scheduler.Options) { o.HeartbeatInterval = 200 * time.Millisecond })
	startWorker(t, "w1", s, map[string]string{"zone": "a"})
	startWorker(t, "w2", s, map[string]string{"zone": "b"})
	startWorker(t, "w3", s, map[string]string{"zone": "b"})
	c := s.client
	waitWorkers(t, c, stateReady, "w1", "w2", "w3")
	if n := len(workerStates(t, c)); n != 3 {
		t.Fatalf("ListWorkers: %d workers, want 3", n)
	}

	t.Run("start by worker id, query, list, stream", func(t *testing.T) {
		res := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"})
		id := res.GetJobId()
		if got := res.GetJobs()[0].GetWorkerId(); got != "w1" {
			t.Errorf("worker_id = %q, want w1", got)
		}
		waitFor(t, "job done", func() bool { return queryJob(t, c, id).GetDone() })
		q := queryJob(t, c, id)
		if q.GetStatus().GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || q.GetStatus().GetExitCode() != 0 || q.GetError() {
			t.Errorf("QueryJob = %v, want SUCCEEDED exit 0", q)
		}
		waitFor(t, "heartbeat to record the end", func() bool {
			return storedState(t, c, "w1", id) == batonv1.JobState_JOB_STATE_SUCCEEDED
		})
		stream, err := c.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Follow: true}))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		var out bytes.Buffer
		var last *batonv1.JobStatus
		for stream.Receive() {
			if ch := stream.Msg().GetChunk(); ch != nil {
				out.Write(ch.GetData())
			}
			if st := stream.Msg().GetStatus(); st != nil {
				last = st
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		if out.String() != "hello\n" {
			t.Errorf("output = %q, want %q", out.String(), "hello\n")
		}
		if last.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || last.GetWorkerId() != "w1" {
			t.Errorf("final status = %v, want SUCCEEDED on w1", last)
		}
	})

	t.Run("stop", func(t *testing.T) {
		id := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w2", Command: "sh", Path: "sleep.sh"}).GetJobId()
		res, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id, WorkerId: "w2"}))
		if err != nil {
			t.Fatalf("StopJob: %v", err)
		}
		if got := res.Msg.GetStatus().GetState(); got != batonv1.JobState_JOB_STATE_STOPPED {
			t.Errorf("state = %v, want STOPPED", got)
		}
		if q := queryJob(t, c, id); !q.GetDone() || !q.GetError() {
			t.Errorf("QueryJob after stop = %v, want done with error", q)
		}
	})

	t.Run("selector", func(t *testing.T) {
		for range 3 {
			res := startJob(t, c, &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", Selector: map[string]string{"zone": "a"}})
			if got := res.GetJobs()[0].GetWorkerId(); got != "w1" {
				t.Errorf("placed on %q, want w1", got)
			}
		}
		_, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", Selector: map[string]string{"zone": "z"}}))
		wantCode(t, "no matching worker", err, connect.CodeFailedPrecondition)
	})

	t.Run("least loaded spreads", func(t *testing.T) {
		// Running counts are refreshed by heartbeats: wait until the jobs of
		// the earlier steps have ended, then for a heartbeat from every
		// worker after that, which carries its true count.
		waitFor(t, "earlier jobs to end", func() bool {
			res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{
				States: []batonv1.JobState{batonv1.JobState_JOB_STATE_PENDING, batonv1.JobState_JOB_STATE_RUNNING},
			}))
			if err != nil {
				t.Fatalf("ListJobs: %v", err)
			}
			return len(res.Msg.GetJobs()) == 0
		})
		ended := time.Now()
		waitFor(t, "every worker idle", func() bool {
			res, err := c.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
			if err != nil {
				t.Fatalf("ListWorkers: %v", err)
			}
			for _, w := range res.Msg.GetWorkers() {
				if w.GetRunningJobs() != 0 || !w.GetLastHeartbeat().AsTime().After(ended) {
					return false
				}
			}
			return true
		})
		seen := map[string]bool{}
		var ids []string
		for range 3 {
			res := startJob(t, c, &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh"})
			seen[res.GetJobs()[0].GetWorkerId()] = true
			ids = append(ids, res.GetJobId())
		}
		if len(seen) != 3 {
			t.Errorf("3 sleeping jobs went to %v, want one per worker", seen)
		}
		for _, id := range ids {
			if _, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id})); err != nil {
				t.Errorf("StopJob: %v", err)
			}
		}
	})

	t.Run("fan-out", func(t *testing.T) {
		res := startJob(t, c, &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", All: true})
		if res.GetGroupId() == "" || len(res.GetJobs()) != 3 {
			t.Fatalf("fan-out = %v, want a group of 3 jobs", res)
		}
		workers := map[string]bool{}
		for _, j := range res.GetJobs() {
			workers[j.GetWorkerId()] = true
		}
		if len(workers) != 3 {
			t.Errorf("fan-out workers = %v, want all 3", workers)
		}
		var q *batonv1.QueryJobResponse
		waitFor(t, "group done", func() bool {
			r, err := c.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{GroupId: res.GetGroupId()}))
			if err != nil {
				t.Fatalf("QueryJob(group): %v", err)
			}
			q = r.Msg
			return q.GetDone()
		})
		if q.GetError() || len(q.GetJobs()) != 3 {
			t.Errorf("group status = %v, want 3 jobs without error", q)
		}
	})

	t.Run("idempotency key", func(t *testing.T) {
		req := &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", IdempotencyKey: "once-only"}
		first := startJob(t, c, req).GetJobId()
		second := startJob(t, c, req).GetJobId()
		if first != second {
			t.Errorf("retried StartJob returned job %s, want %s", second, first)
		}
	})

	t.Run("errors", func(t *testing.T) {
		_, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "../escape.sh"}))
		wantCode(t, "bad script path", err, connect.CodeInvalidArgument)
		_, err = c.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "nobody", Command: "sh", Path: "hello.sh"}))
		wantCode(t, "unknown worker", err, connect.CodeNotFound)
		_, err = c.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: "0190a000-0000-7000-8000-000000000001"}))
		wantCode(t, "unknown job", err, connect.CodeNotFound)
		res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{WorkerId: "w1", PageSize: 1000}))
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range res.Msg.GetJobs() {
			if j.GetSpec().GetPath() == "../escape.sh" {
				t.Errorf("refused job %s left in the store", j.GetJobId())
			}
		}
	})

	t.Run("stop a group", func(t *testing.T) {
		res := startJob(t, c, &batonv1.StartJobRequest{All: true, Selector: map[string]string{"zone": "b"}, Command: "sh", Path: "sleep.sh"})
		if len(res.GetJobs()) != 2 {
			t.Fatalf("fan-out over zone b started %d jobs, want 2", len(res.GetJobs()))
		}
		stop, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{GroupId: res.GetGroupId()}))
		if err != nil {
			t.Fatal(err)
		}
		if len(stop.Msg.GetJobs()) != 2 {
			t.Errorf("group stop returned %d jobs, want 2", len(stop.Msg.GetJobs()))
		}
		for _, st := range stop.Msg.GetJobs() {
			if st.GetState() != batonv1.JobState_JOB_STATE_STOPPED {
				t.Errorf("job %s on %s is %v after a group stop, want STOPPED", st.GetJobId(), st.GetWorkerId(), st.GetState())
			}
		}
	})

	// Last: it takes w1 out of placement for good.
	t.Run("drain", func(t *testing.T) {
		res, err := c.DrainWorker(t.Context(), connect.NewRequest(&batonv1.DrainWorkerRequest{WorkerId: "w1"}))
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Msg.GetWorker().GetState(); got != batonv1.WorkerState_WORKER_STATE_DRAINING {
			t.Fatalf("DrainWorker answered %v, want DRAINING", got)
		}
		_, err = c.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"}))
		wantCode(t, "start on a draining worker", err, connect.CodeFailedPrecondition)
		_, err = c.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{Selector: map[string]string{"zone": "a"}, Command: "sh", Path: "hello.sh"}))
		wantCode(t, "selector matching only a draining worker", err, connect.CodeFailedPrecondition)
		for range 4 {
			if got := startJob(t, c, &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"}).GetJobs()[0].GetWorkerId(); got == "w1" {
				t.Error("a job was placed on the draining worker")
			}
		}
		if got := workerStates(t, c)["w1"]; got != batonv1.WorkerState_WORKER_STATE_DRAINING {
			t.Errorf("ListWorkers shows w1 %v, want DRAINING", got)
		}
	})
}

func TestWorkerDownAndBack(t *testing.T) {
	t.Parallel()
	// A live worker on loaded cores can miss a beat or two: a grace of
	// seconds keeps w2 READY, and going DOWN still takes far less than
	// waitTimeout.
	s := startScheduler(t, "", func(o *scheduler.Options) {
		o.HeartbeatInterval = 250 * time.Millisecond
		o.HeartbeatGrace = 3 * time.Second
	})
	w1 := startWorker(t, "w1", s, nil)
	startWorker(t, "w2", s, nil)
	c := s.client
	waitWorkers(t, c, stateReady, "w1", "w2")

	id := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh"}).GetJobId()
	// A silent job's stream sends nothing, not even headers, so the call
	// itself blocks until the relay ends.
	streamEnd := make(chan error, 1)
	go func() {
		stream, err := c.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Follow: true}))
		if err != nil {
			streamEnd <- err
			return
		}
		defer stream.Close()
		for stream.Receive() {
		}
		streamEnd <- stream.Err()
	}()

	w1.sched.pause(true)
	waitWorkers(t, c, stateDown, "w1")
	waitFor(t, "job LOST", func() bool { return storedState(t, c, "w1", id) == batonv1.JobState_JOB_STATE_LOST })
	select {
	case err := <-streamEnd:
		wantCode(t, "relayed stream of a down worker", err, connect.CodeUnavailable)
	case <-time.After(waitTimeout):
		t.Fatal("relayed stream still open after its worker went down")
	}
	for range 3 {
		if got := startJob(t, c, &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"}).GetJobs()[0].GetWorkerId(); got != "w2" {
			t.Errorf("placed on %q while w1 is down, want w2", got)
		}
	}
	_, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"}))
	wantCode(t, "StartJob on a down worker", err, connect.CodeUnavailable)
	if st, serr := c.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id})); serr != nil {
		err = serr
	} else {
		for st.Receive() {
		}
		err = st.Err()
		st.Close()
	}
	wantCode(t, "stream from a down worker", err, connect.CodeUnavailable)

	w1.sched.pause(false)
	waitWorkers(t, c, stateReady, "w1")
	waitFor(t, "job RUNNING again", func() bool { return storedState(t, c, "w1", id) == batonv1.JobState_JOB_STATE_RUNNING })
	res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{WorkerId: "w1"}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(res.Msg.GetJobs()); n != 1 {
		t.Errorf("w1 has %d jobs after coming back, want 1: %v", n, res.Msg.GetJobs())
	}
	if _, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id})); err != nil {
		t.Errorf("StopJob after reconcile: %v", err)
	}
}

func TestSchedulerRestart(t *testing.T) {
	t.Parallel()
	// The workers have as long to come back as the test waits for them, so
	// no check after the restart races the failover deadline.
	tune := func(o *scheduler.Options) {
		o.HeartbeatInterval = 250 * time.Millisecond
		o.HeartbeatGrace = 3 * time.Second
		o.FailoverGrace = waitTimeout
	}
	s1 := startScheduler(t, "", tune)
	w1 := startWorker(t, "w1", s1, nil)
	w2 := startWorker(t, "w2", s1, nil)
	waitWorkers(t, s1.client, stateReady, "w1", "w2")
	running := startJob(t, s1.client, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh"}).GetJobId()
	done := startJob(t, s1.client, &batonv1.StartJobRequest{WorkerId: "w2", Command: "sh", Path: "hello.sh"}).GetJobId()
	waitFor(t, "job end recorded", func() bool {
		return storedState(t, s1.client, "w2", done) == batonv1.JobState_JOB_STATE_SUCCEEDED
	})

	s1.kill()
	restart := time.Now()
	s2 := startScheduler(t, s1.dbPath, tune)
	for name, st := range workerStates(t, s2.client) {
		if st != stateReady {
			t.Errorf("right after restart %s is %v, want READY", name, st)
		}
	}
	w1.sched.point(s2.client)
	w2.sched.point(s2.client)
	waitFor(t, "workers to register again", func() bool {
		res, err := s2.client.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, w := range res.Msg.GetWorkers() {
			if w.GetState() == stateReady && w.GetRegisteredAt().AsTime().After(restart) {
				n++
			}
		}
		return n == 2
	})
	if got := queryJob(t, s2.client, running).GetStatus().GetState(); got != batonv1.JobState_JOB_STATE_RUNNING {
		t.Errorf("pre-restart job is %v, want RUNNING", got)
	}
	if got := storedState(t, s2.client, "w2", done); got != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("pre-restart finished job is %v, want SUCCEEDED", got)
	}
	if _, err := s2.client.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: running})); err != nil {
		t.Errorf("StopJob after restart: %v", err)
	}
}

func TestHungWorker(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", func(o *scheduler.Options) { o.WorkerCallTimeout = time.Second })
	startWorker(t, "w1", s, nil)
	c := s.client
	waitWorkers(t, c, stateReady, "w1")

	addr, accepted := hungWorker(t)
	if _, err := c.RegisterWorker(t.Context(), connect.NewRequest(&batonv1.RegisterWorkerRequest{Name: "hung", Address: addr})); err != nil {
		t.Fatal(err)
	}

	hung := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		_, err := c.StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "hung", Command: "sh", Path: "hello.sh"}))
		hung <- err
	}()
	select {
	case <-accepted:
	case <-time.After(waitTimeout):
		t.Fatal("the scheduler never dialled the hung worker")
	}
	// While the call to the hung worker is in flight, others complete.
	if _, err := c.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{})); err != nil {
		t.Errorf("ListWorkers: %v", err)
	}
	startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"})

	select {
	case err := <-hung:
		wantCode(t, "StartJob on a hung worker", err, connect.CodeUnavailable)
	case <-time.After(waitTimeout):
		t.Fatal("StartJob on a hung worker never returned")
	}
	res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{WorkerId: "hung"}))
	if err != nil {
		t.Fatal(err)
	}
	// The worker may have started the job before it stopped answering: the
	// record stays, as LOST, until the worker's next report settles it.
	if jobs := res.Msg.GetJobs(); len(jobs) != 1 || jobs[0].GetState() != batonv1.JobState_JOB_STATE_LOST {
		t.Errorf("hung worker's job records: %v, want one LOST", jobs)
	}
}

// TestRegistrationTakesTheWorkersTruth: a registration lists only the
// jobs a worker runs; the scheduler asks the worker after each job it holds
// as RUNNING there that the list leaves out, and takes the answer: the
// job's real end, or LOST when the worker no longer knows it.
func TestRegistrationTakesTheWorkersTruth(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", nil)
	ghost := startAnsweringWorker(t)
	const (
		wiped = "01890000-0000-7000-8000-0000000000cc"
		ended = "01890000-0000-7000-8000-0000000000dd"
	)
	register := func(jobs ...*batonv1.JobStatus) {
		t.Helper()
		_, err := s.client.RegisterWorker(t.Context(), connect.NewRequest(&batonv1.RegisterWorkerRequest{
			Name: "ghost", Address: ghost.addr, Jobs: jobs,
		}))
		if err != nil {
			t.Fatal(err)
		}
	}
	running := func(id string) *batonv1.JobStatus {
		return &batonv1.JobStatus{JobId: id, WorkerId: "ghost", State: batonv1.JobState_JOB_STATE_RUNNING}
	}
	// A worker speaks only of jobs placed on it: an unknown job it reports
	// is not taken in.
	register(running(wiped))
	if got := storedState(t, s.client, "ghost", wiped); got != batonv1.JobState_JOB_STATE_UNSPECIFIED {
		t.Fatalf("a job the scheduler never placed is stored as %v", got)
	}
	// Place both, as StartJob would have.
	st := s.store
	for _, id := range []string{wiped, ended} {
		if err := st.CreateJob(t.Context(), store.Job{ID: id, WorkerID: "ghost", Owner: "anonymous"}); err != nil {
			t.Fatal(err)
		}
	}
	register(running(wiped), running(ended))
	for _, id := range []string{wiped, ended} {
		if got := storedState(t, s.client, "ghost", id); got != batonv1.JobState_JOB_STATE_RUNNING {
			t.Fatalf("reported job %s is %v, want RUNNING", id, got)
		}
	}
	// Neither is listed any more: one ended meanwhile, the other the
	// worker forgot.
	ghost.set(&batonv1.JobStatus{JobId: ended, State: batonv1.JobState_JOB_STATE_SUCCEEDED, ExitCode: new(int32(0)), Reason: "exited with code 0"})
	register()
	if got := storedState(t, s.client, "ghost", ended); got != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("a job that ended unheard is %v, want SUCCEEDED from the worker's answer", got)
	}
	if got := storedState(t, s.client, "ghost", wiped); got != batonv1.JobState_JOB_STATE_LOST {
		t.Errorf("a job the worker forgot is %v, want LOST", got)
	}
	if n := ghost.asked.Load(); n != 2 {
		t.Errorf("the worker was asked %d times, want once for each unlisted job", n)
	}
	// The worker's own report wins again if the job turns up after all.
	register(running(wiped))
	if got := storedState(t, s.client, "ghost", wiped); got != batonv1.JobState_JOB_STATE_RUNNING {
		t.Errorf("re-reported job is %v, want RUNNING", got)
	}
}

// answeringWorker is a WorkerService that answers only QueryJob, from a
// table the test sets; every other job is NotFound.
type answeringWorker struct {
	batonv1connect.UnimplementedWorkerServiceHandler
	addr  string
	asked atomic.Int64
	mu    sync.Mutex
	jobs  map[string]*batonv1.JobStatus
}

func startAnsweringWorker(t *testing.T) *answeringWorker {
	t.Helper()
	w := &answeringWorker{jobs: map[string]*batonv1.JobStatus{}}
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

func (w *answeringWorker) set(st *batonv1.JobStatus) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.jobs[st.GetJobId()] = st
}

func (w *answeringWorker) QueryJob(_ context.Context, req *connect.Request[batonv1.WorkerServiceQueryJobRequest]) (*connect.Response[batonv1.WorkerServiceQueryJobResponse], error) {
	w.asked.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	st, ok := w.jobs[req.Msg.GetJobId()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such job"))
	}
	return connect.NewResponse(&batonv1.WorkerServiceQueryJobResponse{Status: st}), nil
}
