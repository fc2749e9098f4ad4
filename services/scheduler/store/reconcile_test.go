package store_test

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

func TestApplyWorkerReport(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
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
			{name: "lost job reported pending", first: batonv1.JobState_JOB_STATE_LOST, report: &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_PENDING}, wantState: batonv1.JobState_JOB_STATE_LOST, wantEnded: true},
			{name: "lost job reported without a state", first: batonv1.JobState_JOB_STATE_LOST, report: &batonv1.JobStatus{}, wantState: batonv1.JobState_JOB_STATE_LOST, wantEnded: true},
			{name: "lost job with its true end", first: batonv1.JobState_JOB_STATE_LOST, report: succeeded, wantState: batonv1.JobState_JOB_STATE_SUCCEEDED, wantEnded: true},
			{name: "running job ends", first: batonv1.JobState_JOB_STATE_RUNNING, report: succeeded, wantState: batonv1.JobState_JOB_STATE_SUCCEEDED, wantEnded: true},
			{name: "stopped stays stopped", first: batonv1.JobState_JOB_STATE_STOPPED, report: running, wantState: batonv1.JobState_JOB_STATE_STOPPED, wantEnded: true},
			{name: "succeeded stays succeeded", first: batonv1.JobState_JOB_STATE_SUCCEEDED, report: running, wantState: batonv1.JobState_JOB_STATE_SUCCEEDED, wantEnded: true},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				s, _ := b.open(t)
				j := newJob(1, "w1", "alice")
				mustCreateJob(t, t.Context(), s, j)
				if err := s.UpdateJobStatus(t.Context(), j.ID, &batonv1.JobStatus{State: tc.first, Pid: 77}); err != nil {
					t.Fatal(err)
				}
				if err := s.ApplyWorkerReport(t.Context(), "w1", j.ID, tc.report); err != nil {
					t.Fatalf("ApplyWorkerReport: %v", err)
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
	})
}

func TestApplyWorkerReportNotFound(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		err := s.ApplyWorkerReport(t.Context(), "w1", jobID(1), &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING})
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("ApplyWorkerReport(missing) = %v, want ErrNotFound", err)
		}
	})
}

// A worker's report changes only what a worker knows, only on its own
// jobs, and only forward in the job's life.
func TestApplyWorkerReportScope(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		j := newJob(1, "w1", "alice")
		j.Status = &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_PENDING, Spec: &batonv1.JobSpec{Command: "sh", Path: "real.sh"}}
		mustCreateJob(t, t.Context(), s, j)

		forged := &batonv1.JobStatus{
			JobId: j.ID, WorkerId: "w2", Owner: "user/mallory", GroupId: "g-forged",
			State: batonv1.JobState_JOB_STATE_SUCCEEDED, ExitCode: new(int32(0)), Reason: "forged by w2",
			Spec: &batonv1.JobSpec{Command: "sh", Path: "forged.sh"}, CreatedAt: timestamppb.New(epoch.Add(-time.Hour)),
		}
		if err := s.ApplyWorkerReport(t.Context(), "w2", j.ID, forged); !errors.Is(err, store.ErrNotOnWorker) {
			t.Errorf("a report from another worker = %v, want ErrNotOnWorker", err)
		}
		if got := mustGetJob(t, t.Context(), s, j.ID); got.Status.GetState() != batonv1.JobState_JOB_STATE_PENDING {
			t.Fatalf("another worker's report moved the job to %v", got.Status.GetState())
		}

		// Its own worker: the state moves, the identity does not.
		running := proto.CloneOf(forged)
		running.State, running.Pid, running.ExitCode, running.Reason = batonv1.JobState_JOB_STATE_RUNNING, 42, nil, ""
		if err := s.ApplyWorkerReport(t.Context(), "w1", j.ID, running); err != nil {
			t.Fatal(err)
		}
		got := mustGetJob(t, t.Context(), s, j.ID).Status
		if got.GetState() != batonv1.JobState_JOB_STATE_RUNNING || got.GetPid() != 42 {
			t.Errorf("after its worker's report: %v pid %d, want RUNNING pid 42", got.GetState(), got.GetPid())
		}
		if got.GetOwner() != "alice" || got.GetWorkerId() != "w1" || got.GetGroupId() != "" || got.GetSpec().GetPath() != "real.sh" || !got.GetCreatedAt().AsTime().Equal(j.CreatedAt) {
			t.Errorf("a report changed the job's identity: owner %q worker %q group %q spec %v created %v",
				got.GetOwner(), got.GetWorkerId(), got.GetGroupId(), got.GetSpec(), got.GetCreatedAt().AsTime())
		}

		// Backward is ignored: a late PENDING after RUNNING.
		if err := s.ApplyWorkerReport(t.Context(), "w1", j.ID, &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_PENDING}); err != nil {
			t.Fatal(err)
		}
		if got := mustGetJob(t, t.Context(), s, j.ID).Status; got.GetState() != batonv1.JobState_JOB_STATE_RUNNING || got.GetPid() != 42 {
			t.Errorf("a backward report moved the job to %v pid %d", got.GetState(), got.GetPid())
		}
	})
}

func TestDeleteJob(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
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
	})
}

// TestApplyWorkerReportClipsText: a worker cannot fill the store, or every
// listing, with one job's reason or other words.
func TestApplyWorkerReportClipsText(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		j := newJob(1, "w1", "alice")
		mustCreateJob(t, t.Context(), s, j)
		huge := strings.Repeat("é", 1<<19) // 1 MiB of two-byte characters
		if err := s.ApplyWorkerReport(t.Context(), "w1", j.ID, &batonv1.JobStatus{
			State: batonv1.JobState_JOB_STATE_FAILED, Reason: huge, StoppedBy: huge, Signal: huge, Containment: huge, RunAs: huge,
		}); err != nil {
			t.Fatal(err)
		}
		got := mustGetJob(t, t.Context(), s, j.ID).Status
		if len(got.GetReason()) > 1024 || len(got.GetStoppedBy()) > 128 || len(got.GetSignal()) > 128 ||
			len(got.GetContainment()) > 128 || len(got.GetRunAs()) > 128 || got.GetReason() == "" {
			t.Errorf("stored %d, %d, %d, %d, %d bytes; want the reason within 1 KiB and the rest within 128 bytes",
				len(got.GetReason()), len(got.GetStoppedBy()), len(got.GetSignal()), len(got.GetContainment()), len(got.GetRunAs()))
		}
		if !utf8.ValidString(got.GetReason()) {
			t.Error("the clipped reason is not valid UTF-8")
		}
	})
}

// TestApplyWorkerReportKeepsUsage: what a job cost, as its worker
// reports it at the end, is stored with the job's status; a usage that
// makes no sense is dropped.
func TestApplyWorkerReportKeepsUsage(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		good := &batonv1.JobUsage{
			CpuUser: durationpb.New(time.Second), CpuSystem: durationpb.New(20 * time.Millisecond),
			PeakMemoryBytes: 100 << 20, Wall: durationpb.New(1500 * time.Millisecond), Source: "cgroup",
		}
		tests := []struct {
			name  string
			usage *batonv1.JobUsage
			want  *batonv1.JobUsage
		}{
			{"measured", good, good},
			{"none", nil, nil},
			{"negative cpu", &batonv1.JobUsage{CpuUser: durationpb.New(-time.Second), Source: "cgroup"}, nil},
			{"negative memory", &batonv1.JobUsage{PeakMemoryBytes: -1, Source: "rusage"}, nil},
			{"unknown source", &batonv1.JobUsage{PeakMemoryBytes: 1, Source: strings.Repeat("x", 1<<10)}, nil},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				s, _ := b.open(t)
				j := newJob(1, "w1", "alice")
				mustCreateJob(t, t.Context(), s, j)
				end := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_SUCCEEDED, ExitCode: new(int32(0)),
					EndedAt: timestamppb.New(epoch.Add(time.Hour)), Usage: tc.usage}
				if err := s.ApplyWorkerReport(t.Context(), "w1", j.ID, end); err != nil {
					t.Fatal(err)
				}
				if got := mustGetJob(t, t.Context(), s, j.ID).Status.GetUsage(); !proto.Equal(got, tc.want) {
					t.Errorf("stored usage %v, want %v", got, tc.want)
				}
			})
		}
	})
}
