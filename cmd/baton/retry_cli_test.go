package main

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cliJob is the part of `baton status -o json` the retry tests read.
type cliJob struct {
	Status struct {
		JobID    string `json:"jobId"`
		WorkerID string `json:"workerId"`
		State    string `json:"state"`
		ExitCode *int   `json:"exitCode"`
		Attempt  int    `json:"attempt"`
		Attempts []struct {
			Number    int       `json:"number"`
			WorkerID  string    `json:"workerId"`
			State     string    `json:"state"`
			ExitCode  *int      `json:"exitCode"`
			StartedAt time.Time `json:"startedAt"`
			EndedAt   time.Time `json:"endedAt"`
		} `json:"attempts"`
		StartedAt time.Time `json:"startedAt"`
	} `json:"status"`
}

func (e *cliEnv) status(t *testing.T, id string) cliJob {
	t.Helper()
	r := e.run(t, "status", "-o", "json", id)
	var j cliJob
	if err := json.Unmarshal([]byte(r.stdout), &j); r.code != 0 || err != nil {
		t.Fatalf("status %s: %+v (%v)", id, r, err)
	}
	return j
}

// lastJob is the id of the newest job.
func (c *cluster) lastJob(t *testing.T) string {
	t.Helper()
	jobs := c.listJobs()
	if len(jobs) == 0 {
		t.Fatal("no job")
	}
	return jobs[0].JobID
}

// TestCLIRetries: `baton run --retry 3` of a job that exits 3 runs it three
// times with growing waits, prints every attempt's output and exits 3;
// each attempt's output can be read alone; an exit code the policy does
// not name is not retried.
func TestCLIRetries(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{workers: []string{"w1"}})
	e := newCLIEnv(t, c)
	r := e.run(t, "run", "--retry", "3", "--retry-backoff", "300ms", "--", "bash", "-c", "echo attempt; exit 3")
	if r.code != 3 || strings.Count(r.stdout, "attempt\n") != 3 {
		t.Fatalf("run --retry 3 of a job exiting 3: %+v, want exit 3 and three lines", r)
	}
	id := c.lastJob(t)
	j := e.status(t, id).Status
	if j.State != "JOB_STATE_FAILED" || j.Attempt != 3 || len(j.Attempts) != 2 {
		t.Fatalf("status: %+v, want FAILED at attempt 3 with 2 earlier attempts", j)
	}
	starts := []time.Time{j.Attempts[0].StartedAt, j.Attempts[1].StartedAt, j.StartedAt}
	ends := []time.Time{j.Attempts[0].EndedAt, j.Attempts[1].EndedAt}
	for i, want := range []time.Duration{300 * time.Millisecond, 600 * time.Millisecond} {
		if gap := starts[i+1].Sub(ends[i]); gap < want {
			t.Errorf("attempt %d started %v after attempt %d ended, want at least %v", i+2, gap, i+1, want)
		}
	}
	for _, n := range []string{"1", "2", "3"} {
		if l := e.run(t, "logs", "--attempt", n, id); l.code != 0 || l.stdout != "attempt\n" {
			t.Errorf("logs --attempt %s: %+v", n, l)
		}
	}
	if l := e.run(t, "logs", id); l.stdout != "attempt\nattempt\nattempt\n" {
		t.Errorf("logs of the whole job: %q, want the three attempts' output", l.stdout)
	}

	r = e.run(t, "run", "--retry", "3", "--retry-on", "4", "--", "bash", "-c", "echo once; exit 3")
	if r.code != 3 || r.stdout != "once\n" {
		t.Errorf("run --retry 3 --retry-on 4 of a job exiting 3: %+v, want one attempt, exit 3", r)
	}
	if j := e.status(t, c.lastJob(t)).Status; len(j.Attempts) != 0 {
		t.Errorf("a code not retried: %d earlier attempts, want none", len(j.Attempts))
	}
}

// TestCLIRetryOfALostAttempt: the worker running a job's first attempt
// dies (worker and keeper SIGKILLed); once it is DOWN, the attempt is
// LOST and the job runs again on the other worker.
func TestCLIRetryOfALostAttempt(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{workers: []string{"w1", "w2"}, heartbeatGrace: time.Second})
	e := newCLIEnv(t, c)
	id := strings.TrimSpace(e.run(t, "start", "--retry", "2", "--retry-backoff", "0s", "--", "bash", "-c", "sleep 3").stdout)
	first := c.waitJobState(id, "JOB_STATE_RUNNING", 30*time.Second)
	dead := c.workers[first.WorkerID]
	keeper := lockPid(t, dead.dataDir)
	if err := dead.proc.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(keeper, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	end := c.waitJobState(id, "JOB_STATE_SUCCEEDED", 60*time.Second)
	j := e.status(t, id).Status
	if end.WorkerID == first.WorkerID || len(j.Attempts) != 1 || j.Attempts[0].State != "JOB_STATE_LOST" || j.Attempts[0].WorkerID != first.WorkerID {
		t.Errorf("after %s died: the job ended on %s with attempts %+v; want SUCCEEDED on the other worker after a LOST attempt on %s",
			first.WorkerID, end.WorkerID, j.Attempts, first.WorkerID)
	}
	// The dead worker comes back, and its new keeper clears what its
	// first attempt left.
	c.startWorker(first.WorkerID)
	c.waitWorkerState(first.WorkerID, "WORKER_STATE_READY", 30*time.Second)
}
