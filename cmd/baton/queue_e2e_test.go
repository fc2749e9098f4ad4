package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestClusterQueueSurvivesSchedulerKill9 queues 20 jobs behind a busy
// worker of capacity 1, kills the scheduler with SIGKILL and starts it
// again: every job runs exactly once, in the order it was queued.
func TestClusterQueueSurvivesSchedulerKill9(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1"}, capacity: 1})
	// The worker stays busy until the scheduler is back, so that every
	// job is queued across the kill whatever the machine's speed.
	blocker := c.start(c.napJob("w1", 300))
	c.waitJobState(blocker.JobID, "JOB_STATE_RUNNING", 30*time.Second)

	// Each job appends its number to one file: the file is the order the
	// jobs ran in, each as often as it ran. The jobs may run under uids
	// of their own, so the file is open to all.
	shared := filepath.Join(c.dir, "queue-order")
	if err := os.MkdirAll(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	ran := filepath.Join(shared, "ran")
	c.writeFile(ran, "", 0o666)
	if err := os.Chmod(ran, 0o666); err != nil {
		t.Fatal(err)
	}
	var ids, want []string
	for i := range 20 {
		st := c.start(fmt.Sprintf(`{"command":"bash","args":["-c","echo %d >> %s"],"queue_timeout":"-1s"}`, i, ran))
		if st.State != "JOB_STATE_QUEUED" {
			t.Fatalf("job %d behind a full worker is %s, want JOB_STATE_QUEUED", i, st)
		}
		ids = append(ids, st.JobID)
		want = append(want, strconv.Itoa(i))
	}

	c.sched.kill()
	c.startScheduler()
	c.waitWorkerState("w1", "WORKER_STATE_READY", 30*time.Second)
	c.mustCall("StopJob", fmt.Sprintf(`{"job_id":%q}`, blocker.JobID), nil)

	for _, id := range ids {
		if st := c.waitJob(id, 60*time.Second, "ended", func(s jobStatus) bool { return isTerminal(s.State) }); st.State != "JOB_STATE_SUCCEEDED" {
			t.Errorf("queued job after the scheduler's SIGKILL: %s", st)
		}
	}
	out, err := os.ReadFile(ran)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, want) {
		t.Errorf("queued jobs ran as %v, want each once, in the order queued: %v", got, want)
	}
}
