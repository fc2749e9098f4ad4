package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

func TestMain(m *testing.M) {
	code := m.Run()
	e2e.RemoveSharedBaton()
	os.Exit(code)
}

// Test timings: the scheduler is told these; D is the down deadline
// (interval + grace + one sweep tick) and downSlack the margin allowed on a
// loaded machine. The grace is what keeps a live worker from being marked
// DOWN: under -race on two shared cores a worker or the scheduler can stall
// for well over a second (a 600 ms grace flapped workers DOWN), so it is 3 s.
// The tests check that a silent worker goes DOWN, not how fast: the wait
// for it is 3·D.
const (
	testHeartbeat = 250 * time.Millisecond
	testGrace     = 3 * time.Second
	downDeadline  = testHeartbeat + testGrace + testHeartbeat/2
	downSlack     = 2 * downDeadline
)

// Scripts every worker gets. nap.sh MARKER SECONDS runs sleep with the
// marker as its argv[0], so that a leftover process can be found in /proc;
// nap2.sh does too, with a second such sleep in a session of its own
// (setsid), out of the job's process group. spew.sh MARKER writes 200
// bytes every 0.1 s, without end.
var clusterScripts = map[string]string{
	"count.sh": "#!/bin/bash\nfor i in 1 2 3; do echo $i; sleep 0.1; done\necho done\n",
	"nap.sh":   "#!/bin/bash\nexec -a \"$1\" sleep \"$2\"\n",
	"nap2.sh":  "#!/bin/bash\nsetsid bash -c 'exec -a \"$0\" sleep \"$1\"' \"$1\" \"$2\" &\nexec -a \"$1\" sleep \"$2\"\n",
	"spew.sh":  "#!/bin/bash\nwhile :; do printf '%0199d\\n' 0; sleep 0.1; done\n",
}

type clusterOptions struct {
	workers        []string
	capacity       int
	heartbeatGrace time.Duration
	failoverGrace  time.Duration
}

// proc is one baton subprocess.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to d for the process to exit.
func (p *proc) wait(d time.Duration) (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

// signal signals the process unless it was already reaped.
func (p *proc) signal(sig syscall.Signal) error {
	if p.exited() {
		return errors.New("process already exited")
	}
	return p.cmd.Process.Signal(sig)
}

func (p *proc) kill() {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}

type workerInfo struct {
	name    string
	addr    string
	dataDir string
	cfgPath string
	proc    *proc
}

// cluster is a scheduler and its workers, run as real processes.
type cluster struct {
	t        *testing.T
	bin      string
	dir      string
	marker   string
	opts     clusterOptions
	schedAdr string
	schedCfg string
	sched    *proc
	workers  map[string]*workerInfo
	client   *http.Client

	mu    sync.Mutex
	procs []*proc
}

func newCluster(t *testing.T, opts clusterOptions) *cluster {
	t.Helper()
	if opts.capacity == 0 {
		opts.capacity = 64
	}
	if opts.heartbeatGrace == 0 {
		opts.heartbeatGrace = testGrace
	}
	if opts.failoverGrace == 0 {
		opts.failoverGrace = 30 * time.Second
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	c := &cluster{
		t:       t,
		bin:     e2e.SharedBaton(t),
		dir:     e2e.JobsTempDir(t),
		marker:  "bzt" + hex.EncodeToString(rnd[:]),
		opts:    opts,
		workers: map[string]*workerInfo{},
		client: &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 128, IdleConnTimeout: 30 * time.Second},
		},
	}
	t.Cleanup(c.cleanup)

	c.schedAdr = e2e.FreeAddr(t)
	schedData := filepath.Join(c.dir, "scheduler")
	c.schedCfg = filepath.Join(c.dir, "scheduler.toml")
	c.writeFile(c.schedCfg, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = false

[scheduler]
data_dir = %q
heartbeat_interval = %q
heartbeat_grace = %q
failover_grace = %q

[log]
format = "json"
`, c.schedAdr, schedData, testHeartbeat.String(), opts.heartbeatGrace.String(), opts.failoverGrace.String()), 0o600)
	if err := os.MkdirAll(schedData, 0o755); err != nil {
		t.Fatal(err)
	}
	c.startScheduler()

	for _, name := range opts.workers {
		w := &workerInfo{name: name, addr: e2e.FreeAddr(t)}
		base := filepath.Join(c.dir, name)
		scripts := filepath.Join(base, "scripts")
		w.dataDir = filepath.Join(base, "data")
		if err := os.MkdirAll(scripts, 0o755); err != nil {
			t.Fatal(err)
		}
		for file, body := range clusterScripts {
			c.writeFile(filepath.Join(scripts, file), body, 0o755)
		}
		w.cfgPath = filepath.Join(base, "worker.toml")
		c.writeFile(w.cfgPath, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = false

[scheduler]
addr = %q

[worker]
name = %q
data_dir = %q
scripts_dir = %q
allowed_commands = ["bash", "true"]
capacity = %d
stop_grace = "2s"
shutdown_timeout = "20s"
labels = { host = %q }

[log]
format = "json"
`, w.addr, c.schedAdr, name, w.dataDir, scripts, opts.capacity, name), 0o600)
		c.workers[name] = w
		c.startWorker(name)
	}
	for _, name := range opts.workers {
		c.waitWorkerState(name, "WORKER_STATE_READY", 30*time.Second)
	}
	return c
}

func (c *cluster) writeFile(path, body string, mode os.FileMode) {
	c.t.Helper()
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) spawn(name string, args ...string) *proc {
	c.t.Helper()
	logPath := filepath.Join(c.dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append([]string{"HOME=" + c.dir, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

func (c *cluster) startScheduler() {
	c.t.Helper()
	c.sched = c.spawn("scheduler", "scheduler", "--config", c.schedCfg)
	e2e.WaitListening(c.t, c.schedAdr)
}

func (c *cluster) startWorker(name string) {
	c.t.Helper()
	w := c.workers[name]
	w.proc = c.spawn(name, "worker", "--config", w.cfgPath)
	e2e.WaitListening(c.t, w.addr)
}

// decommission runs `baton worker decommission` for worker name: its
// keeper stops every job and ends.
func (c *cluster) decommission(name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, "worker", "decommission", "--config", c.workers[name].cfgPath)
	cmd.Env = append([]string{"HOME=" + c.dir, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// workerMarker is the argv[0] of the sleeps a worker's jobs run.
func (c *cluster) workerMarker(name string) string { return c.marker + "-" + name }

// napJob is a StartJob body for a marked sleep on worker (any when empty).
func (c *cluster) napJob(worker string, seconds int) string {
	marker := c.marker + "-any"
	w := ""
	if worker != "" {
		marker = c.workerMarker(worker)
		w = fmt.Sprintf(`"worker_id":%q,`, worker)
	}
	return fmt.Sprintf(`{%s"command":"bash","path":"nap.sh","args":[%q,%q]}`, w, marker, strconv.Itoa(seconds))
}

// cleanup shuts the live workers down gracefully (SIGTERM: a planned
// restart, their jobs run on), decommissions every worker (`baton worker
// decommission`: its keeper stops its jobs and ends) and fails the test if
// that left any job process behind, then kills whatever is left.
func (c *cluster) cleanup() {
	var wg sync.WaitGroup
	for _, w := range c.workers {
		p := w.proc
		if p == nil || p.exited() {
			continue
		}
		wg.Go(func() {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			if err := p.signal(syscall.SIGTERM); err != nil {
				return
			}
			if exited, err := p.wait(30 * time.Second); !exited {
				c.t.Errorf("%s did not exit within 30s of SIGTERM", w.name)
			} else if err != nil {
				c.t.Errorf("%s exit after SIGTERM: %v", w.name, err)
			}
		})
	}
	wg.Wait()
	for _, w := range c.workers {
		wg.Go(func() {
			if out, err := c.decommission(w.name); err != nil {
				c.t.Errorf("decommission of %s: %v\n%s", w.name, err, out)
			}
			if left := waitNoMarked(c.workerMarker(w.name), 5*time.Second); len(left) > 0 {
				c.t.Errorf("decommission of %s left job processes %v", w.name, left)
			}
		})
	}
	wg.Wait()
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	for _, p := range procs {
		p.kill()
	}
	if left := markedProcs(c.marker); len(left) > 0 {
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, w := range c.workers {
		removeCgroupTree(cgroupDirFor(w.dataDir))
		removeV1Parents(w.dataDir)
	}
	if c.t.Failed() {
		for _, p := range procs {
			raw, _ := os.ReadFile(p.logPath)
			if len(raw) > 6000 {
				raw = raw[len(raw)-6000:]
			}
			c.t.Logf("--- %s log (tail) ---\n%s", p.name, raw)
		}
	}
}

// rpcError is a Connect error body.
type rpcError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// call makes a Connect unary JSON call on the scheduler. It returns the
// HTTP status and, for errors, the Connect error body.
func (c *cluster) call(method, body string, out any) (int, rpcError, error) {
	res, err := c.client.Post("http://"+c.schedAdr+"/baton.v1.SchedulerService/"+method, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, rpcError{}, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return res.StatusCode, rpcError{}, err
	}
	if res.StatusCode != http.StatusOK {
		var e rpcError
		if err := json.Unmarshal(raw, &e); err != nil {
			return res.StatusCode, e, fmt.Errorf("%s: HTTP %d: %s", method, res.StatusCode, raw)
		}
		return res.StatusCode, e, nil
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return res.StatusCode, rpcError{}, fmt.Errorf("%s: %v in %s", method, err, raw)
		}
	}
	return res.StatusCode, rpcError{}, nil
}

// mustCall fails the test unless the call succeeds.
func (c *cluster) mustCall(method, body string, out any) {
	c.t.Helper()
	code, e, err := c.call(method, body, out)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, body, err)
	}
	if code != http.StatusOK {
		c.t.Fatalf("%s %s: HTTP %d %+v", method, body, code, e)
	}
}

type jobStatus struct {
	JobID    string `json:"jobId"`
	WorkerID string `json:"workerId"`
	State    string `json:"state"`
	ExitCode *int   `json:"exitCode"`
	Signal   string `json:"signal"`
	Reason   string `json:"reason"`
}

func (s jobStatus) String() string {
	ec := "-"
	if s.ExitCode != nil {
		ec = strconv.Itoa(*s.ExitCode)
	}
	return fmt.Sprintf("%s on %s: %s exit=%s signal=%q reason=%q", s.JobID, s.WorkerID, s.State, ec, s.Signal, s.Reason)
}

// start starts a job and returns its status.
func (c *cluster) start(body string) jobStatus {
	c.t.Helper()
	var res struct {
		JobID string      `json:"jobId"`
		Jobs  []jobStatus `json:"jobs"`
	}
	c.mustCall("StartJob", body, &res)
	if res.JobID == "" || len(res.Jobs) != 1 {
		c.t.Fatalf("StartJob %s: %+v", body, res)
	}
	return res.Jobs[0]
}

func (c *cluster) query(id string) jobStatus {
	c.t.Helper()
	var res struct {
		Status jobStatus `json:"status"`
	}
	c.mustCall("QueryJob", fmt.Sprintf(`{"job_id":%q}`, id), &res)
	return res.Status
}

// waitJob polls QueryJob until ok holds, and returns the status.
func (c *cluster) waitJob(id string, d time.Duration, what string, ok func(jobStatus) bool) jobStatus {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := c.query(id)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("job %s: not %s within %v; last %v", id, what, d, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *cluster) waitJobState(id, state string, d time.Duration) jobStatus {
	c.t.Helper()
	return c.waitJob(id, d, state, func(s jobStatus) bool { return s.State == state })
}

type rosterEntry struct {
	Name         string    `json:"name"`
	State        string    `json:"state"`
	RegisteredAt time.Time `json:"registeredAt"`
}

// roster returns the ListWorkers entries by name.
func (c *cluster) roster() map[string]rosterEntry {
	c.t.Helper()
	var res struct {
		Workers []rosterEntry `json:"workers"`
	}
	c.mustCall("ListWorkers", `{}`, &res)
	out := map[string]rosterEntry{}
	for _, w := range res.Workers {
		out[w.Name] = w
	}
	return out
}

// listWorkers returns worker name → state.
func (c *cluster) listWorkers() map[string]string {
	c.t.Helper()
	out := map[string]string{}
	for name, w := range c.roster() {
		out[name] = w.State
	}
	return out
}

// waitWorkerState polls ListWorkers until name is in state and returns
// when that was first seen.
func (c *cluster) waitWorkerState(name, state string, d time.Duration) time.Time {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := c.listWorkers()[name]
		if got == state {
			return time.Now()
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("worker %s: not %s within %v (last %q)", name, state, d, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listJobs returns every job the scheduler lists.
func (c *cluster) listJobs() []jobStatus {
	c.t.Helper()
	var all []jobStatus
	token := ""
	for range 1000 {
		var res struct {
			Jobs          []jobStatus `json:"jobs"`
			NextPageToken string      `json:"nextPageToken"`
		}
		c.mustCall("ListJobs", fmt.Sprintf(`{"page_size":1000,"page_token":%q}`, token), &res)
		all = append(all, res.Jobs...)
		if res.NextPageToken == "" {
			return all
		}
		token = res.NextPageToken
	}
	c.t.Fatal("ListJobs: too many pages")
	return nil
}

// markedProcs lists live processes whose command line contains marker.
func markedProcs(marker string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(raw, []byte(marker)) {
			continue
		}
		if procState(pid) == "Z" {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// procStat returns the state and parent pid of pid from /proc/pid/stat.
func procStat(pid int) (string, int) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return "", 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return f[0], ppid
}

func procState(pid int) string { st, _ := procStat(pid); return st }

// zombieChildren lists the zombie children of parent.
func zombieChildren(parent int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ppid := procStat(pid); st == "Z" && ppid == parent {
			out = append(out, pid)
		}
	}
	return out
}

func fdCount(pid int) int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(entries)
}

// cgroupV2Mount is where cgroup v2 is mounted, or "".
func cgroupV2Mount() string {
	raw, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	return ""
}

// cgroupDirFor is the cgroup v2 parent of the worker with dataDir, or "".
func cgroupDirFor(dataDir string) string {
	mount := cgroupV2Mount()
	if mount == "" {
		return ""
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(mount, "baton-"+hex.EncodeToString(sum[:4]))
}

// childCgroups lists the cgroup directories below dir.
func childCgroups(dir string) []string {
	var out []string
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// removeCgroupTree kills what is left in a worker's cgroup tree and
// removes it, best effort.
func removeCgroupTree(dir string) {
	if dir == "" {
		return
	}
	if _, err := os.Stat(dir); err != nil {
		return
	}
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		raw, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil || bytes.Contains(raw, []byte("populated 0")) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	var rm func(string)
	rm = func(d string) {
		for _, sub := range childCgroups(d) {
			rm(sub)
		}
		_ = syscall.Rmdir(d)
	}
	rm(dir)
}

var (
	secondBuild    sync.Once
	secondBin      string
	secondBuildErr error
)

// secondBaton builds the binary a second time, as e2e.SharedBaton does but
// with another version linked in (-X main.version=second), so that its
// content, and with it the build a keeper compares, differs from the
// first. It lies next to the first binary and is removed with it.
func secondBaton(t *testing.T) string {
	t.Helper()
	first := e2e.SharedBaton(t)
	secondBuild.Do(func() {
		bin := filepath.Join(filepath.Dir(first), "baton-second")
		cmd := e2e.BuildCommand(bin)
		pkg := cmd.Args[len(cmd.Args)-1]
		cmd.Args = append(cmd.Args[:len(cmd.Args)-1:len(cmd.Args)-1], "-ldflags=-X=main.version=second", pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			secondBuildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		secondBin = bin
	})
	if secondBuildErr != nil {
		t.Fatal(secondBuildErr)
	}
	return secondBin
}

// startWorkerFrom starts worker name from the binary bin instead of the
// cluster's own.
func (c *cluster) startWorkerFrom(name, bin string) {
	c.t.Helper()
	saved := c.bin
	c.bin = bin
	defer func() { c.bin = saved }()
	c.startWorker(name)
}

// waitRegisteredSince polls ListWorkers until worker name is READY with a
// registration made after since (the roster keeps saying READY for a
// while after the worker process died), and returns when that was seen.
func (c *cluster) waitRegisteredSince(name string, since time.Time, d time.Duration) time.Time {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		w := c.roster()[name]
		if w.State == "WORKER_STATE_READY" && w.RegisteredAt.After(since) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("worker %s: not READY with a registration after %v within %v (last %+v)", name, since.Format(time.RFC3339Nano), d, w)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procStartTime returns when pid started, in clock ticks since boot
// (field 22 of /proc/pid/stat), or "" if there is no such process: with
// the pid it tells a process from a later one that reuses the pid.
func procStartTime(pid int) string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:]) // from field 3, the state
	if len(f) < 20 {
		return ""
	}
	return f[22-3]
}
