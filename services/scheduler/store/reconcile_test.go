package store_test

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

func TestReconcileJobStatus(t *testing.T) {
	t.Parallel()
	end := epoch.Add(time.Hour)
	running := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 77}
	succeeded := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_SUCCEEDED, Pid: 77, ExitCode: new(int32(0)), EndedAt: timestamppb.New(end)}
	tests := []struct {
		name      string
		first     batonv1.JobState
		report    *batonv1.JobStatus
		wantState batonv1.JobState
		wantEnded bool
	}{
		{name: "lost job still running", first: batonv1.JobState_JOB_STATE_LOST, report: running, wantState: batonv1.JobState_JOB_STATE_RUNNING},
		{name: "lost job with its true end", first: batonv1.JobState_JOB_STATE_LOST, report: succeeded, wantState: batonv1.JobState_JOB_STATE_SUCCEEDED, wantEnded: true},
		{name: "running job ends", first: batonv1.JobState_JOB_STATE_RUNNING, report: succeeded, wantState: batonv1.JobState_JOB_STATE_SUCCEEDED, wantEnded: true},
		{name: "stopped stays stopped", first: batonv1.JobState_JOB_STATE_STOPPED, report: running, wantState: batonv1.JobState_JOB_STATE_STOPPED, wantEnded: true},
		{name: "succeeded stays succeeded", first: batonv1.JobState_JOB_STATE_SUCCEEDED, report: running, wantState: batonv1.JobState_JOB_STATE_SUCCEEDED, wantEnded: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, _ := openStore(t)
			j := newJob(1, "w1", "alice")
			mustCreateJob(t, t.Context(), s, j)
			if err := s.UpdateJobStatus(t.Context(), j.ID, &batonv1.JobStatus{State: tc.first, Pid: 77}); err != nil {
				t.Fatal(err)
			}
			if err := s.ReconcileJobStatus(t.Context(), j.ID, tc.report); err != nil {
				t.Fatalf("ReconcileJobStatus: %v", err)
			}
			got := mustGetJob(t, t.Context(), s, j.ID)
			if got.Status.GetState() != tc.wantState {
				t.Errorf("state = %v, want %v", got.Status.GetState(), tc.wantState)
			}
			if (got.Status.GetEndedAt() != nil) != tc.wantEnded {
				t.Errorf("ended_at = %v, want set: %v", got.Status.GetEndedAt(), tc.wantEnded)
			}
			// A revived job is no longer history: it must not be pruned.
			n, err := s.PruneJobs(t.Context(), time.Now().Add(1000*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 1, false: 0}[tc.wantEnded]; n != want {
				t.Errorf("PruneJobs deleted %d jobs, want %d", n, want)
			}
		})
	}
}

func TestReconcileJobStatusNotFound(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	err := s.ReconcileJobStatus(t.Context(), jobID(1), &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING})
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ReconcileJobStatus(missing) = %v, want ErrNotFound", err)
	}
}

func TestDeleteJob(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	j := newJob(1, "w1", "alice")
	j.IdempotencyKey = "key-1"
	mustCreateJob(t, t.Context(), s, j)
	if err := s.DeleteJob(t.Context(), j.ID); err != nil {
		t.Fatalf("DeleteJob: %v", err)
	}
	if _, err := s.GetJob(t.Context(), j.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetJob after delete = %v, want ErrNotFound", err)
	}
	if err := s.DeleteJob(t.Context(), j.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteJob = %v, want ErrNotFound", err)
	}
	// The idempotency key is free again.
	mustCreateJob(t, t.Context(), s, newJob(2, "w1", "alice"))
	k := newJob(3, "w1", "alice")
	k.IdempotencyKey = "key-1"
	mustCreateJob(t, t.Context(), s, k)
}
