package store_test

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// TestScriptIsKeptUntilTheJobEnds: a job's script is kept across a reopen
// and every hand-out (AssignJob returns it, again after a requeue), while
// the job runs (a retry is sent it again), and is gone once the job ends,
// having run or not.
func TestScriptIsKeptUntilTheJobEnds(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, path := b.open(t)
		script := bytes.Repeat([]byte("echo hi\n"), 128<<10) // 1 MiB
		for i := 1; i <= 2; i++ {
			j := queuedJob(i, "alice", store.QueuePlace{Priority: 50, Seq: int64(i)})
			j.Script = script
			mustCreateJob(t, ctx, s, j)
		}
		running := newJob(3, "w1", "alice")
		running.Script = script
		mustCreateJob(t, ctx, s, running)
		if n, err := s.ScriptsKept(ctx); n != 3 || err != nil {
			t.Fatalf("scripts kept after creating two queued jobs and a running one: %d, %v", n, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s, err := b.reopen(t, path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		j, err := s.AssignJob(ctx, jobID(1), "w1")
		if err != nil || !bytes.Equal(j.Script, script) {
			t.Fatalf("AssignJob after a reopen: %d bytes of script, %v", len(j.Script), err)
		}
		if got := mustGetJob(t, ctx, s, jobID(1)); got.Script != nil {
			t.Errorf("GetJob reads the script (%d bytes)", len(got.Script))
		}
		if got, err := s.JobScript(ctx, jobID(3)); err != nil || !bytes.Equal(got, script) {
			t.Errorf("JobScript of a running job: %d bytes, %v", len(got), err)
		}
		if _, err := s.RequeueJob(ctx, jobID(1)); err != nil {
			t.Fatal(err)
		}
		if j, err = s.AssignJob(ctx, jobID(1), "w2"); err != nil || !bytes.Equal(j.Script, script) {
			t.Fatalf("AssignJob after a requeue: %d bytes of script, %v", len(j.Script), err)
		}
		if err := s.ApplyWorkerReport(ctx, "w2", jobID(1), &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 7, StartedAt: timestamppb.Now()}); err != nil {
			t.Fatal(err)
		}
		if n, err := s.ScriptsKept(ctx); n != 3 || err != nil {
			t.Fatalf("scripts kept while the jobs have not ended: %d, %v; want 3", n, err)
		}
		stopped := mustGetJob(t, ctx, s, jobID(2)).Status
		stopped.State = batonv1.JobState_JOB_STATE_STOPPED
		if err := s.UpdateJobStatus(ctx, jobID(2), stopped); err != nil {
			t.Fatal(err)
		}
		if err := s.ApplyWorkerReport(ctx, "w2", jobID(1), &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_SUCCEEDED, ExitCode: new(int32(0)), EndedAt: timestamppb.Now()}); err != nil {
			t.Fatal(err)
		}
		if n, err := s.ScriptsKept(ctx); n != 1 || err != nil {
			t.Fatalf("scripts kept once two jobs ended: %d, %v; want 1", n, err)
		}
		if _, err := s.MarkWorkerJobsLost(ctx, "w1", "worker down", timestamppb.Now().AsTime()); err != nil {
			t.Fatal(err)
		}
		if n, err := s.ScriptsKept(ctx); n != 0 || err != nil {
			t.Fatalf("scripts kept once every job ended: %d, %v; want 0", n, err)
		}
		if got, err := s.JobScript(ctx, jobID(3)); err != nil || got != nil {
			t.Errorf("JobScript of an ended job: %d bytes, %v; want none", len(got), err)
		}
	})
}
