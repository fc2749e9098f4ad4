package scheduler_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler"
)

// run is what a RunJob call brought: its messages in order, the output and
// the call's error.
type run struct {
	queued  *batonv1.JobStatus
	started *batonv1.JobStatus
	final   *batonv1.JobStatus
	out     bytes.Buffer
	// order is the kind of every message: 'q' queued, 's' started, 'c'
	// chunk, 'f' final.
	order string
	err   error
}

func runJob(ctx context.Context, c batonv1connect.SchedulerServiceClient, req *batonv1.RunJobRequest) *run {
	r := &run{}
	stream, err := c.RunJob(ctx, connect.NewRequest(req))
	if err != nil {
		r.err = err
		return r
	}
	defer stream.Close()
	for stream.Receive() {
		msg := stream.Msg()
		switch {
		case msg.GetQueued() != nil:
			r.queued, r.order = msg.GetQueued(), r.order+"q"
		case msg.GetStarted() != nil:
			r.started, r.order = msg.GetStarted(), r.order+"s"
		case msg.GetChunk() != nil:
			r.out.Write(msg.GetChunk().GetData())
			if !strings.HasSuffix(r.order, "c") {
				r.order += "c"
			}
		case msg.GetStatus() != nil:
			r.final, r.order = msg.GetStatus(), r.order+"f"
		}
	}
	r.err = stream.Err()
	return r
}

func countJobs(t *testing.T, c batonv1connect.SchedulerServiceClient) int {
	t.Helper()
	res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{PageSize: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Msg.GetJobs())
}

// TestRunJob: one call starts a job and follows it to its end; what it
// says agrees with the store at once, a used key follows the first job,
// and a start that fails or is not allowed leaves nothing behind.
func TestRunJob(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", nil)
	startWorker(t, "w1", s, nil)
	c := s.client
	waitWorkers(t, c, stateReady, "w1")

	t.Run("starts, streams, ends", func(t *testing.T) {
		r := runJob(t.Context(), c, &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{
			Command: "sh", Args: []string{"-c", "echo out; seq 1 20000"},
		}})
		if r.err != nil {
			t.Fatalf("RunJob: %v", r.err)
		}
		if r.order != "scf" {
			t.Errorf("messages %q, want started, chunks, final (scf)", r.order)
		}
		var want bytes.Buffer
		want.WriteString("out\n")
		for i := 1; i <= 20000; i++ {
			want.WriteString(strconv.Itoa(i) + "\n")
		}
		if !bytes.Equal(r.out.Bytes(), want.Bytes()) {
			t.Errorf("output: %d bytes, want %d identical", r.out.Len(), want.Len())
		}
		if r.started.GetJobId() == "" || r.started.GetJobId() != r.final.GetJobId() || r.started.GetWorkerId() != "w1" {
			t.Errorf("started %v, final %v: want one job on w1", r.started, r.final)
		}
		if got := r.final.GetState(); got != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("final state %v, want SUCCEEDED", got)
		}
		// The final status was recorded before it was sent.
		if q := queryJob(t, c, r.final.GetJobId()); q.GetStatus().GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("QueryJob right after the run: %v, want SUCCEEDED", q.GetStatus().GetState())
		}
	})

	t.Run("one stream only", func(t *testing.T) {
		r := runJob(t.Context(), c, &batonv1.RunJobRequest{
			Job:    &batonv1.StartJobRequest{Command: "sh", Args: []string{"-c", "echo out; echo err >&2"}},
			Stream: batonv1.OutputStream_OUTPUT_STREAM_STDERR,
		})
		if r.err != nil || r.out.String() != "err\n" {
			t.Errorf("stderr only: %q, %v; want \"err\\n\"", r.out.String(), r.err)
		}
	})

	t.Run("a used key follows the first job", func(t *testing.T) {
		req := &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", IdempotencyKey: "run-once"}}
		first := runJob(t.Context(), c, req)
		again := runJob(t.Context(), c, req)
		if first.err != nil || again.err != nil {
			t.Fatalf("RunJob: %v, %v", first.err, again.err)
		}
		if first.started.GetJobId() != again.started.GetJobId() {
			t.Errorf("second call ran job %s, want the first's %s", again.started.GetJobId(), first.started.GetJobId())
		}
		if again.out.String() != "hello\n" || again.final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("second call: %q %v, want the first job's output and end", again.out.String(), again.final.GetState())
		}
	})

	t.Run("refusals leave nothing", func(t *testing.T) {
		before := countJobs(t, c)
		_, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", All: true, IdempotencyKey: "fan"}))
		if err != nil {
			t.Fatal(err)
		}
		before++
		for _, tc := range []struct {
			name string
			req  *batonv1.RunJobRequest
			code connect.Code
		}{
			{"no job", &batonv1.RunJobRequest{}, connect.CodeInvalidArgument},
			{"a fan-out", &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", All: true}}, connect.CodeInvalidArgument},
			{"a command not allowed", &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "python3"}}, connect.CodePermissionDenied},
			{"a missing script", &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Path: "nope.sh"}}, connect.CodeNotFound},
			{"an unknown worker", &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", WorkerId: "w9"}}, connect.CodeNotFound},
			{"the key of a fan-out", &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", IdempotencyKey: "fan"}}, connect.CodeFailedPrecondition},
		} {
			r := runJob(t.Context(), c, tc.req)
			wantCode(t, tc.name, r.err, tc.code)
			if r.started != nil {
				t.Errorf("%s: a start was reported: %v", tc.name, r.started)
			}
		}
		if after := countJobs(t, c); after != before {
			t.Errorf("%d jobs recorded after the refusals, want %d", after, before)
		}
	})

	t.Run("the job outlives its caller", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		stream, err := c.RunJob(ctx, connect.NewRequest(&batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{
			Command: "sh", Args: []string{"-c", "echo one; sleep 0.5; echo two"},
		}}))
		if err != nil {
			t.Fatal(err)
		}
		if !stream.Receive() || stream.Msg().GetStarted() == nil {
			t.Fatalf("no started message: %v", stream.Err())
		}
		id := stream.Msg().GetStarted().GetJobId()
		cancel()
		stream.Close()
		var out bytes.Buffer
		follow, err := c.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Follow: true}))
		if err != nil {
			t.Fatal(err)
		}
		defer follow.Close()
		var final *batonv1.JobStatus
		for follow.Receive() {
			out.Write(follow.Msg().GetChunk().GetData())
			if st := follow.Msg().GetStatus(); st != nil {
				final = st
			}
		}
		if out.String() != "one\ntwo\n" || final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("after the caller left: %q, %v; want both lines and SUCCEEDED", out.String(), final.GetState())
		}
	})
}

// TestRunJobOnAHungWorker: a worker that never answers the start is given
// WorkerCallTimeout, as for StartJob; the job stays recorded as LOST until
// the worker's next report settles it.
func TestRunJobOnAHungWorker(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", func(o *scheduler.Options) { o.WorkerCallTimeout = time.Second })
	c := s.client
	addr, _ := hungWorker(t)
	if _, err := c.RegisterWorker(t.Context(), connect.NewRequest(&batonv1.RegisterWorkerRequest{Name: "hung", Address: addr})); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	r := runJob(ctx, c, &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{WorkerId: "hung", Command: "sh", Path: "hello.sh"}})
	wantCode(t, "RunJob on a hung worker", r.err, connect.CodeUnavailable)
	res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{WorkerId: "hung"}))
	if err != nil {
		t.Fatal(err)
	}
	if jobs := res.Msg.GetJobs(); len(jobs) != 1 || jobs[0].GetState() != batonv1.JobState_JOB_STATE_LOST {
		t.Errorf("hung worker's job records: %v, want one LOST", jobs)
	}
}

// TestShortJobsDoNotFillAWorker: a worker's running count drops when a
// job's end arrives on its output stream, not only at the heartbeats after
// it, so a worker of capacity 2 runs short jobs back to back however slow
// its heartbeats are.
func TestShortJobsDoNotFillAWorker(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", func(o *scheduler.Options) { o.HeartbeatInterval = time.Hour })
	startWorkerWith(t, "w1", s, workerSetup{capacity: 2})
	c := s.client
	waitWorkers(t, c, stateReady, "w1")
	for i := range 6 {
		// Placed by the scheduler, which counts the worker's jobs (a job
		// for a named worker is left to the worker's own limit).
		r := runJob(t.Context(), c, &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"}})
		if r.err != nil {
			t.Fatalf("job %d of 6 on a worker of capacity 2: %v", i+1, r.err)
		}
	}
}

// TestRunJobCutIsUnavailable: a run cut because the scheduler stops says
// Unavailable, the code on which clients resume with StreamJobOutput, as a
// cut StreamJobOutput does.
func TestRunJobCutIsUnavailable(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", nil)
	startWorker(t, "w1", s, nil)
	c := s.client
	waitWorkers(t, c, stateReady, "w1")
	stream, err := c.RunJob(t.Context(), connect.NewRequest(&batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"30"}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || stream.Msg().GetStarted() == nil {
		t.Fatalf("no started message: %v", stream.Err())
	}
	id := stream.Msg().GetStarted().GetJobId()
	s.SetNotServing()
	for stream.Receive() {
	}
	wantCode(t, "RunJob cut by a stopping scheduler", stream.Err(), connect.CodeUnavailable)
	if _, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id})); err != nil {
		t.Errorf("StopJob: %v", err)
	}
}

// TestRunJobSameKeyAtOnce: calls racing with one idempotency key all follow
// the one job the winner starts, to its end, and the losers hold no slot
// on its worker meanwhile.
func TestRunJobSameKeyAtOnce(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", func(o *scheduler.Options) { o.HeartbeatInterval = time.Hour })
	// Room for every call to be placed, and for no other job unless the
	// losers give their slots back.
	const calls = 8
	startWorkerWith(t, "w1", s, workerSetup{capacity: calls})
	c := s.client
	waitWorkers(t, c, stateReady, "w1")
	req := &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Args: []string{"-c", "sleep 2; echo once"}, IdempotencyKey: "same"}}
	type result struct {
		id, out string
		final   batonv1.JobState
		err     error
	}
	started := make(chan struct{}, calls)
	results := make([]result, calls)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			var once sync.Once
			signal := func() { once.Do(func() { started <- struct{}{} }) }
			defer signal() // also when it failed
			stream, err := c.RunJob(t.Context(), connect.NewRequest(req))
			if err != nil {
				results[i].err = err
				return
			}
			defer stream.Close()
			var out bytes.Buffer
			for stream.Receive() {
				msg := stream.Msg()
				if st := msg.GetStarted(); st != nil {
					results[i].id = st.GetJobId()
					signal()
				}
				out.Write(msg.GetChunk().GetData())
				if st := msg.GetStatus(); st != nil {
					results[i].final = st.GetState()
				}
			}
			results[i].out, results[i].err = out.String(), stream.Err()
		})
	}
	// Every call is following the job: the worker has room for another.
	for range calls {
		<-started
	}
	other := runJob(t.Context(), c, &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"}})
	if other.err != nil {
		t.Errorf("another job while %d calls follow one: %v", calls, other.err)
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil || r.out != "once\n" || r.final != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("call %d: %q %v, %v; want the one job's output and end", i, r.out, r.final, r.err)
		}
		if r.id != results[0].id {
			t.Errorf("call %d followed job %s, call 0 job %s", i, r.id, results[0].id)
		}
	}
}

// olderWorker makes a worker answer RunJob as one that predates it does.
type olderWorker struct{}

func (olderWorker) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (olderWorker) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (olderWorker) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if conn.Spec().Procedure == batonv1connect.WorkerServiceRunJobProcedure {
			return connect.NewError(connect.CodeUnimplemented, errors.New("no RunJob here"))
		}
		return next(ctx, conn)
	}
}

// TestRunJobOnAnOlderWorker: in a rolling upgrade a worker without RunJob
// still runs the job, started with StartJob and followed with
// StreamJobOutput.
func TestRunJobOnAnOlderWorker(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", nil)
	startWorkerWith(t, "old", s, workerSetup{interceptors: []connect.Interceptor{olderWorker{}}})
	c := s.client
	waitWorkers(t, c, stateReady, "old")
	r := runJob(t.Context(), c, &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"}})
	if r.err != nil || r.order != "scf" || r.out.String() != "hello\n" || r.final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("RunJob on an older worker: %q %q %v, %v; want hello and SUCCEEDED", r.order, r.out.String(), r.final.GetState(), r.err)
	}
	if n := countJobs(t, c); n != 1 {
		t.Errorf("%d jobs recorded, want 1", n)
	}
}
