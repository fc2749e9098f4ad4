package store_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// retryJob is a running job of alice's on w1 whose policy retries any
// failure up to attempts times.
func retryJob(t *testing.T, s store.Store, n, attempts int) string {
	t.Helper()
	j := newJob(n, "w1", "alice")
	j.Status.Spec = &batonv1.JobSpec{Command: "sh", Retry: &batonv1.RetryPolicy{Attempts: int32(attempts), InitialBackoff: durationpb.New(time.Minute), Lost: true}}
	mustCreateJob(t, t.Context(), s, j)
	if err := s.ApplyWorkerReport(t.Context(), "w1", j.ID, &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING, StartedAt: timestamppb.Now()}); err != nil {
		t.Fatal(err)
	}
	return j.ID
}

func failed(code int32) *batonv1.JobStatus {
	return &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_FAILED, ExitCode: &code, EndedAt: timestamppb.Now(), StdoutBytes: 5}
}

// TestRetryIsDecidedWhereTheEndIsRecorded: an attempt's end that the
// policy retries queues the job again under a new run id, in the same
// write, and is not reported as the job's end; the old run id no longer
// names the job; the last attempt's end is final; a stop asked for before
// the end makes it final too.
func TestRetryIsDecidedWhereTheEndIsRecorded(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, _ := b.open(t)
		var log endLogFull
		s.ObserveJobEnds(log.add)
		id := retryJob(t, s, 1, 2)

		if err := s.ApplyWorkerReport(ctx, "w1", id, failed(3)); err != nil {
			t.Fatal(err)
		}
		j, err := s.GetQueuedJob(ctx, id)
		if err != nil {
			t.Fatalf("after a retried end the job has no place in the queue: %v", err)
		}
		st := j.Status
		if st.GetState() != batonv1.JobState_JOB_STATE_QUEUED || st.GetAttempt() != 2 || st.GetRunId() == "" || st.GetRunId() == id ||
			len(st.GetAttempts()) != 1 || st.GetAttempts()[0].GetRunId() != id || st.GetAttempts()[0].GetExitCode() != 3 || st.GetAttempts()[0].GetStdoutBytes() != 5 {
			t.Fatalf("after attempt 1 failed: %v", st)
		}
		if d := st.GetNotBefore().AsTime().Sub(st.GetAttempts()[0].GetEndedAt().AsTime()); d < 59*time.Second || d > 61*time.Second {
			t.Errorf("attempt 2 waits %v after attempt 1's end, want the 1m backoff", d)
		}
		if ends := log.take(); len(ends) != 1 || !ends[0].Retried {
			t.Errorf("ends reported: %+v, want one, retried", ends)
		}
		// A late report about attempt 1 changes nothing.
		if err := s.ApplyWorkerReport(ctx, "w1", id, failed(9)); err == nil {
			t.Error("a report naming the first attempt's id was applied to the job")
		}
		run := st.GetRunId()
		if _, err := s.AssignJob(ctx, id, "w2"); err != nil {
			t.Fatal(err)
		}
		if err := s.ApplyWorkerReport(ctx, "w2", run, failed(4)); err != nil {
			t.Fatal(err)
		}
		final := mustGetJob(t, ctx, s, id).Status
		if final.GetState() != batonv1.JobState_JOB_STATE_FAILED || final.GetExitCode() != 4 || final.GetAttempt() != 2 || final.GetWorkerId() != "w2" {
			t.Errorf("after the last attempt failed: %v", final)
		}
		if ends := log.take(); len(ends) != 1 || ends[0].Retried || ends[0].State != batonv1.JobState_JOB_STATE_FAILED {
			t.Errorf("ends reported: %+v, want the job's end", ends)
		}

		stopped := retryJob(t, s, 2, 5)
		if err := s.RequestStop(ctx, stopped, "alice"); err != nil {
			t.Fatal(err)
		}
		if err := s.ApplyWorkerReport(ctx, "w1", stopped, failed(3)); err != nil {
			t.Fatal(err)
		}
		if st := mustGetJob(t, ctx, s, stopped).Status; st.GetState() != batonv1.JobState_JOB_STATE_FAILED || st.GetAttempt() > 1 {
			t.Errorf("an attempt that ended while a stop was asked for: %v at attempt %d, want its end final", st.GetState(), st.GetAttempt())
		}

		lost := retryJob(t, s, 3, 2)
		if _, err := s.MarkWorkerJobsLost(ctx, "w1", "worker down", time.Now()); err != nil {
			t.Fatal(err)
		}
		if st := mustGetJob(t, ctx, s, lost).Status; st.GetState() != batonv1.JobState_JOB_STATE_QUEUED || st.GetAttempts()[0].GetState() != batonv1.JobState_JOB_STATE_LOST {
			t.Errorf("a LOST attempt with lost retried: %v", st)
		}
	})
}

// endLogFull records the job ends a store reports, whole.
type endLogFull struct{ ends []store.JobEnd }

func (l *endLogFull) add(e store.JobEnd) { l.ends = append(l.ends, e) }

func (l *endLogFull) take() []store.JobEnd {
	out := l.ends
	l.ends = nil
	return out
}
