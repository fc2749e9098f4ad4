package store_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// queuedJob returns the i-th test job QUEUED at place, for worker pinned
// ("" for any).
func queuedJob(i int, owner string, place store.QueuePlace) store.Job {
	j := newJob(i, place.WorkerID, owner)
	j.Status.State = batonv1.JobState_JOB_STATE_QUEUED
	j.Status.Pid = 0
	j.Status.StartedAt = nil
	j.Status.Reason = "all 2 matching workers are full"
	j.Queue = &place
	return j
}

func TestQueueKeepsPlacesInOrderAndAcrossReopen(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, path := b.open(t)
		deadline := epoch.Add(time.Hour)
		places := []store.QueuePlace{
			{Priority: 50, Round: 2, Seq: 1},
			{Priority: 50, Round: 1, Seq: 2, WorkerID: "w2"},
			{Priority: 90, Round: 7, Seq: 3, Deadline: deadline},
			{Priority: 50, Round: 1, Seq: 4},
		}
		for i, p := range places {
			mustCreateJob(t, ctx, s, queuedJob(i, "alice", p))
		}
		want := []string{jobID(2), jobID(1), jobID(3), jobID(0)}
		got, err := s.ListQueued(ctx)
		if err != nil {
			t.Fatalf("ListQueued: %v", err)
		}
		if !slices.Equal(ids(got), want) {
			t.Fatalf("ListQueued order = %v, want %v", ids(got), want)
		}
		if q := got[0].Queue; q == nil || !q.Deadline.Equal(deadline) || q.Priority != 90 || q.Round != 7 || q.Seq != 3 {
			t.Fatalf("place of job 2 = %+v, want priority 90 round 7 seq 3 deadline %v", got[0].Queue, deadline)
		}
		if q := got[1].Queue; q.WorkerID != "w2" || !q.Deadline.IsZero() {
			t.Fatalf("place of job 1 = %+v, want pinned to w2 without deadline", q)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s2, err := b.reopen(t, path)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		again, err := s2.ListQueued(ctx)
		if err != nil || !slices.Equal(ids(again), want) {
			t.Fatalf("after reopening, ListQueued = %v, %v; want %v", ids(again), err, want)
		}
	})
}

func TestQueueCreateNeedsAPlaceExactlyWhenQueued(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, _ := b.open(t)
		j := queuedJob(1, "alice", store.QueuePlace{Priority: 50})
		j.Queue = nil
		if err := s.CreateJob(ctx, j); err == nil {
			t.Fatal("CreateJob of a QUEUED job without a place succeeded")
		}
		r := newJob(2, "w1", "alice")
		r.Queue = &store.QueuePlace{Priority: 50}
		if err := s.CreateJob(ctx, r); err == nil {
			t.Fatal("CreateJob of a RUNNING job with a place succeeded")
		}
	})
}

func TestQueueAssignRequeueAndSettle(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, _ := b.open(t)
		mustCreateJob(t, ctx, s, queuedJob(1, "alice", store.QueuePlace{Priority: 50, Seq: 1}))
		mustCreateJob(t, ctx, s, queuedJob(2, "alice", store.QueuePlace{Priority: 50, Seq: 2, WorkerID: "w2"}))

		if _, err := s.AssignJob(ctx, jobID(2), "w1"); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("AssignJob of a job queued for w2 to w1 = %v, want ErrConflict", err)
		}
		if _, err := s.AssignJob(ctx, jobID(9), "w1"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("AssignJob of an unknown job = %v, want ErrNotFound", err)
		}
		if _, err := s.RequeueJob(ctx, jobID(1)); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("RequeueJob of a QUEUED job = %v, want ErrConflict", err)
		}
		j, err := s.AssignJob(ctx, jobID(1), "w1")
		if err != nil {
			t.Fatalf("AssignJob: %v", err)
		}
		if j.WorkerID != "w1" || j.Status.GetState() != batonv1.JobState_JOB_STATE_PENDING || j.Status.GetWorkerId() != "w1" {
			t.Fatalf("assigned job = worker %q state %v", j.WorkerID, j.Status.GetState())
		}
		if _, err := s.AssignJob(ctx, jobID(1), "w1"); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("second AssignJob = %v, want ErrConflict: a job is handed out once", err)
		}
		// Handed out, it keeps its place until its start is settled.
		if q, _ := s.ListQueued(ctx); len(q) != 2 {
			t.Fatalf("ListQueued after AssignJob has %d jobs, want 2", len(q))
		}
		requeued, err := s.RequeueJob(ctx, jobID(1))
		if err != nil {
			t.Fatalf("RequeueJob: %v", err)
		}
		if q := requeued.Queue; q == nil || q.Seq != 1 || q.Priority != 50 {
			t.Fatalf("RequeueJob's job has place %+v, want its own (seq 1, priority 50)", q)
		}
		back := mustGetJob(t, ctx, s, jobID(1))
		if back.WorkerID != "" || back.Status.GetState() != batonv1.JobState_JOB_STATE_QUEUED {
			t.Fatalf("requeued job = worker %q state %v, want no worker, QUEUED", back.WorkerID, back.Status.GetState())
		}
		if _, err := s.AssignJob(ctx, jobID(1), "w3"); err != nil {
			t.Fatalf("AssignJob after requeue: %v", err)
		}
		running := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 42, StartedAt: timestamppb.Now()}
		if err := s.ApplyWorkerReport(ctx, "w3", jobID(1), running); err != nil {
			t.Fatalf("ApplyWorkerReport: %v", err)
		}
		q, err := s.ListQueued(ctx)
		if err != nil || !slices.Equal(ids(q), []string{jobID(2)}) {
			t.Fatalf("ListQueued after the start = %v, %v; want only job 2", ids(q), err)
		}
		if _, err := s.RequeueJob(ctx, jobID(1)); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("RequeueJob of a running job = %v, want ErrConflict", err)
		}
	})
}

func TestQueuedJobIsNotOnItsWorkerYet(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, _ := b.open(t)
		mustCreateJob(t, ctx, s, queuedJob(1, "alice", store.QueuePlace{Priority: 50, Seq: 1, WorkerID: "w1"}))
		mustCreateJob(t, ctx, s, newJob(2, "w1", "alice"))

		// The worker's own word about a job it was never given changes nothing.
		fake := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 7}
		if err := s.ApplyWorkerReport(ctx, "w1", jobID(1), fake); err != nil {
			t.Fatalf("ApplyWorkerReport: %v", err)
		}
		if st := mustGetJob(t, ctx, s, jobID(1)).Status.GetState(); st != batonv1.JobState_JOB_STATE_QUEUED {
			t.Fatalf("a worker's report moved a queued job to %v", st)
		}
		on, err := s.JobsOnWorker(ctx, "w1", true)
		if err != nil || !slices.Equal(ids(on), []string{jobID(2)}) {
			t.Fatalf("JobsOnWorker(w1, running) = %v, %v; want only job 2", ids(on), err)
		}
		n, err := s.MarkWorkerJobsLost(ctx, "w1", "worker down", time.Now())
		if err != nil || n != 1 {
			t.Fatalf("MarkWorkerJobsLost = %d, %v; want 1", n, err)
		}
		if st := mustGetJob(t, ctx, s, jobID(1)).Status.GetState(); st != batonv1.JobState_JOB_STATE_QUEUED {
			t.Fatalf("a queued job became %v when its worker went down; it waits for the worker", st)
		}
		// Ending it (a stop, a queue timeout) takes it out of the queue.
		stopped := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_STOPPED, StoppedBy: "alice", Reason: "stopped while queued"}
		if err := s.UpdateJobStatus(ctx, jobID(1), stopped); err != nil {
			t.Fatalf("UpdateJobStatus: %v", err)
		}
		if q, _ := s.ListQueued(ctx); len(q) != 0 {
			t.Fatalf("ListQueued after the stop = %v, want none", ids(q))
		}
	})
}

func TestQueuePlaceOfALostStartGoesWithIt(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, _ := b.open(t)
		mustCreateJob(t, ctx, s, queuedJob(1, "alice", store.QueuePlace{Priority: 50, Seq: 1}))
		if _, err := s.AssignJob(ctx, jobID(1), "w1"); err != nil {
			t.Fatal(err)
		}
		if n, err := s.MarkWorkerJobsLost(ctx, "w1", "worker down", time.Now()); err != nil || n != 1 {
			t.Fatalf("MarkWorkerJobsLost = %d, %v; want 1", n, err)
		}
		if q, _ := s.ListQueued(ctx); len(q) != 0 {
			t.Fatalf("ListQueued after the worker went down = %v, want none", ids(q))
		}
	})
}
