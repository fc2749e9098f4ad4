package scheduler_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/serving"
)

// An array job whose attempt is retried when no other job of its array
// is out of its hold: its next attempt must run.
func TestArrayRetryOfTheLastJobRuns(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	req := arrayJob(marks, 0, 0, 0, 1)
	req.Args[3] = "3" // exit 3
	req.Retry = &batonv1.RetryPolicy{Attempts: 2, InitialBackoff: durationpb.New(100 * time.Millisecond)}
	res := startJob(t, sched.client, req)
	st := finalJobs(t, sched.client, []string{res.GetJobId()})[res.GetJobId()]
	if st.GetAttempt() != 2 {
		t.Fatalf("ended at attempt %d, want 2", st.GetAttempt())
	}
}

// slowStarts answers a worker's StartJob only after delay: the job runs,
// and may end, meanwhile.
type slowStarts struct{ delay time.Duration }

func (s slowStarts) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		if strings.HasSuffix(req.Spec().Procedure, "/StartJob") {
			time.Sleep(s.delay)
		}
		return res, err
	}
}
func (slowStarts) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}
func (slowStarts) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// A queued attempt that ends (and is retried) before the dispatcher that
// started it has taken it out of the queue: the next attempt must still
// be queued and run.
func TestRetryOfAnAttemptThatEndsWhileItsStartIsAnswered(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", func(o *scheduler.Options) {
		o.WorkerCallTimeout = 10 * time.Second
		o.HeartbeatInterval = 100 * time.Millisecond
	})
	startWorkerWith(t, "w1", sched, workerSetup{interceptors: []connect.Interceptor{slowStarts{delay: time.Second}}})
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	req := markJob("R", marks, 0, 3)
	req.Retry = &batonv1.RetryPolicy{Attempts: 3, InitialBackoff: durationpb.New(50 * time.Millisecond)}
	id := startJob(t, sched.client, req).GetJobId()
	st := finalJobs(t, sched.client, []string{id})[id]
	if st.GetAttempt() != 3 || len(readMarks(t, marks)) != 3 {
		t.Fatalf("ended %v at attempt %d after %d runs, want 3 attempts", st.GetState(), st.GetAttempt(), len(readMarks(t, marks)))
	}
}

// A follower of a job whose attempts end quickly, one after the other,
// gets every attempt's output and the job's end.
func TestFollowFastRetries(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", func(o *scheduler.Options) {
		o.HeartbeatInterval = 20 * time.Millisecond
	})
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	policy := &batonv1.RetryPolicy{Attempts: 4, InitialBackoff: durationpb.New(300 * time.Millisecond), Factor: 1}
	req := retried("R", marks, 3, policy)
	req.Command, req.Path, req.Args = "sh", "say.sh", []string{"R", marks, "3"}
	id := startJob(t, sched.client, req).GetJobId()
	text, _, final := output(t, sched.client, id, 0)
	if final.GetAttempt() != 4 || strings.Count(text, "out R\n") != 4 {
		t.Fatalf("followed to attempt %d with output %q, want 4 attempts' output", final.GetAttempt(), text)
	}
}

// A follower that starts while a job waits for its first attempt gets
// every attempt's output, however quickly the attempts end.
func TestFollowFromBeforeTheFirstAttempt(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", func(o *scheduler.Options) {
		o.HeartbeatInterval = 20 * time.Millisecond
	})
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	a := startJob(t, sched.client, markJob("A", marks, 0.5, 0)).GetJobId()
	policy := &batonv1.RetryPolicy{Attempts: 3, InitialBackoff: durationpb.New(300 * time.Millisecond), Factor: 1}
	req := retried("B", marks, 3, policy)
	req.Command, req.Path, req.Args = "sh", "say.sh", []string{"B", marks, "3"}
	req.After = []*batonv1.Dependency{afterJob(a, succeeded)}
	id := startJob(t, sched.client, req).GetJobId()
	text, _, final := output(t, sched.client, id, 0)
	if final.GetAttempt() != 3 || strings.Count(text, "out B\n") != 3 {
		t.Fatalf("followed to attempt %d with output %q, want 3 attempts' output", final.GetAttempt(), text)
	}
}

// The current attempt of a job between attempts has not run yet: asking
// for its output says so, not that a worker "" is unknown.
func TestAttemptNotStartedYet(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	req := retried("R", marks, 3, &batonv1.RetryPolicy{Attempts: 2, InitialBackoff: durationpb.New(time.Minute)})
	req.Command, req.Path, req.Args = "sh", "say.sh", []string{"R", marks, "3"}
	id := startJob(t, sched.client, req).GetJobId()
	waitFor(t, "attempt 2 queued", func() bool { return queryJob(t, sched.client, id).GetStatus().GetAttempt() == 2 })
	s, err := sched.client.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Attempt: 2}))
	if err != nil {
		t.Fatal(err)
	}
	for s.Receive() {
	}
	if err := s.Err(); err != nil {
		t.Fatalf("attempt 2's output before it ran: %v", err)
	}
}

// TestARetriedAttemptIsStoppedWhenItsWorkerIsBack: a worker cut off from
// the scheduler (not dead) goes DOWN and its job's attempt LOST; the job
// runs again on the other worker. When the first worker is back and
// reports the old attempt still running, it is told to stop it.
func TestARetriedAttemptIsStoppedWhenItsWorkerIsBack(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", func(o *scheduler.Options) {
		o.HeartbeatInterval = 100 * time.Millisecond
		o.HeartbeatGrace = 300 * time.Millisecond
	})
	w1 := startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	req := &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"100"},
		Retry: &batonv1.RetryPolicy{Attempts: 2, Lost: true}}
	id := startJob(t, sched.client, req).GetJobId()
	waitFor(t, "the first attempt running", func() bool { return storedState(t, sched.client, "w1", id) == batonv1.JobState_JOB_STATE_RUNNING })

	w1.sched.pause(true)
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_DOWN, "w1")
	startWorker(t, "w2", sched, nil)
	waitFor(t, "the second attempt running on w2", func() bool {
		st := queryJob(t, sched.client, id).GetStatus()
		return st.GetAttempt() == 2 && st.GetWorkerId() == "w2" && st.GetState() == batonv1.JobState_JOB_STATE_RUNNING
	})
	first := batonv1connect.NewWorkerServiceClient(serving.NewHTTPClient(nil), w1.url)
	if res, err := first.QueryJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: id})); err != nil || res.Msg.GetStatus().GetState() != batonv1.JobState_JOB_STATE_RUNNING {
		t.Fatalf("the first attempt on the cut-off worker: %v, %v; the test needs it running", res.Msg.GetStatus().GetState(), err)
	}

	w1.sched.pause(false)
	waitFor(t, "the first attempt stopped on w1", func() bool {
		res, err := first.QueryJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: id}))
		return err == nil && res.Msg.GetStatus().GetState() == batonv1.JobState_JOB_STATE_STOPPED
	})
	if st := queryJob(t, sched.client, id).GetStatus(); st.GetState() != batonv1.JobState_JOB_STATE_RUNNING || st.GetWorkerId() != "w2" {
		t.Errorf("the job after its old attempt was stopped: %v on %s, want still RUNNING on w2", st.GetState(), st.GetWorkerId())
	}
}
