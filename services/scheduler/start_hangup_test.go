package scheduler_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
)

// lateCreate applies each job write, then keeps the call a moment: a
// caller that hangs up meanwhile is told its write failed though it was
// applied, as an etcd transaction can be.
type lateCreate struct{ store.Store }

func (s lateCreate) CreateJob(ctx context.Context, j store.Job) error {
	if err := s.Store.CreateJob(context.WithoutCancel(ctx), j); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(300 * time.Millisecond):
		return nil
	}
}

// TestStartHangUpLeavesNoPendingJob: a client that hangs up while its
// StartJob is being recorded leaves no job PENDING for ever. The job is
// carried through: started, or removed when its worker never got it.
func TestStartHangUpLeavesNoPendingJob(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", func(o *scheduler.Options) { o.Store = lateCreate{o.Store} })
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := sched.client.StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{Command: "true", WorkerId: "w1"})); err == nil {
		t.Fatal("StartJob answered within 100ms though its job's write takes 300ms")
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		jobs, _, err := sched.store.ListJobs(t.Context(), store.JobFilter{States: []batonv1.JobState{batonv1.JobState_JOB_STATE_PENDING}})
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is still PENDING %s after its caller hung up", jobs[0].ID, waitTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
