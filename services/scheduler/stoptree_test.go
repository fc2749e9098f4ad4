package scheduler_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler"
)

// treeGone bounds how long a stopped job's processes may outlive the
// StopJob answer: the kernel delivers the last SIGKILL by then.
const treeGone = 5 * time.Second

// TestStopJobEndsTheProcessTree stops, through the scheduler, a job whose
// shell forks a child in its process group and a grandchild that left it
// with setsid(1): once StopJob has answered, no process of the tree is
// left, and the job's final status is STOPPED. The grandchild is reachable
// only through the job's cgroup, so the test needs cgroup v2 containment.
func TestStopJobEndsTheProcessTree(t *testing.T) {
	t.Parallel()
	marker := uniqueMarker("tree")
	// Registered first, so it runs last: after the workers stopped what
	// they could.
	t.Cleanup(func() { killMarked(marker) })
	s := startScheduler(t, "", func(o *scheduler.Options) { o.HeartbeatInterval = 200 * time.Millisecond })
	startWorker(t, "w1", s, nil)
	c := s.client
	waitWorkers(t, c, stateReady, "w1")

	// Every process carries the marker: the shell in its script, the
	// others in the argv[0] they exec under.
	script := fmt.Sprintf(`setsid bash -c "exec -a %[1]s-grand sleep 100" &
exec -a %[1]s-child sleep 100 &
wait`, marker)
	started := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "bash", Args: []string{"-c", script}})
	st := started.GetJobs()[0]
	id := st.GetJobId()
	if got := st.GetContainment(); got != "cgroup-v2" {
		t.Skipf("the worker contains jobs by %q, not cgroup-v2: a setsid grandchild leaves the process group, and only a v2 cgroup (cgroup.kill) reaches it", got)
	}

	var leader, child, grand osProc
	waitFor(t, "the job's child and setsid grandchild", func() bool {
		var ok bool
		leader, ok = readProc(int(st.GetPid()))
		if !ok {
			t.Fatalf("the job's process %d is gone", st.GetPid())
		}
		children, grands := procsWithArg0(marker+"-child"), procsWithArg0(marker+"-grand")
		if len(children) != 1 || len(grands) != 1 {
			return false
		}
		child, grand = children[0], grands[0]
		return true
	})
	if leader.pgrp != leader.pid || child.pgrp != leader.pid || grand.session != grand.pid || grand.pgrp == leader.pid {
		t.Fatalf("not the tree the test needs (a leader, a child in its group, a grandchild in a session of its own):\n%v\n%v\n%v", leader, child, grand)
	}
	tree := []osProc{leader, child, grand}

	res, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
	if err != nil {
		t.Fatalf("StopJob: %v", err)
	}
	answered := time.Now()
	if got := res.Msg.GetStatus().GetState(); got != batonv1.JobState_JOB_STATE_STOPPED {
		t.Errorf("StopJob answered %v, want STOPPED", got)
	}
	for {
		var left []osProc
		for _, p := range tree {
			if p.alive() {
				left = append(left, p)
			}
		}
		for _, p := range procsMarked(marker) { // anything the tree forked meanwhile
			if !slices.ContainsFunc(left, func(l osProc) bool { return l.pid == p.pid }) {
				left = append(left, p)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Since(answered) > treeGone {
			t.Fatalf("%v after StopJob answered, the job's processes still run:\n%v", treeGone, left)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if q := queryJob(t, c, id); q.GetStatus().GetState() != batonv1.JobState_JOB_STATE_STOPPED || !q.GetDone() {
		t.Errorf("QueryJob after the stop: %v done=%v, want STOPPED and done", q.GetStatus().GetState(), q.GetDone())
	}
	waitFor(t, "the store to record STOPPED", func() bool {
		return storedState(t, c, "w1", id) == batonv1.JobState_JOB_STATE_STOPPED
	})
}
