package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestForgedWorkerReports plays a worker that lies: with worker w2's own
// certificate it reports on a job the scheduler placed on w1, invents a
// job owned by alice, and registers with w1's job in its table. None of it
// may change what alice sees, and her stop must still reach her process.
func TestForgedWorkerReports(t *testing.T) {
	bin := e2e.SharedBaton(t)
	certs := filepath.Join(t.TempDir(), "certs")
	issueCerts(t, bin, certs, "e2e", "scheduler", "worker/w1", "worker/w2", "user/alice", "admin/root")
	sc := newSecureCluster(t, bin, certs, "w1", "w2")
	ctx := t.Context()
	alice, w2 := sc.client("user-alice"), sc.client("worker-w2")

	marker := sc.marker + "-forged"
	started, err := alice.StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{
		WorkerId: "w1", Command: "bash", Args: []string{"-c", "exec -a " + marker + " sleep 100"},
	}))
	if err != nil {
		t.Fatalf("alice StartJob: %v", err)
	}
	job := started.Msg.GetJobId()
	for deadline := time.Now().Add(30 * time.Second); !e2e.ProcessWithArg0(marker); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("alice's job %s never ran", job)
		}
	}
	forgedEnd := &batonv1.JobStatus{
		JobId: job, WorkerId: "w2", Owner: "user/mallory", State: batonv1.JobState_JOB_STATE_SUCCEEDED,
		ExitCode: new(int32(0)), Reason: "forged by w2", Spec: &batonv1.JobSpec{Command: "bash", Path: "forged.sh"},
	}
	invented := uuid.NewString()

	// Each forgery is answered as a heartbeat or registration is (the
	// worker is who it says it is), but changes nothing it does not own.
	if _, err := w2.Heartbeat(ctx, connect.NewRequest(&batonv1.HeartbeatRequest{WorkerId: "w2", Changes: []*batonv1.JobStatus{forgedEnd}})); err != nil {
		t.Errorf("w2's heartbeat about w1's job: %v", err)
	}
	if _, err := w2.Heartbeat(ctx, connect.NewRequest(&batonv1.HeartbeatRequest{WorkerId: "w2", Changes: []*batonv1.JobStatus{{
		JobId: invented, Owner: "user/alice", State: batonv1.JobState_JOB_STATE_RUNNING, Spec: &batonv1.JobSpec{Command: "bash"},
	}}})); err != nil {
		t.Errorf("w2's heartbeat inventing a job: %v", err)
	}
	failed := &batonv1.JobStatus{JobId: job, State: batonv1.JobState_JOB_STATE_FAILED, ExitCode: new(int32(1)), Reason: "forged registration"}
	if _, err := w2.RegisterWorker(ctx, connect.NewRequest(&batonv1.RegisterWorkerRequest{
		Name: "w2", Address: sc.workers["w2"].addr, Jobs: []*batonv1.JobStatus{failed},
	})); err != nil {
		t.Errorf("w2's registration with w1's job: %v", err)
	}

	q, err := alice.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: job}))
	if err != nil {
		t.Fatalf("alice QueryJob: %v", err)
	}
	if st := q.Msg.GetStatus(); st.GetState() != batonv1.JobState_JOB_STATE_RUNNING || st.GetWorkerId() != "w1" || st.GetOwner() != "user/alice" {
		t.Errorf("after the forgeries alice's job is %v on %q owned by %q (%q), want RUNNING on w1, hers", st.GetState(), st.GetWorkerId(), st.GetOwner(), st.GetReason())
	}
	list, err := alice.ListJobs(ctx, connect.NewRequest(&batonv1.ListJobsRequest{}))
	if err != nil {
		t.Fatalf("alice ListJobs: %v", err)
	}
	for _, j := range list.Msg.GetJobs() {
		switch j.GetJobId() {
		case job:
			if j.GetState() != batonv1.JobState_JOB_STATE_RUNNING {
				t.Errorf("the store holds alice's job as %v (%q), want RUNNING", j.GetState(), j.GetReason())
			}
		case invented:
			t.Errorf("a job w2 invented is listed as alice's: %v", j)
		}
	}
	_, err = alice.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: invented}))
	wantCode(t, "alice QueryJob of the invented job", err, connect.CodeNotFound)

	// Her stop reaches the real process.
	stop, err := alice.StopJob(ctx, connect.NewRequest(&batonv1.StopJobRequest{JobId: job}))
	if err != nil {
		t.Fatalf("alice StopJob: %v", err)
	}
	if st := stop.Msg.GetStatus(); st.GetState() != batonv1.JobState_JOB_STATE_STOPPED || st.GetStoppedBy() != "user/alice" {
		t.Errorf("alice StopJob answered %v by %q, want STOPPED by user/alice", st.GetState(), st.GetStoppedBy())
	}
	if left := waitNoMarked(marker, 10*time.Second); len(left) > 0 {
		t.Errorf("alice's process %v runs on after her stop", left)
	}
	// The scheduler says what it ignored.
	logged, err := os.ReadFile(sc.sched.logPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(regexp.MustCompile(`ignored a worker's report about a job not placed on it[^\n]*w2`).FindAll(logged, -1)); n != 3 {
		t.Errorf("the scheduler's log records %d ignored reports from w2, want 3:\n%s", n, logged)
	}
}
