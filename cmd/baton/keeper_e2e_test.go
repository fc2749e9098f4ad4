package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/bench"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// Acceptance tests of "Jobs outlive their worker": a worker's jobs belong
// to its keeper process, and run on, end on time and are reported
// truthfully whatever happens to the worker process. Everything is real:
// a scheduler, a worker and its keeper as processes, jobs as processes.

// keptStatus is a job's status from QueryJob with what these tests read
// beyond jobStatus.
type keptStatus struct {
	jobStatus
	Pid         int       `json:"pid"`
	StartedAt   time.Time `json:"startedAt"`
	EndedAt     time.Time `json:"endedAt"`
	StdoutBytes int64     `json:"stdoutBytes,string"`
}

func (c *cluster) queryKept(id string) keptStatus {
	c.t.Helper()
	var res struct {
		Status keptStatus `json:"status"`
	}
	c.mustCall("QueryJob", fmt.Sprintf(`{"job_id":%q}`, id), &res)
	return res.Status
}

// lockPid returns the pid the keeper of dataDir wrote in its lock file.
func lockPid(t *testing.T, dataDir string) int {
	t.Helper()
	pid, err := bench.KeeperPID(dataDir)
	if err != nil {
		t.Fatalf("the keeper's pid: %v", err)
	}
	return pid
}

// alive reports whether pid is a process that has not ended.
func alive(pid int) bool {
	st := procState(pid)
	return st != "" && st != "Z"
}

// waitFileGrows waits up to d for path to be larger than size, and
// returns its new size.
func waitFileGrows(t *testing.T, path string, size int64, d time.Duration, what string) int64 {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Size() > size {
			return fi.Size()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s did not grow past %d bytes within %v", what, path, size, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKeeperJobSurvivesWorkerKills is L7(b): a job runs through ten
// SIGKILLs of its worker, each followed by a start of the worker from the
// other of two builds. The job's process stays the same (pid and start
// time), and so does the keeper's, which executes each new build in place.
// `baton run` follows the job throughout and prints every line once, in
// order, and the job's real end.
func TestKeeperJobSurvivesWorkerKills(t *testing.T) {
	// The grace is long so that a restart slowed by a loaded machine does
	// not mark the worker DOWN: what is tested is the job's life, not the
	// failure detector's.
	c := newCluster(t, clusterOptions{workers: []string{"w1"}, heartbeatGrace: 20 * time.Second})
	builds := [2]string{c.bin, secondBaton(t)}
	for i, want := range []string{"baton version dev", "baton version second"} {
		out, err := runBaton(t, builds[i], c.dir, "--version")
		if err != nil || strings.TrimSpace(out) != want {
			t.Fatalf("%s --version: %q, %v; want %q", builds[i], out, err, want)
		}
	}
	w := c.workers["w1"]

	const lines = 200
	var want strings.Builder
	for i := 1; i <= lines; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	outPath := filepath.Join(c.dir, "run.out")
	stdout, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	var stderr e2e.LockedBuffer
	e := newCLIEnv(t, c)
	run := e.command("run", "--worker", "w1", "--", "bash", "-c",
		fmt.Sprintf("for ((i = 1; i <= %d; i++)); do echo \"line $i\"; sleep 0.1; done; exit 3", lines))
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

	size := waitFileGrows(t, outPath, 0, 30*time.Second, "baton run")
	jobs := c.listJobs()
	if len(jobs) != 1 {
		t.Fatalf("the scheduler lists %d jobs, want the one of baton run: %v", len(jobs), jobs)
	}
	id := jobs[0].JobID
	job := c.queryKept(id)
	if job.State != "JOB_STATE_RUNNING" || job.Pid <= 0 {
		t.Fatalf("the job: %v, pid %d", job, job.Pid)
	}
	pid, started := job.Pid, procStartTime(job.Pid)
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !bytes.Contains(cmdline, []byte(`echo "line $i"`)) {
		t.Fatalf("pid %d (the job's, says QueryJob) runs %q", pid, cmdline)
	}
	keeper := lockPid(t, w.dataDir)
	if _, ppid := procStat(pid); ppid != keeper {
		t.Errorf("the job's parent is %d, want the keeper %d", ppid, keeper)
	}
	// baton logs -f follows the same job, through the same restarts.
	logsPath := filepath.Join(c.dir, "logs.out")
	logsOut, err := os.Create(logsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logsOut.Close()
	var logsErr e2e.LockedBuffer
	logsF := e.command("logs", "-f", id)
	logsF.Stdout, logsF.Stderr = logsOut, &logsErr
	if err := logsF.Start(); err != nil {
		t.Fatal(err)
	}
	logsExited := make(chan error, 1)
	go func() { logsExited <- logsF.Wait() }()
	t.Cleanup(func() {
		_ = logsF.Process.Kill()
		<-logsExited
	})

	const kills = 10
	begin := time.Now()
	for k := 1; k <= kills; k++ {
		if err := w.proc.signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", k, err)
		}
		if exited, _ := w.proc.wait(10 * time.Second); !exited {
			t.Fatalf("kill %d: the worker outlived SIGKILL", k)
		}
		bin := builds[k%2]
		restart := time.Now()
		c.startWorkerFrom("w1", bin)
		c.waitRegisteredSince("w1", restart, 30*time.Second)

		if now := procStartTime(pid); now != started {
			t.Fatalf("after restart %d: the job's process %d started at %q, before at %q", k, pid, now, started)
		}
		if got := lockPid(t, w.dataDir); got != keeper || !alive(keeper) {
			t.Fatalf("after restart %d: the keeper is pid %d (alive %v), before %d", k, got, alive(keeper), keeper)
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", keeper)); exe != bin {
			t.Errorf("after restart %d: the keeper runs %s, want the worker's build %s", k, exe, bin)
		}
		if st := c.queryKept(id); st.State != "JOB_STATE_RUNNING" || st.Pid != pid {
			t.Fatalf("after restart %d: the job is %v with pid %d; want RUNNING with pid %d (if it ended, the machine is too slow for %d restarts in its %d lines)",
				k, st, st.Pid, pid, kills, lines)
		}
		// baton run picks the output up again through the new worker.
		size = waitFileGrows(t, outPath, size, 30*time.Second, fmt.Sprintf("baton run after restart %d", k))
	}
	t.Logf("%d kills and restarts in %v; baton run had printed %d of %d bytes", kills, time.Since(begin).Round(time.Millisecond), size, want.Len())

	select {
	case err := <-exited:
		exited <- err
		if code := e2e.ExitCode(t, err); code != 3 {
			t.Errorf("baton run exited with %d, want the job's 3; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("baton run did not end; stderr:\n%s", stderr.String())
	}
	got, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want.String() {
		t.Errorf("baton run printed %d bytes, want line 1 to line %d, each once, in order:\n%s\nstderr:\n%s", len(got), lines, got, stderr.String())
	}
	select {
	case err := <-logsExited:
		logsExited <- err
		if err != nil {
			t.Errorf("baton logs -f: %v; stderr:\n%s", err, logsErr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("baton logs -f did not end; stderr:\n%s", logsErr.String())
	}
	if followed, _ := os.ReadFile(logsPath); string(followed) != want.String() {
		t.Errorf("baton logs -f printed %d bytes, want every line once, in order:\n%s\nstderr:\n%s", len(followed), followed, logsErr.String())
	}
	if logs := e.run(t, "logs", id); logs.code != 0 || logs.stdout != string(got) {
		t.Errorf("baton logs: exit %d, %d bytes differing from baton run's %d; stderr %q", logs.code, len(logs.stdout), len(got), logs.stderr)
	}
	st := c.waitJob(id, 30*time.Second, "ended", func(s jobStatus) bool { return isTerminal(s.State) })
	if st.State != "JOB_STATE_FAILED" || st.ExitCode == nil || *st.ExitCode != 3 {
		t.Errorf("the job ended %v, want FAILED with exit code 3", st)
	}
	if got := lockPid(t, w.dataDir); got != keeper || !alive(keeper) {
		t.Errorf("at the end the keeper is pid %d (alive %v), before %d", got, alive(keeper), keeper)
	}
	klog, err := os.ReadFile(filepath.Join(w.dataDir, "keeper.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(klog, []byte("keeper executing a new build")); n != kills {
		t.Errorf("the keeper's log says %d times that it executes a new build, want %d (one per restart)", n, kills)
	}
}

// TestKeeperReattachesManyJobs: a worker killed with SIGKILL while it runs
// 1,000 jobs is back with every one of them, and can stop each, down to
// the grandchildren that left the job's process group.
func TestKeeperReattachesManyJobs(t *testing.T) {
	if raceEnabled {
		t.Skip("a load test, run without the race detector (CI's load step)")
	}
	const jobs = 1000
	c := newCluster(t, clusterOptions{workers: []string{"w1"}, capacity: jobs})
	w := c.workers["w1"]
	marker := c.workerMarker("w1")
	body := fmt.Sprintf(`{"worker_id":"w1","command":"bash","path":"nap2.sh","args":[%q,"1000"]}`, marker)

	ids := make([]string, jobs)
	parallel(t, jobs, 16, func(i int) error {
		var res struct {
			JobID string `json:"jobId"`
		}
		code, e, err := c.call("StartJob", body, &res)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("StartJob %d: HTTP %d %+v %v", i, code, e, err)
		}
		ids[i] = res.JobID
		return nil
	})
	c.waitRunningOn("w1", jobs, 2*time.Minute)
	// Each job is two sleeps: its main process and a grandchild in a
	// session of its own.
	procs := waitMarkedCount(t, marker, 2*jobs, time.Minute)
	keeper := lockPid(t, w.dataDir)

	if err := w.proc.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if exited, _ := w.proc.wait(10 * time.Second); !exited {
		t.Fatal("the worker outlived SIGKILL")
	}
	restart := time.Now()
	c.startWorker("w1")
	c.waitRegisteredSince("w1", restart, time.Minute)
	worker := "http://" + w.addr + "/baton.v1.WorkerService/ListJobs"
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var res struct {
			Jobs []jobStatus `json:"jobs"`
		}
		code := e2e.PostJSON(t, worker, `{"states":["JOB_STATE_RUNNING"],"page_size":1000}`, &res)
		if code == http.StatusOK && len(res.Jobs) == jobs && len(c.listOn("w1", "JOB_STATE_RUNNING")) == jobs {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after its start the worker lists %d running jobs (HTTP %d), want %d", len(res.Jobs), code, jobs)
		}
	}
	t.Logf("%d jobs: the worker was READY with every job re-attached %v after its start (target 2s)", jobs, time.Since(restart).Round(time.Millisecond))
	if st := c.listWorkers()["w1"]; st != "WORKER_STATE_READY" {
		t.Errorf("the worker is %s after the restart", st)
	}
	if now := markedProcs(marker); !sameSet(now, procs) {
		t.Errorf("the restart changed the jobs' processes: %d now, %d before", len(now), len(procs))
	}
	if now := lockPid(t, w.dataDir); now != keeper || !alive(keeper) {
		t.Errorf("the keeper is pid %d after the restart (alive %v), before %d", now, alive(keeper), keeper)
	}

	parallel(t, jobs, 32, func(i int) error {
		var res struct {
			Status jobStatus `json:"status"`
		}
		code, e, err := c.call("StopJob", fmt.Sprintf(`{"job_id":%q}`, ids[i]), &res)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("StopJob %s: HTTP %d %+v %v", ids[i], code, e, err)
		}
		if res.Status.State != "JOB_STATE_STOPPED" {
			return fmt.Errorf("StopJob %s answered %v", ids[i], res.Status)
		}
		return nil
	})
	if n := len(c.listOn("w1", "JOB_STATE_STOPPED")); n != jobs {
		t.Errorf("%d jobs STOPPED after stopping them all, want %d", n, jobs)
	}
	if left := waitNoMarked(marker, 30*time.Second); len(left) > 0 {
		t.Errorf("%d processes of the stopped jobs are left, e.g. %v", len(left), left[:min(5, len(left))])
	}
}

// parallel calls f for 0 ≤ i < n, at most width at a time, and fails the
// test with the first few errors.
func parallel(t *testing.T, n, width int, f func(i int) error) {
	t.Helper()
	work := make(chan int)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range width {
		wg.Go(func() {
			for i := range work {
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d calls failed, e.g. %v", len(errs), n, errs[:min(5, len(errs))])
	}
}

// listOn returns the scheduler's jobs of worker in state.
func (c *cluster) listOn(worker, state string) []jobStatus {
	c.t.Helper()
	var out []jobStatus
	token := ""
	for {
		var res struct {
			Jobs          []jobStatus `json:"jobs"`
			NextPageToken string      `json:"nextPageToken"`
		}
		c.mustCall("ListJobs", fmt.Sprintf(`{"worker_id":%q,"states":[%q],"page_size":1000,"page_token":%q}`, worker, state, token), &res)
		out = append(out, res.Jobs...)
		if res.NextPageToken == "" {
			return out
		}
		token = res.NextPageToken
	}
}

// waitRunningOn waits until the scheduler lists n jobs RUNNING on worker.
func (c *cluster) waitRunningOn(worker string, n int, d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := len(c.listOn(worker, "JOB_STATE_RUNNING"))
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%d jobs RUNNING on %s after %v, want %d", got, worker, d, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitMarkedCount waits until n processes carry marker, and returns them.
func waitMarkedCount(t *testing.T, marker string, n int, d time.Duration) []int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		procs := markedProcs(marker)
		if len(procs) == n {
			return procs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d processes carry the marker after %v, want %d", len(procs), d, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sameSet(a, b []int) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestKeeperEndsJobsWithoutWorker: a job's timeout and output limit are
// enforced while no worker process runs. Both jobs end while the worker
// is down (DOWN on the scheduler, the jobs LOST there meanwhile), and the
// worker started again reports their true ends.
func TestKeeperEndsJobsWithoutWorker(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1"}})
	w := c.workers["w1"]
	marker := c.workerMarker("w1")
	const limit = 4096
	timed := c.start(fmt.Sprintf(`{"worker_id":"w1","command":"bash","path":"nap.sh","args":[%q,"1000"],"timeout":"2s"}`, marker))
	spew := c.start(fmt.Sprintf(`{"worker_id":"w1","command":"bash","path":"spew.sh","args":[%q],"output_limit":%d}`, marker, limit))
	c.waitJobState(timed.JobID, "JOB_STATE_RUNNING", 30*time.Second)
	c.waitJobState(spew.JobID, "JOB_STATE_RUNNING", 30*time.Second)

	if err := w.proc.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if exited, _ := w.proc.wait(10 * time.Second); !exited {
		t.Fatal("the worker outlived SIGKILL")
	}
	// The worker stays away for 4 s, past the heartbeat grace: the keeper
	// alone ends both jobs, about 2 s after their start.
	c.waitWorkerState("w1", "WORKER_STATE_DOWN", downDeadline+downSlack)
	t.Logf("with the worker DOWN the scheduler says: %v; %v", c.query(timed.JobID), c.query(spew.JobID))
	<-time.After(time.Until(killed.Add(4 * time.Second)))
	if left := markedProcs(marker); len(left) > 0 {
		t.Errorf("with the worker down for %v, the jobs' processes %v run on", time.Since(killed).Round(time.Millisecond), left)
	}
	restart := time.Now()
	c.startWorker("w1")
	c.waitRegisteredSince("w1", restart, 30*time.Second)

	notLost := func(s jobStatus) bool { return isTerminal(s.State) && s.State != "JOB_STATE_LOST" }
	c.waitJob(timed.JobID, 30*time.Second, "ended, not LOST", notLost)
	c.waitJob(spew.JobID, 30*time.Second, "ended, not LOST", notLost)
	ts, ss := c.queryKept(timed.JobID), c.queryKept(spew.JobID)
	if ts.State != "JOB_STATE_TIMED_OUT" {
		t.Errorf("the job with a 2s timeout ended %v, want TIMED_OUT", ts)
	}
	if ss.State != "JOB_STATE_FAILED" || !strings.Contains(ss.Reason, "output limit") {
		t.Errorf("the job past its output limit ended %v, want FAILED for its output limit", ss)
	}
	if ts.EndedAt.Before(ts.StartedAt.Add(2*time.Second)) || !ts.EndedAt.After(killed) || !ts.EndedAt.Before(restart) {
		t.Errorf("the timed-out job started at %v and ended at %v; want 2s or more after its start, after the worker's kill (%v) and before its restart (%v)",
			ts.StartedAt, ts.EndedAt, killed, restart)
	}
	if !ss.EndedAt.After(killed) || !ss.EndedAt.Before(restart) {
		t.Errorf("the job past its output limit ended at %v; want after the worker's kill (%v) and before its restart (%v)", ss.EndedAt, killed, restart)
	}
	if ss.StdoutBytes == 0 || ss.StdoutBytes > limit {
		t.Errorf("the job past its output limit kept %d bytes of output, want some and at most %d", ss.StdoutBytes, limit)
	}
	if left := markedProcs(marker); len(left) > 0 {
		t.Errorf("the jobs' processes %v run on after the restart", left)
	}
}

// TestKeeperKilledJobsLost: when the keeper is killed too, nothing keeps
// the jobs: the next keeper marks them LOST, says why, and kills what is
// left of them, grandchildren in sessions of their own included.
func TestKeeperKilledJobsLost(t *testing.T) {
	// A long grace: the scheduler does not mark the worker DOWN (and its
	// jobs LOST on its own) while it restarts; LOST must come from the
	// new keeper.
	c := newCluster(t, clusterOptions{workers: []string{"w1"}, heartbeatGrace: 20 * time.Second})
	w := c.workers["w1"]
	marker := c.workerMarker("w1")
	var ids []string
	for _, script := range []string{"nap.sh", "nap.sh", "nap2.sh"} {
		j := c.start(fmt.Sprintf(`{"worker_id":"w1","command":"bash","path":%q,"args":[%q,"1000"]}`, script, marker))
		ids = append(ids, j.JobID)
	}
	for _, id := range ids {
		c.waitJobState(id, "JOB_STATE_RUNNING", 30*time.Second)
	}
	procs := waitMarkedCount(t, marker, 4, 30*time.Second)

	keeper := lockPid(t, w.dataDir)
	if !alive(keeper) {
		t.Fatalf("no keeper runs as pid %d", keeper)
	}
	if err := w.proc.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(keeper, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if exited, _ := w.proc.wait(10 * time.Second); !exited {
		t.Fatal("the worker outlived SIGKILL")
	}
	for deadline := time.Now().Add(10 * time.Second); alive(keeper); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the keeper %d outlived SIGKILL", keeper)
		}
	}
	if now := markedProcs(marker); !sameSet(now, procs) {
		t.Fatalf("the jobs' processes are %v after the keeper's kill, before %v: the test needs them to outlive it", now, procs)
	}

	restart := time.Now()
	c.startWorker("w1")
	c.waitRegisteredSince("w1", restart, 30*time.Second)
	for _, id := range ids {
		st := c.waitJob(id, 30*time.Second, "ended", func(s jobStatus) bool { return isTerminal(s.State) })
		if st.State != "JOB_STATE_LOST" || !strings.Contains(st.Reason, "its keeper ended while the job ran") {
			t.Errorf("after the keeper's kill: %v, want LOST because its keeper ended", st)
		}
	}
	if left := waitNoMarked(marker, 10*time.Second); len(left) > 0 {
		t.Errorf("the lost jobs' processes %v run on", left)
	}
	if now := lockPid(t, w.dataDir); now == keeper || !alive(now) {
		t.Errorf("the keeper after the restart is pid %d (alive %v); the killed one was %d", now, alive(now), keeper)
	}
}
