package scheduler_test

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler"
)

const stateRestarting = batonv1.WorkerState_WORKER_STATE_RESTARTING

// leaveForRestart cuts w off from the scheduler, as a stopped process is,
// and deregisters it for a restart as its Run would.
func leaveForRestart(t *testing.T, c batonv1connect.SchedulerServiceClient, w *testWorker) {
	t.Helper()
	w.sched.pause(true)
	if _, err := c.DeregisterWorker(t.Context(), connect.NewRequest(&batonv1.DeregisterWorkerRequest{WorkerId: w.name, Restarting: true})); err != nil {
		t.Fatalf("DeregisterWorker(%s, restarting): %v", w.name, err)
	}
}

// TestWorkerRestartKeepsJobs: a worker deregistered for a restart is
// RESTARTING: no job is placed on it, relays of its jobs end with
// Unavailable so that clients resume, and its running jobs stay RUNNING.
// When it registers again it is READY (DRAINING if it was) with its jobs
// as they were.
func TestWorkerRestartKeepsJobs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		drain bool
		back  batonv1.WorkerState
	}{
		{"ready", false, stateReady},
		{"draining", true, batonv1.WorkerState_WORKER_STATE_DRAINING},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Neither grace can pass while the test runs: what it sees
			// is the restart, never a DOWN.
			s := startScheduler(t, "", func(o *scheduler.Options) {
				o.HeartbeatInterval = 250 * time.Millisecond
				o.HeartbeatGrace = 2 * waitTimeout
				o.RestartGrace = 2 * waitTimeout
			})
			c := s.client
			w1 := startWorker(t, "w1", s, nil)
			startWorker(t, "w2", s, nil)
			waitWorkers(t, c, stateReady, "w1", "w2")
			id := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh"}).GetJobId()
			waitFor(t, "job RUNNING", func() bool { return storedState(t, c, "w1", id) == batonv1.JobState_JOB_STATE_RUNNING })
			if tc.drain {
				if _, err := c.DrainWorker(t.Context(), connect.NewRequest(&batonv1.DrainWorkerRequest{WorkerId: "w1"})); err != nil {
					t.Fatal(err)
				}
			}
			// A silent job's stream sends nothing, not even headers, so
			// the call itself blocks until the relay ends.
			streamEnd := make(chan error, 1)
			go func() {
				stream, err := c.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Follow: true}))
				if err != nil {
					streamEnd <- err
					return
				}
				defer stream.Close()
				for stream.Receive() {
				}
				streamEnd <- stream.Err()
			}()

			leaveForRestart(t, c, w1)
			if got := workerStates(t, c)["w1"]; got != stateRestarting {
				t.Fatalf("w1 after its restarting deregistration is %v, want RESTARTING", got)
			}
			select {
			case err := <-streamEnd:
				wantCode(t, "relayed stream of a restarting worker", err, connect.CodeUnavailable)
			case <-time.After(waitTimeout):
				t.Fatal("relayed stream still open after its worker left to restart")
			}
			for range 3 {
				if got := startJob(t, c, &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"}).GetJobs()[0].GetWorkerId(); got != "w2" {
					t.Errorf("placed on %q while w1 is restarting, want w2", got)
				}
			}
			_, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"}))
			wantCode(t, "StartJob on a restarting worker", err, connect.CodeUnavailable)
			if got := queryJob(t, c, id).GetStatus().GetState(); got != batonv1.JobState_JOB_STATE_RUNNING {
				t.Errorf("job of a restarting worker is %v, want RUNNING", got)
			}
			res, err := c.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{States: []batonv1.WorkerState{stateRestarting}}))
			if err != nil {
				t.Fatal(err)
			}
			if ws := res.Msg.GetWorkers(); len(ws) != 1 || ws[0].GetName() != "w1" || ws[0].GetRunningJobs() != 1 {
				t.Errorf("ListWorkers(RESTARTING) = %v, want w1 with its 1 running job", ws)
			}

			// Back: its heartbeat is told to register, and it does.
			w1.sched.pause(false)
			waitWorkers(t, c, tc.back, "w1")
			if got := storedState(t, c, "w1", id); got != batonv1.JobState_JOB_STATE_RUNNING {
				t.Errorf("job after its worker is back is %v, want RUNNING", got)
			}
			if _, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id})); err != nil {
				t.Errorf("StopJob after the restart: %v", err)
			}
		})
	}
}

// TestWorkerRestartGraceEnds: a restarting worker not back within the
// restart grace is DOWN and its running jobs LOST, with a reason that says
// so; coming back later still brings them back.
func TestWorkerRestartGraceEnds(t *testing.T) {
	t.Parallel()
	const grace = 300 * time.Millisecond
	s := startScheduler(t, "", func(o *scheduler.Options) {
		o.HeartbeatInterval = 250 * time.Millisecond
		o.HeartbeatGrace = 2 * waitTimeout
		o.RestartGrace = grace
	})
	c := s.client
	w1 := startWorker(t, "w1", s, nil)
	waitWorkers(t, c, stateReady, "w1")
	id := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh"}).GetJobId()
	waitFor(t, "job RUNNING", func() bool { return storedState(t, c, "w1", id) == batonv1.JobState_JOB_STATE_RUNNING })

	leaveForRestart(t, c, w1)
	waitWorkers(t, c, stateDown, "w1")
	waitFor(t, "job LOST", func() bool { return storedState(t, c, "w1", id) == batonv1.JobState_JOB_STATE_LOST })
	want := "worker restarting: not back within " + grace.String()
	if got := queryJob(t, c, id).GetStatus().GetReason(); !strings.Contains(got, want) {
		t.Errorf("reason of a job whose worker did not come back: %q, want %q", got, want)
	}

	w1.sched.pause(false)
	waitWorkers(t, c, stateReady, "w1")
	waitFor(t, "job RUNNING again", func() bool { return storedState(t, c, "w1", id) == batonv1.JobState_JOB_STATE_RUNNING })
}

// TestSchedulerRestartWithRestartingWorker: a scheduler restarted while a
// worker is RESTARTING lists it so, keeps its jobs, and takes it back when
// it registers.
func TestSchedulerRestartWithRestartingWorker(t *testing.T) {
	t.Parallel()
	tune := func(o *scheduler.Options) {
		o.HeartbeatInterval = 250 * time.Millisecond
		o.HeartbeatGrace = 2 * waitTimeout
		o.FailoverGrace = 2 * waitTimeout
		o.RestartGrace = 2 * waitTimeout
	}
	s1 := startScheduler(t, "", tune)
	w1 := startWorker(t, "w1", s1, nil)
	waitWorkers(t, s1.client, stateReady, "w1")
	id := startJob(t, s1.client, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh"}).GetJobId()
	waitFor(t, "job RUNNING", func() bool { return storedState(t, s1.client, "w1", id) == batonv1.JobState_JOB_STATE_RUNNING })
	leaveForRestart(t, s1.client, w1)

	s1.kill()
	s2 := startScheduler(t, s1.dbPath, tune)
	if got := workerStates(t, s2.client)["w1"]; got != stateRestarting {
		t.Errorf("after the scheduler's restart w1 is %v, want RESTARTING", got)
	}
	if got := storedState(t, s2.client, "w1", id); got != batonv1.JobState_JOB_STATE_RUNNING {
		t.Errorf("after the scheduler's restart the job is %v, want RUNNING", got)
	}
	w1.sched.point(s2.client)
	w1.sched.pause(false)
	waitWorkers(t, s2.client, stateReady, "w1")
	if got := queryJob(t, s2.client, id).GetStatus().GetState(); got != batonv1.JobState_JOB_STATE_RUNNING {
		t.Errorf("job after its worker is back is %v, want RUNNING", got)
	}
}
