package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// These tests run a real scheduler and three real workers as processes and
// drive them with plain HTTP JSON, as curl would. They run one after the
// other: the heartbeat timings are small and parallel clusters on a small
// machine would starve each other's heartbeats.

func isTerminal(state string) bool {
	switch state {
	case "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_STOPPED", "JOB_STATE_TIMED_OUT", "JOB_STATE_LOST":
		return true
	}
	return false
}

// TestClusterOriginalScenario: run a script on a named worker, follow its
// output through the scheduler, stop a long job, and shut a worker down
// gracefully.
func TestClusterOriginalScenario(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1", "w2", "w3"}})
	for name, st := range c.listWorkers() {
		if st != "WORKER_STATE_READY" {
			t.Errorf("worker %s is %s", name, st)
		}
	}

	job := c.start(`{"worker_id":"w1","command":"bash","path":"count.sh"}`)
	if job.WorkerID != "w1" {
		t.Errorf("count.sh placed on %q, want w1", job.WorkerID)
	}
	st := c.waitJob(job.JobID, 30*time.Second, "done", func(s jobStatus) bool { return isTerminal(s.State) })
	if st.State != "JOB_STATE_SUCCEEDED" || st.ExitCode == nil || *st.ExitCode != 0 {
		t.Errorf("count.sh ended %v", st)
	}
	out, final := streamJSON(t, "http://"+c.schedAdr+"/baton.v1.SchedulerService/StreamJobOutput",
		fmt.Sprintf(`{"job_id":%q,"follow":true}`, job.JobID))
	if out != "1\n2\n3\ndone\n" {
		t.Errorf("streamed %q", out)
	}
	if final["state"] != "JOB_STATE_SUCCEEDED" {
		t.Errorf("stream's final status %v", final)
	}

	long := c.start(c.napJob("w2", 1000))
	c.waitJobState(long.JobID, "JOB_STATE_RUNNING", 30*time.Second)
	var stopped struct {
		Status jobStatus `json:"status"`
	}
	c.mustCall("StopJob", fmt.Sprintf(`{"job_id":%q}`, long.JobID), &stopped)
	if stopped.Status.State != "JOB_STATE_STOPPED" {
		t.Errorf("StopJob answered %v", stopped.Status)
	}
	if st := c.query(long.JobID); st.State != "JOB_STATE_STOPPED" {
		t.Errorf("after StopJob: %v", st)
	}
	if left := waitNoMarked(c.workerMarker("w2"), 5*time.Second); len(left) > 0 {
		t.Errorf("StopJob left job processes %v", left)
	}

	// A planned restart of w3 while it runs a job: SIGTERM ends the worker
	// process; w3 is RESTARTING, never DOWN, and its job runs on untouched.
	onW3 := c.start(c.napJob("w3", 1000))
	c.waitJobState(onW3.JobID, "JOB_STATE_RUNNING", 30*time.Second)
	procs := markedProcs(c.workerMarker("w3"))
	w3 := c.workers["w3"]
	if err := w3.proc.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if exited, err := w3.proc.wait(30 * time.Second); !exited || err != nil {
		t.Fatalf("w3 after SIGTERM: exited %v, %v", exited, err)
	}
	if st := c.listWorkers()["w3"]; st != "WORKER_STATE_RESTARTING" {
		t.Fatalf("w3 after SIGTERM: %s, want RESTARTING", st)
	}
	if st := c.query(onW3.JobID); st.State != "JOB_STATE_RUNNING" {
		t.Errorf("w3's job while w3 restarts: %v", st)
	}
	if now := markedProcs(c.workerMarker("w3")); !slices.Equal(now, procs) || len(now) == 0 {
		t.Errorf("w3's job processes while it restarts: %v, before %v", now, procs)
	}
	c.startWorker("w3")
	c.waitWorkerState("w3", "WORKER_STATE_READY", 30*time.Second)
	if st := c.query(onW3.JobID); st.State != "JOB_STATE_RUNNING" {
		t.Errorf("w3's job after the restart: %v", st)
	}
	if now := markedProcs(c.workerMarker("w3")); !slices.Equal(now, procs) {
		t.Errorf("w3's job processes after the restart: %v, before %v", now, procs)
	}

	// Decommission: the keeper stops every job; the worker reports their
	// ends, leaves (LEFT, never DOWN) and exits.
	if out, err := c.decommission("w3"); err != nil {
		t.Fatalf("decommission: %v\n%s", err, out)
	}
	c.waitWorkerState("w3", "WORKER_STATE_LEFT", 30*time.Second)
	if exited, err := w3.proc.wait(30 * time.Second); !exited || err != nil {
		t.Errorf("w3 after its decommission: exited %v, %v", exited, err)
	}
	if st := c.query(onW3.JobID); st.State != "JOB_STATE_STOPPED" {
		t.Errorf("w3's job after the decommission: %v (want STOPPED)", st)
	}
	if left := waitNoMarked(c.workerMarker("w3"), 5*time.Second); len(left) > 0 {
		t.Errorf("the decommission of w3 left job processes %v", left)
	}
}

// waitNoMarked polls until no process carries marker, and returns the
// leftovers at the deadline.
func waitNoMarked(marker string, d time.Duration) []int {
	deadline := time.Now().Add(d)
	for {
		left := markedProcs(marker)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterWorkerKilled is M1: kill -9 a worker that runs three jobs.
func TestClusterWorkerKilled(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1", "w2", "w3"}})
	var jobs []string
	for range 3 {
		j := c.start(c.napJob("w2", 1000))
		jobs = append(jobs, j.JobID)
	}
	for _, id := range jobs {
		c.waitJobState(id, "JOB_STATE_RUNNING", 30*time.Second)
	}
	// The scheduler has heard from w2 since its jobs were running.
	c.waitFreshHeartbeat("w2", 30*time.Second)
	t.Run("each job in its own cgroup", func(t *testing.T) {
		dir := cgroupParentOrSkip(t, c.workers["w2"].dataDir)
		if n := len(childCgroups(dir)); n != len(jobs) {
			t.Errorf("w2 has %d job cgroups, want %d", n, len(jobs))
		}
	})

	killed := time.Now()
	if err := c.workers["w2"].proc.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	downAt := c.waitWorkerState("w2", "WORKER_STATE_DOWN", downDeadline+downSlack)
	t.Logf("w2 DOWN %v after SIGKILL (D = %v)", downAt.Sub(killed).Round(time.Millisecond), downDeadline)

	// Every job turns LOST; the DOWN transition writes the jobs just after
	// the roster, so allow a moment, then never RUNNING again.
	sawRunning := 0
	for _, id := range jobs {
		st := c.waitJob(id, 5*time.Second, "LOST", func(s jobStatus) bool {
			if s.State == "JOB_STATE_RUNNING" {
				sawRunning++
			}
			return s.State == "JOB_STATE_LOST"
		})
		t.Logf("after DOWN: %v", st)
	}
	if sawRunning > 0 {
		t.Errorf("%d QueryJob answers said RUNNING after the roster showed DOWN", sawRunning)
	}
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		for _, id := range jobs {
			if st := c.query(id); st.State != "JOB_STATE_LOST" {
				t.Fatalf("job %s after LOST: %v", id, st)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}

	for i := range 10 {
		j := c.start(`{"command":"true"}`)
		if j.WorkerID == "w2" || j.WorkerID == "" {
			t.Errorf("start %d placed on %q", i, j.WorkerID)
		}
	}
	code, e, err := c.call("StartJob", c.napJob("w2", 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusServiceUnavailable || e.Code != "unavailable" {
		t.Errorf("StartJob on DOWN w2: HTTP %d %+v, want 503 unavailable", code, e)
	}
}

// TestClusterWorkerStopped is M2: SIGSTOP a worker (its TCP connections
// stay open) past the down deadline, then SIGCONT it.
func TestClusterWorkerStopped(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1", "w2", "w3"}})
	// The short job must still run when w3 stops, and end while it is
	// stopped.
	const shortNap = 4
	long := c.start(c.napJob("w3", 1000))
	short := c.start(c.napJob("w3", shortNap))
	c.waitJobState(long.JobID, "JOB_STATE_RUNNING", 30*time.Second)
	shortStart := time.Now()
	c.waitJobState(short.JobID, "JOB_STATE_RUNNING", 30*time.Second)
	// The scheduler has heard from w3 since both jobs were running.
	c.waitFreshHeartbeat("w3", 30*time.Second)

	w3 := c.workers["w3"].proc
	stoppedAt := time.Now()
	if err := w3.signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = w3.signal(syscall.SIGCONT)
		}
	}()
	downAt := c.waitWorkerState("w3", "WORKER_STATE_DOWN", downDeadline+downSlack)
	t.Logf("w3 DOWN %v after SIGSTOP (D = %v)", downAt.Sub(stoppedAt).Round(time.Millisecond), downDeadline)
	for _, id := range []string{long.JobID, short.JobID} {
		c.waitJobState(id, "JOB_STATE_LOST", 5*time.Second)
	}
	// Stay stopped for at least 2·D, and until the short job has ended.
	for time.Since(stoppedAt) < 2*downDeadline || time.Since(shortStart) < shortNap*time.Second+2*time.Second {
		if st := c.listWorkers()["w3"]; st != "WORKER_STATE_DOWN" {
			t.Fatalf("stopped w3 is %s", st)
		}
		time.Sleep(100 * time.Millisecond)
	}

	contAt := time.Now()
	if err := w3.signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	readyAt := c.waitWorkerState("w3", "WORKER_STATE_READY", 15*time.Second)
	t.Logf("w3 READY %v after SIGCONT (stopped for %v)", readyAt.Sub(contAt).Round(time.Millisecond), contAt.Sub(stoppedAt).Round(time.Millisecond))

	lst := c.waitJobState(long.JobID, "JOB_STATE_RUNNING", 10*time.Second)
	sst := c.waitJob(short.JobID, 10*time.Second, "SUCCEEDED exit 0", func(s jobStatus) bool {
		return s.State == "JOB_STATE_SUCCEEDED" && s.ExitCode != nil && *s.ExitCode == 0
	})
	t.Logf("after rejoin: %v; %v", lst, sst)

	seen := map[string]int{}
	for _, j := range c.listJobs() {
		seen[j.JobID]++
	}
	for _, id := range []string{long.JobID, short.JobID} {
		if seen[id] != 1 {
			t.Errorf("job %s listed %d times", id, seen[id])
		}
	}
	if len(seen) != 2 {
		t.Errorf("ListJobs has %d distinct jobs, want 2: %v", len(seen), seen)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("job %s listed %d times", id, n)
		}
	}
}

// TestClusterSchedulerRestart is M4: kill -9 the scheduler while jobs run
// on three workers and start it again on the same data.
func TestClusterSchedulerRestart(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1", "w2", "w3"}, failoverGrace: 30 * time.Second})
	finished := c.start(`{"worker_id":"w1","command":"bash","path":"count.sh"}`)
	c.waitJobState(finished.JobID, "JOB_STATE_SUCCEEDED", 30*time.Second)
	running := map[string]string{}
	for _, w := range []string{"w1", "w2", "w3"} {
		j := c.start(c.napJob(w, 1000))
		running[j.JobID] = w
	}
	for id := range running {
		c.waitJobState(id, "JOB_STATE_RUNNING", 30*time.Second)
	}
	// Each worker has reported to the scheduler since its job was running.
	for _, w := range []string{"w1", "w2", "w3"} {
		c.waitFreshHeartbeat(w, 30*time.Second)
	}

	c.sched.kill()
	restart := time.Now()
	c.startScheduler()

	// Poll the roster for a while: nobody is DOWN, and everyone is READY
	// again, registered with the new process (registered_at after the
	// restart; the roster loaded from the store says READY at once).
	var allReadyAt time.Time
	polls := 0
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end) || allReadyAt.IsZero(); {
		if time.Since(restart) > 30*time.Second {
			t.Fatalf("workers not all re-registered 30s after the restart: %+v", c.roster())
		}
		ws := c.roster()
		polls++
		ready := 0
		for name, w := range ws {
			if w.State == "WORKER_STATE_DOWN" {
				t.Fatalf("worker %s DOWN after a scheduler restart", name)
			}
			if w.State == "WORKER_STATE_READY" && w.RegisteredAt.After(restart) {
				ready++
			}
		}
		if ready == 3 && allReadyAt.IsZero() {
			allReadyAt = time.Now()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("all workers re-registered and READY %v after the restart (%d roster polls, no DOWN)", allReadyAt.Sub(restart).Round(time.Millisecond), polls)

	for id, w := range running {
		st := c.waitJobState(id, "JOB_STATE_RUNNING", 10*time.Second)
		if st.WorkerID != w {
			t.Errorf("job %s on %q, want %s", id, st.WorkerID, w)
		}
	}
	if st := c.query(finished.JobID); st.State != "JOB_STATE_SUCCEEDED" || st.ExitCode == nil || *st.ExitCode != 0 {
		t.Errorf("finished job after restart: %v", st)
	}
	listed := map[string]int{}
	for _, j := range c.listJobs() {
		listed[j.JobID]++
	}
	if listed[finished.JobID] != 1 {
		t.Errorf("finished job listed %d times after restart", listed[finished.JobID])
	}
	for id := range running {
		if listed[id] != 1 {
			t.Errorf("job %s listed %d times after restart", id, listed[id])
		}
	}
}

// TestClusterThousandStarts is L4 through the scheduler: 1000 concurrent
// StartJob(true) calls on three workers of capacity 64.
func TestClusterThousandStarts(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1", "w2", "w3"}, capacity: 64})
	names := []string{"w1", "w2", "w3"}
	pids := map[string]int{}
	for _, n := range names {
		pids[n] = c.workers[n].proc.cmd.Process.Pid
	}
	// Warm up the connections, then take the baseline.
	for i := range 6 {
		j := c.start(fmt.Sprintf(`{"worker_id":%q,"command":"true"}`, names[i%3]))
		c.waitJob(j.JobID, 30*time.Second, "done", func(s jobStatus) bool { return isTerminal(s.State) })
	}
	// The baseline is taken once each worker has reported the warm-up
	// jobs' ends and its open files have stopped changing.
	base := map[string]int{}
	for _, n := range names {
		c.waitFreshHeartbeat(n, 30*time.Second)
	}
	for _, n := range names {
		base[n] = settledFDs(t, pids[n], 30*time.Second)
	}

	const calls, concurrency = 1000, 100
	var ok, exhausted atomic.Int64
	var mu sync.Mutex
	var bad []string
	refusals := map[string]int{}
	work := make(chan int)
	var wg sync.WaitGroup
	begin := time.Now()
	for range concurrency {
		wg.Go(func() {
			for range work {
				code, e, err := c.call("StartJob", `{"command":"true"}`, nil)
				switch {
				case err == nil && code == http.StatusOK:
					ok.Add(1)
				case err == nil && e.Code == "resource_exhausted":
					exhausted.Add(1)
					mu.Lock()
					refusals[refusalKind(e.Message)]++
					mu.Unlock()
				default:
					mu.Lock()
					bad = append(bad, fmt.Sprintf("HTTP %d %+v %v", code, e, err))
					mu.Unlock()
				}
			}
		})
	}
	for i := range calls {
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("%d calls in %v: %d started, %d resource_exhausted, %d other", calls, time.Since(begin).Round(time.Millisecond), ok.Load(), exhausted.Load(), len(bad))
	if len(refusals) > 0 {
		t.Logf("resource_exhausted by: %v", refusals)
	}
	if len(bad) > 0 {
		t.Errorf("%d calls failed otherwise, e.g. %v", len(bad), bad[:min(5, len(bad))])
	}
	if ok.Load() == 0 {
		t.Error("no call started a job")
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		var problems []string
		for _, n := range names {
			if fd := fdCount(pids[n]); fd < base[n]-5 || fd > base[n]+5 {
				problems = append(problems, fmt.Sprintf("%s fds %d (baseline %d)", n, fd, base[n]))
			}
			if z := zombieChildren(pids[n]); len(z) > 0 {
				problems = append(problems, fmt.Sprintf("%s zombies %v", n, z))
			}
		}
		if len(problems) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the burst: %v", problems)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Run("no job cgroups left", func(t *testing.T) {
		dirs := map[string]string{}
		for _, n := range names {
			// Not cgroupParentOrSkip: the workers are idle now, and an idle
			// worker's empty parent may have been removed by another
			// worker's start (jobrun's removeStaleParents). A parent that
			// still holds job cgroups cannot be removed, so a leak shows
			// either way.
			if dirs[n] = cgroupDirFor(c.workers[n].dataDir); dirs[n] == "" {
				t.Skip("no cgroup v2 mount: workers contain jobs by process group only, so there are no job cgroups to check")
			}
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			var left []string
			for _, n := range names {
				if sub := childCgroups(dirs[n]); len(sub) > 0 {
					left = append(left, fmt.Sprintf("%s: %d", n, len(sub)))
				}
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("job cgroups left after the burst: %v", left)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	for _, n := range names {
		t.Logf("%s: fds %d (baseline %d)", n, fdCount(pids[n]), base[n])
	}
	for _, n := range names {
		if st := c.listWorkers()[n]; st != "WORKER_STATE_READY" {
			t.Errorf("%s is %s after the burst", n, st)
		}
	}
}

// refusalKind tells the scheduler's own capacity refusal from a worker's.
func refusalKind(msg string) string {
	if strings.Contains(msg, "is full") {
		return "worker"
	}
	return "scheduler placement"
}

// heartbeatsOK is how many of the worker's heartbeats the scheduler has
// answered, as the worker's own /metrics counts them.
func (c *cluster) heartbeatsOK(name string) int {
	c.t.Helper()
	const series = `baton_worker_heartbeats_sent_total{result="ok"} `
	res, err := c.client.Get("http://" + c.workers[name].addr + "/metrics")
	if err != nil {
		c.t.Fatalf("%s /metrics: %v", name, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		c.t.Fatalf("%s /metrics: %s %v", name, res.Status, err)
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				c.t.Fatalf("%s /metrics: %q: %v", name, line, err)
			}
			return int(n)
		}
	}
	c.t.Fatalf("%s /metrics has no %s", name, series)
	return 0
}

// waitFreshHeartbeat waits until the scheduler has answered a heartbeat
// that the worker built after this call. A worker sends one heartbeat at a
// time, so of two answered from now on the second was built after the
// first's answer; the first may have been under way already.
func (c *cluster) waitFreshHeartbeat(name string, d time.Duration) {
	c.t.Helper()
	base := c.heartbeatsOK(name)
	deadline := time.Now().Add(d)
	for {
		n := c.heartbeatsOK(name)
		if n >= base+2 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("worker %s: %d heartbeats answered within %v, want 2", name, n-base, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settledFDs waits until pid's count of open files has stayed the same for
// half a second and returns it.
func settledFDs(t *testing.T, pid int, d time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(d)
	last, same := fdCount(pid), 0
	for same < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d: open files still changing after %v (last %d)", pid, d, last)
		}
		time.Sleep(50 * time.Millisecond)
		if n := fdCount(pid); n == last {
			same++
		} else {
			last, same = n, 0
		}
	}
	return last
}

// cgroupParentOrSkip returns the cgroup v2 directory the worker with dataDir
// makes its job cgroups in, failing t if it is missing; it skips t, with
// the reason, on a host where workers contain jobs by process group only.
func cgroupParentOrSkip(t *testing.T, dataDir string) string {
	t.Helper()
	dir := cgroupDirFor(dataDir)
	if dir == "" {
		t.Skip("no cgroup v2 mount: workers contain jobs by process group only, so there are no job cgroups to check")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the worker made no cgroup parent: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		t.Skipf("cgroup v2 without cgroup.kill (%v): workers contain jobs by process group only, so there are no job cgroups to check", err)
	}
	return dir
}

// removeV1Parents removes the directories a worker makes for its jobs under
// the v1 cpu and memory hierarchies, where this kind of host keeps those
// controllers. A worker removes them when it closes; one the test killed
// cannot. rmdir(2) refuses a directory that still holds job cgroups.
func removeV1Parents(dataDir string) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return
	}
	sum := sha256.Sum256([]byte(abs))
	tag := "baton-" + hex.EncodeToString(sum[:4])
	own, _ := os.ReadFile("/proc/self/cgroup")
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, ctl := range []string{"cpu", "memory"} {
		path := ""
		for line := range strings.SplitSeq(string(own), "\n") {
			if parts := strings.SplitN(line, ":", 3); len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), ctl) {
				path = parts[2]
			}
		}
		for line := range strings.SplitSeq(string(mounts), "\n") {
			if f := strings.Fields(line); len(f) >= 4 && f[2] == "cgroup" && slices.Contains(strings.Split(f[3], ","), ctl) {
				_ = syscall.Rmdir(filepath.Join(f[1], path, tag))
			}
		}
	}
}

// TestClusterReportedEndSurvivesKill9: a job's end, once the scheduler has
// it, is still the worker's after the worker is killed with SIGKILL and
// started again: its state, exit code and output, asked of the worker
// itself.
func TestClusterReportedEndSurvivesKill9(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1"}})
	j := c.start(`{"worker_id":"w1","command":"bash","args":["-c","echo reported; exit 3"]}`)
	c.waitJobState(j.JobID, "JOB_STATE_FAILED", 30*time.Second)
	if err := c.workers["w1"].proc.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = c.workers["w1"].proc.wait(10 * time.Second)
	c.startWorker("w1")

	worker := "http://" + c.workers["w1"].addr + "/baton.v1.WorkerService/"
	res, err := c.client.Post(worker+"QueryJob", "application/json", strings.NewReader(`{"jobId":"`+j.JobID+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var q struct {
		Status jobStatus `json:"status"`
	}
	if err := json.NewDecoder(res.Body).Decode(&q); err != nil {
		t.Fatalf("QueryJob on the restarted worker: HTTP %d: %v", res.StatusCode, err)
	}
	if q.Status.State != "JOB_STATE_FAILED" || q.Status.ExitCode == nil || *q.Status.ExitCode != 3 {
		t.Errorf("the restarted worker says %v, want FAILED with exit code 3", q.Status)
	}
	out, err := c.client.Post(worker+"StreamJobOutput", "application/connect+json", bytes.NewReader(connectEnvelope(`{"jobId":"`+j.JobID+`"}`)))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Body.Close()
	body, _ := io.ReadAll(out.Body)
	if !bytes.Contains(body, []byte(base64.StdEncoding.EncodeToString([]byte("reported\n")))) {
		t.Errorf("the restarted worker's output of the job: %q, want \"reported\\n\"", body)
	}
}

// connectEnvelope frames one JSON message as a Connect streaming request.
func connectEnvelope(msg string) []byte {
	b := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// TestClusterRunThroughSchedulerRestart: `baton run` follows its job
// through a kill -9 of the scheduler and its restart. The RunJob call is
// cut; the CLI picks the output up with StreamJobOutput from the last
// offset: every line once, in order, and the job's exit status.
func TestClusterRunThroughSchedulerRestart(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1"}})
	stdout, err := os.Create(filepath.Join(c.dir, "run.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	var stderr bytes.Buffer
	run := exec.Command(c.bin, "run", "--scheduler", c.schedAdr, "--", "bash", "-c", "for i in $(seq 1 30); do echo $i; sleep 0.1; done; exit 7")
	run.Env = append([]string{"HOME=" + c.dir, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	run.Stdout, run.Stderr = stdout, &stderr
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	t.Cleanup(func() {
		_ = run.Process.Kill()
		<-exited
	})
	// The job prints; then the scheduler dies mid-run and comes back.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if fi, err := stdout.Stat(); err == nil && fi.Size() >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("baton run printed nothing")
		}
	}
	c.sched.kill()
	c.startScheduler()

	select {
	case err := <-exited:
		exited <- err
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 7 {
			t.Errorf("baton run ended with %v, want exit status 7\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("baton run did not end after the scheduler came back\n%s", stderr.String())
	}
	got, err := os.ReadFile(stdout.Name())
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	if string(got) != want.String() {
		t.Errorf("baton run printed %q, want 1 to 30, each once\n%s", got, stderr.String())
	}
}
