package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// epoch is the creation time of the first test job; later jobs are created
// a millisecond apart, so their ids and creation times sort alike.
var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// openStore opens a store in a fresh directory, closed when the test ends.
func openStore(tb testing.TB) (*store.SQLite, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "scheduler.db")
	s, err := store.Open(tb.Context(), path)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return s, path
}

// jobID returns the id of the i-th test job; ids sort by i.
func jobID(i int) string { return fmt.Sprintf("0190a000-0000-7000-8000-%012d", i) }

// newJob returns the i-th test job: RUNNING on worker, created i
// milliseconds after epoch.
func newJob(i int, worker, owner string) store.Job {
	created := epoch.Add(time.Duration(i) * time.Millisecond)
	return store.Job{
		ID:        jobID(i),
		WorkerID:  worker,
		Owner:     owner,
		CreatedAt: created,
		Status: &batonv1.JobStatus{
			State:     batonv1.JobState_JOB_STATE_RUNNING,
			Pid:       int32(1000 + i),
			StartedAt: timestamppb.New(created.Add(time.Millisecond)),
			Spec: &batonv1.JobSpec{
				Command: "bash",
				Path:    "count.sh",
				Args:    []string{"3"},
				Env:     map[string]string{"N": "3"},
				Timeout: durationpb.New(time.Minute),
				Labels:  map[string]string{"team": "infra"},
			},
		},
	}
}

// terminal returns a copy of j's status in state, ended at end.
func terminal(j store.Job, state batonv1.JobState, end time.Time) *batonv1.JobStatus {
	return &batonv1.JobStatus{
		State:    state,
		Pid:      j.Status.GetPid(),
		ExitCode: new(int32(3)),
		Reason:   "exited with code 3",
		EndedAt:  timestamppb.New(end),
	}
}

func mustCreateJob(tb testing.TB, ctx context.Context, s store.Store, j store.Job) {
	tb.Helper()
	if err := s.CreateJob(ctx, j); err != nil {
		tb.Fatalf("CreateJob(%s): %v", j.ID, err)
	}
}

func mustGetJob(tb testing.TB, ctx context.Context, s store.Store, id string) store.Job {
	tb.Helper()
	j, err := s.GetJob(ctx, id)
	if err != nil {
		tb.Fatalf("GetJob(%s): %v", id, err)
	}
	return j
}

// ids returns the ids of jobs, in order.
func ids(jobs []store.Job) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}
