package main

import (
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// TestStopKeptWhileWorkerAway: a worker frozen with SIGSTOP is marked DOWN
// and its job LOST while the job's process still runs. A stop asked for
// then is not dropped: StopJob says it is kept, and when the worker is
// back (SIGCONT) the scheduler carries it out and the process ends.
func TestStopKeptWhileWorkerAway(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1"}})
	job := c.start(c.napJob("w1", 1000))
	c.waitJobState(job.JobID, "JOB_STATE_RUNNING", 30*time.Second)
	c.waitFreshHeartbeat("w1", 30*time.Second)
	marker := c.workerMarker("w1")

	w1 := c.workers["w1"].proc
	if err := w1.signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = w1.signal(syscall.SIGCONT)
		}
	}()
	c.waitWorkerState("w1", "WORKER_STATE_DOWN", downDeadline+downSlack)
	c.waitJobState(job.JobID, "JOB_STATE_LOST", 10*time.Second)

	code, e, err := c.call("StopJob", fmt.Sprintf(`{"jobId":%q}`, job.JobID), nil)
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusServiceUnavailable || e.Code != "unavailable" || !strings.Contains(e.Message, "kept") {
		t.Errorf("StopJob on a LOST job of a DOWN worker: HTTP %d %+v, want 503 unavailable saying the stop is kept", code, e)
	}
	if !e2e.ProcessWithArg0(marker) {
		t.Fatal("the job's process ended while its worker was frozen; the test proves nothing")
	}

	if err := w1.signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	c.waitWorkerState("w1", "WORKER_STATE_READY", 30*time.Second)
	st := c.waitJob(job.JobID, 30*time.Second, "STOPPED", func(s jobStatus) bool { return s.State == "JOB_STATE_STOPPED" })
	if st.Signal != "SIGTERM" {
		t.Errorf("the kept stop ended the job with %v, want SIGTERM", st)
	}
	if left := waitNoMarked(marker, 10*time.Second); len(left) > 0 {
		t.Errorf("the job's processes %v run on after the kept stop", left)
	}
}
