package scheduler_test

import (
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
)

// TestPendingLeftByACrashIsSettled: a scheduler killed between recording a
// start (PENDING) and hearing the worker's answer leaves a PENDING job
// behind, which nothing used to settle while the worker stayed healthy.
// After the restart, the worker's registration settles both kinds: the
// start the worker did run becomes RUNNING (and can be stopped), the one it
// never received ends LOST with the reason, and a retry with its key
// returns that settled job instead of a PENDING one forever.
func TestPendingLeftByACrashIsSettled(t *testing.T) {
	t.Parallel()
	marker := uniqueMarker("pending")
	t.Cleanup(func() { killMarked(marker) })
	tune := func(o *scheduler.Options) { o.FailoverGrace = time.Minute }
	s1 := startScheduler(t, "", tune)
	w1 := startWorker(t, "w1", s1, nil)
	waitWorkers(t, s1.client, stateReady, "w1")
	s1.kill()

	// What the killed scheduler left: two PENDING records, one of which
	// reached the worker before the crash.
	ran, never, scripted := uuid.Must(uuid.NewV7()).String(), uuid.Must(uuid.NewV7()).String(), uuid.Must(uuid.NewV7()).String()
	st, err := store.Open(t.Context(), s1.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	spec := &batonv1.JobSpec{Command: "bash", Args: []string{"-c", "exec -a " + marker + " sleep 100"}}
	for _, j := range []store.Job{
		{ID: ran, WorkerID: "w1", Owner: "anonymous", Status: &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_PENDING, Spec: spec}},
		{ID: never, WorkerID: "w1", Owner: "anonymous", IdempotencyKey: "key-" + marker, Status: &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_PENDING, Spec: spec}},
		// One sent with a script: the store keeps it until the job ends.
		{ID: scripted, WorkerID: "w1", Owner: "anonymous", Script: []byte("exec -a " + marker + " sleep 100\n"),
			Status: &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_PENDING, Spec: &batonv1.JobSpec{Command: "bash", ScriptName: "orphan.sh"}}},
	} {
		if err := st.CreateJob(t.Context(), j); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	hc := serving.NewHTTPClient(nil)
	t.Cleanup(hc.CloseIdleConnections)
	if _, err := batonv1connect.NewWorkerServiceClient(hc, w1.url).StartJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{
		JobId: ran, Command: "bash", Args: spec.GetArgs(), Owner: "anonymous",
	})); err != nil {
		t.Fatal(err)
	}

	s2 := startScheduler(t, s1.dbPath, tune)
	w1.sched.point(s2.client)
	// The one the worker never got is started now: a caller sending its
	// StartJob again with the key is answered with it, so it must run.
	waitFor(t, "both PENDING jobs to be settled", func() bool {
		return storedState(t, s2.client, "w1", ran) == batonv1.JobState_JOB_STATE_RUNNING &&
			storedState(t, s2.client, "w1", never) == batonv1.JobState_JOB_STATE_RUNNING &&
			storedState(t, s2.client, "w1", scripted) == batonv1.JobState_JOB_STATE_RUNNING
	})
	retry, err := s2.client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{
		Command: "bash", Args: spec.GetArgs(), IdempotencyKey: "key-" + marker,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if got := retry.Msg.GetJobs()[0]; got.GetJobId() != never || got.GetState() != batonv1.JobState_JOB_STATE_RUNNING {
		t.Errorf("a retry with the key answered %v, want the settled job %s, RUNNING", got, never)
	}
	if n := len(procsMarked(marker)); n != 3 {
		t.Errorf("%d processes run, want 3: each job once", n)
	}
	for _, id := range []string{ran, never, scripted} {
		stop, err := s2.client.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
		if err != nil || stop.Msg.GetStatus().GetState() != batonv1.JobState_JOB_STATE_STOPPED {
			t.Fatalf("StopJob on the settled job %s: %v %v", id, stop, err)
		}
	}
	waitFor(t, "the jobs' processes to end", func() bool { return len(procsMarked(marker)) == 0 })
}
