package store_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// endLog records the job ends a store reports.
type endLog struct {
	mu   sync.Mutex
	ends []batonv1.JobState
}

func (l *endLog) add(e store.JobEnd) {
	l.mu.Lock()
	l.ends = append(l.ends, e.State)
	l.mu.Unlock()
}

func (l *endLog) take() []batonv1.JobState {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.ends
	l.ends = nil
	return out
}

// TestObserveJobEnds checks that each write that ends a job is reported
// once, whichever call (and however many times) records the end.
func TestObserveJobEnds(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		const (
			running   = batonv1.JobState_JOB_STATE_RUNNING
			succeeded = batonv1.JobState_JOB_STATE_SUCCEEDED
			stopped   = batonv1.JobState_JOB_STATE_STOPPED
			lost      = batonv1.JobState_JOB_STATE_LOST
		)
		type write struct {
			state     batonv1.JobState
			reconcile bool
		}
		tests := []struct {
			name   string
			writes []write
			want   []batonv1.JobState
		}{
			{name: "end reported by stop, query and heartbeat", writes: []write{{stopped, false}, {stopped, true}, {stopped, true}}, want: []batonv1.JobState{stopped}},
			{name: "still running", writes: []write{{running, true}, {running, false}}, want: nil},
			{name: "lost, then its true end", writes: []write{{lost, false}, {succeeded, true}}, want: []batonv1.JobState{lost, succeeded}},
			{name: "lost twice", writes: []write{{lost, false}, {lost, true}}, want: []batonv1.JobState{lost}},
			{name: "lost, revived, then ends", writes: []write{{lost, false}, {running, true}, {succeeded, true}}, want: []batonv1.JobState{lost, succeeded}},
			{name: "update cannot revive", writes: []write{{succeeded, false}, {stopped, false}, {lost, true}}, want: []batonv1.JobState{succeeded}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				s, _ := b.open(t)
				var log endLog
				s.ObserveJobEnds(log.add)
				j := newJob(1, "w1", "alice")
				mustCreateJob(t, t.Context(), s, j)
				for _, w := range tc.writes {
					update := s.UpdateJobStatus
					if w.reconcile {
						update = func(ctx context.Context, id string, st *batonv1.JobStatus) error {
							return s.ApplyWorkerReport(ctx, j.WorkerID, id, st)
						}
					}
					if err := update(t.Context(), j.ID, terminal(j, w.state, epoch.Add(time.Hour))); err != nil {
						t.Fatal(err)
					}
				}
				if got := log.take(); !slices.Equal(got, tc.want) {
					t.Errorf("ends reported = %v, want %v", got, tc.want)
				}
			})
		}
	})
}

func TestObserveJobEndsMarkWorkerJobsLost(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		var log endLog
		s.ObserveJobEnds(log.add)
		for i := range 3 {
			mustCreateJob(t, t.Context(), s, newJob(i, "w1", "alice"))
		}
		mustCreateJob(t, t.Context(), s, newJob(3, "w2", "alice"))
		if err := s.UpdateJobStatus(t.Context(), jobID(0), terminal(newJob(0, "w1", "alice"), batonv1.JobState_JOB_STATE_SUCCEEDED, epoch)); err != nil {
			t.Fatal(err)
		}
		log.take()
		n, err := s.MarkWorkerJobsLost(t.Context(), "w1", "worker down", epoch)
		if err != nil {
			t.Fatal(err)
		}
		want := []batonv1.JobState{batonv1.JobState_JOB_STATE_LOST, batonv1.JobState_JOB_STATE_LOST}
		if got := log.take(); n != 2 || !slices.Equal(got, want) {
			t.Errorf("MarkWorkerJobsLost moved %d jobs and reported %v, want 2 and %v", n, got, want)
		}
	})
}
