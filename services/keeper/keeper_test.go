package keeper

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	keeperv1 "github.com/baton-run/baton/gen/baton/keeper/v1"
	"github.com/baton-run/baton/services/jobrun"
)

// The keepers the tests start are this test binary, run as `keeper
// --data-dir D`, as the worker runs the baton binary.
func TestMain(m *testing.M) {
	if len(os.Args) == 5 && os.Args[1] == "keeper" && os.Args[4] == "--check" {
		err := Check(os.Args[3], os.Stdin, os.Stdout)
		if err != nil {
			fmt.Fprintln(os.Stderr, "keeper:", err)
		}
		writeCoverage(m)
		if err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) == 4 && os.Args[1] == "keeper" && os.Args[2] == "--data-dir" {
		if d, err := time.ParseDuration(os.Getenv("BATON_TEST_KEEPER_IDLE")); err == nil {
			IdleExit = d
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err := Run(ctx, os.Args[3], os.Stdin, slog.New(slog.NewJSONHandler(os.Stderr, nil)))
		stop()
		if err != nil && !errors.Is(err, ErrRunning) {
			fmt.Fprintln(os.Stderr, "keeper:", err)
			os.Exit(1)
		}
		writeCoverage(m)
		os.Exit(0)
	}
	flag.Parse()
	if f := flag.Lookup("test.gocoverdir"); testing.CoverMode() != "" && f != nil && f.Value.String() != "" {
		if dir, err := filepath.Abs(f.Value.String()); err == nil {
			_ = os.Setenv(coverDirEnv, dir)
		}
	}
	os.Exit(m.Run())
}

// writeCoverage writes what this keeper process ran to the coverage
// directory of the test binary that started it: running no test, a test
// binary writes its counters as it ends.
func writeCoverage(m *testing.M) {
	dir := os.Getenv(coverDirEnv)
	if dir == "" {
		return
	}
	os.Args = []string{os.Args[0], "-test.run=^$", "-test.gocoverdir=" + dir}
	stdout := os.Stdout
	os.Stdout, _ = os.OpenFile(os.DevNull, os.O_WRONLY, 0) // its PASS is not the keeper's answer
	m.Run()
	os.Stdout = stdout
}

// coverDirEnv passes the test binary's coverage directory to the keeper
// processes it starts.
const coverDirEnv = "BATON_TEST_KEEPER_COVERDIR"

const testWait = 20 * time.Second

// changes records what a Client passes to OnChange.
type changes struct {
	mu  sync.Mutex
	all []jobrun.Status
}

func (c *changes) add(st jobrun.Status) {
	c.mu.Lock()
	c.all = append(c.all, st)
	c.mu.Unlock()
}

// await waits for a change of job id into state.
func (c *changes) await(t *testing.T, id string, state jobrun.State) jobrun.Status {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, st := range c.all {
			if st.ID == id && st.State == state {
				c.mu.Unlock()
				return st
			}
		}
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no change of %s to %v; saw %v", id, state, c.states(id))
	return jobrun.Status{}
}

func (c *changes) states(id string) []jobrun.State {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []jobrun.State
	for _, st := range c.all {
		if st.ID == id {
			out = append(out, st.State)
		}
	}
	return out
}

// testOptions are runtime options for a keeper of a new data directory.
func testOptions(t *testing.T) jobrun.Options {
	return jobrun.Options{
		DataDir:         t.TempDir(),
		ScriptsDir:      t.TempDir(),
		AllowedCommands: []string{"sh", "sleep", "true"},
		StopGrace:       500 * time.Millisecond,
		Capacity:        8,
		CgroupParent:    "-",
	}
}

// open opens a Client, whose keeper is decommissioned when the test ends.
func open(t *testing.T, opts jobrun.Options, ch *changes) *Client {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Options: opts, Executable: exe}
	if ch != nil {
		cfg.OnChange = ch.add
	}
	c, err := Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Close(context.Background())
		if _, err := Decommission(context.Background(), opts.DataDir); err != nil {
			t.Errorf("Decommission: %v", err)
		}
	})
	return c
}

// keeperPid reads the pid of the keeper of dir from its lock file.
func keeperPid(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, lockName))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestClientRunsJobsInTheKeeper(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	var ch changes
	c := open(t, opts, &ch)

	var out bytes.Buffer
	var started jobrun.Status
	end, err := c.Run(t.Context(), "hello", jobrun.Spec{Command: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 3"}}, 0,
		func(st jobrun.Status) error { started = st; return nil },
		func(ch jobrun.Chunk) error { out.Write(ch.Data); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if started.ID != "hello" || started.PID == 0 || end.State != jobrun.StateFailed || end.ExitCode != 3 {
		t.Errorf("Run: started %+v, ended %v code %d", started, end.State, end.ExitCode)
	}
	if got := out.String(); got != "out\nerr\n" && got != "err\nout\n" {
		t.Errorf("Run's output %q", got)
	}
	if pid := keeperPid(t, opts.DataDir); started.PID > 0 && parentOf(t, started.PID) != pid && alive(started.PID) {
		t.Errorf("the job is not the keeper's child")
	}
	ch.await(t, "hello", jobrun.StateFailed)
	// What the run cost crosses the socket, in the end and in a status.
	// (A shell's peak is below the keeper's own: with rusage it is 0.)
	if u := end.Usage; u.Source == "" || u.CPUUser+u.CPUSystem <= 0 || u.PeakMemory < 0 || u.Wall != end.EndedAt.Sub(end.StartedAt) {
		t.Errorf("Run's end: usage %+v", u)
	}
	if st, err := c.Status(t.Context(), "hello"); err != nil || st.Usage != end.Usage {
		t.Errorf("Status: usage %+v, want %+v (%v)", st.Usage, end.Usage, err)
	}

	st, created, err := c.Start(t.Context(), "sleeper", jobrun.Spec{Command: "sleep", Args: []string{"1000"}})
	if err != nil || !created || st.State != jobrun.StateRunning {
		t.Fatalf("Start: %+v %v %v", st, created, err)
	}
	if again, created, err := c.Start(t.Context(), "sleeper", jobrun.Spec{Command: "sleep", Args: []string{"1000"}}); err != nil || created || again.PID != st.PID {
		t.Errorf("Start again: %+v %v %v", again, created, err)
	}
	ch.await(t, "sleeper", jobrun.StateRunning)
	if n := c.Running(); n != 1 {
		t.Errorf("Running() = %d, want 1", n)
	}
	jobs, more, err := c.Page(t.Context(), jobrun.Query{Live: true})
	if err != nil || more || len(jobs) != 1 || jobs[0].ID != "sleeper" {
		t.Errorf("Page(live): %v %v %v", jobs, more, err)
	}
	jobs, more, err = c.Page(t.Context(), jobrun.Query{Limit: 1})
	if err != nil || !more || len(jobs) != 1 {
		t.Errorf("Page(limit 1): %d jobs, more %v, %v", len(jobs), more, err)
	}
	jobs, _, err = c.Page(t.Context(), jobrun.Query{States: []jobrun.State{jobrun.StateFailed}})
	if err != nil || len(jobs) != 1 || jobs[0].ID != "hello" {
		t.Errorf("Page(failed): %v %v", jobs, err)
	}
	stopped, err := c.Stop(t.Context(), "sleeper", "alice")
	if err != nil || stopped.State != jobrun.StateStopped || stopped.StoppedBy != "alice" {
		t.Errorf("Stop: %+v %v", stopped, err)
	}
	var replay bytes.Buffer
	if st, err := c.Output(t.Context(), "hello", jobrun.OutputRequest{Streams: jobrun.StreamStdout}, func(ch jobrun.Chunk) error {
		replay.Write(ch.Data)
		return nil
	}); err != nil || replay.String() != "out\n" || st.ExitCode != 3 {
		t.Errorf("Output: %q %v %v", replay.String(), st.State, err)
	}

	// The runtime's errors arrive as themselves.
	if _, err := c.Status(t.Context(), "nope"); !errors.Is(err, jobrun.ErrNotFound) {
		t.Errorf("Status of an unknown job: %v", err)
	}
	if _, _, err := c.Start(t.Context(), "bad", jobrun.Spec{Command: "curl"}); !errors.Is(err, jobrun.ErrCommandNotAllowed) {
		t.Errorf("Start of a command not allowed: %v", err)
	}
	if _, _, err := c.Start(t.Context(), "sleeper", jobrun.Spec{Command: "sleep", Args: []string{"1"}}); !errors.Is(err, jobrun.ErrConflict) {
		t.Errorf("Start with a used id: %v", err)
	}
	if _, err := c.Output(t.Context(), "hello", jobrun.OutputRequest{Offset: -1}, func(jobrun.Chunk) error { return nil }); !errors.Is(err, jobrun.ErrInvalidSpec) {
		t.Errorf("Output at a negative offset: %v", err)
	}
	stop := errors.New("enough")
	if _, err := c.Output(t.Context(), "hello", jobrun.OutputRequest{}, func(jobrun.Chunk) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Output whose callback fails: %v", err)
	}
}

func parentOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// TestJobsOutliveTheClient: a job keeps running when its worker's Client
// goes away, and a new Client finds it, and finds the end of a job that
// ended meanwhile.
func TestJobsOutliveTheClient(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	first := open(t, opts, nil)
	long, _, err := first.Start(t.Context(), "long", jobrun.Spec{Command: "sleep", Args: []string{"1000"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := first.Start(t.Context(), "short", jobrun.Spec{Command: "sh", Args: []string{"-c", "sleep 0.3; echo done"}}); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	var ch changes
	second := open(t, opts, &ch)
	st, err := second.Status(t.Context(), "long")
	if err != nil || st.State != jobrun.StateRunning || st.PID != long.PID || !alive(long.PID) {
		t.Errorf("the long job through a new client: %+v %v", st, err)
	}
	if st, err := second.Status(t.Context(), "short"); err != nil || st.State != jobrun.StateSucceeded {
		t.Errorf("the short job's end: %+v %v", st, err)
	}
	// Decommission: the keeper stops the job, tells the client, and ends.
	pid := keeperPid(t, opts.DataDir)
	found, err := Decommission(t.Context(), opts.DataDir)
	if err != nil || !found {
		t.Fatalf("Decommission: %v %v", found, err)
	}
	ch.await(t, "long", jobrun.StateStopped)
	select {
	case <-second.Ending():
	case <-time.After(testWait):
		t.Fatal("the client was not told the keeper ended")
	}
	waitGone(t, pid)
	if alive(long.PID) {
		t.Errorf("the decommission left the job's process %d", long.PID)
	}
	if found, err := Decommission(t.Context(), opts.DataDir); err != nil || found {
		t.Errorf("Decommission without a keeper: %v %v", found, err)
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for alive(pid) && parentOf(t, pid) != -1 && !zombie(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still there", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return f[0] == "Z"
}

// TestKilledKeeperIsReplaced: when the keeper is killed, the Client starts
// a new one, which reports the jobs that ran as LOST; their processes are
// killed, and the Client passes the ends on.
func TestKilledKeeperIsReplaced(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	opts.CgroupParent = "" // leftovers are found through their cgroup
	var ch changes
	c := open(t, opts, &ch)
	st, _, err := c.Start(t.Context(), "orphan", jobrun.Spec{Command: "sleep", Args: []string{"1000"}})
	if err != nil {
		t.Fatal(err)
	}
	ch.await(t, "orphan", jobrun.StateRunning)
	old := keeperPid(t, opts.DataDir)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	lost := ch.await(t, "orphan", jobrun.StateLost)
	if !strings.Contains(lost.Reason, "its keeper ended while the job ran") {
		t.Errorf("LOST, reason %q", lost.Reason)
	}
	if now := keeperPid(t, opts.DataDir); now == old {
		t.Errorf("no new keeper")
	}
	deadline := time.Now().Add(testWait)
	for alive(st.PID) && !zombie(st.PID) {
		if time.Now().After(deadline) {
			t.Fatalf("the lost job's process %d survived", st.PID)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, err := c.Start(t.Context(), "after", jobrun.Spec{Command: "true"}); err != nil {
		t.Errorf("Start through the new keeper: %v", err)
	}
}

// TestUpgradeKeepsJobsAndPid: a worker whose options differ from the
// keeper's has it execute again in place: the same pid, the running job
// carried on with all its output.
func TestUpgradeKeepsJobsAndPid(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	first := open(t, opts, nil)
	pid := keeperPid(t, opts.DataDir)
	job, _, err := first.Start(t.Context(), "counter", jobrun.Spec{Command: "sh", Args: []string{"-c", "for i in $(seq 1 30); do echo $i; sleep 0.03; done; exit 5"}})
	if err != nil {
		t.Fatal(err)
	}
	// A follower through the first client rides the upgrade out.
	var followed bytes.Buffer
	followErr := make(chan error, 1)
	go func() {
		st, err := first.Output(t.Context(), "counter", jobrun.OutputRequest{Follow: true}, func(ch jobrun.Chunk) error {
			followed.Write(ch.Data)
			return nil
		})
		if err == nil && st.ExitCode != 5 {
			err = fmt.Errorf("followed to %v code %d", st.State, st.ExitCode)
		}
		followErr <- err
	}()
	time.Sleep(200 * time.Millisecond)
	changed := opts
	changed.Capacity = 9
	second := open(t, changed, nil)
	if now := keeperPid(t, opts.DataDir); now != pid {
		t.Errorf("keeper pid %d after the upgrade, was %d", now, pid)
	}
	var out bytes.Buffer
	end, err := second.Output(t.Context(), "counter", jobrun.OutputRequest{Follow: true}, func(ch jobrun.Chunk) error {
		out.Write(ch.Data)
		return nil
	})
	var want strings.Builder
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	if err != nil || end.ExitCode != 5 || end.PID != job.PID || out.String() != want.String() {
		t.Errorf("after the upgrade: %v code %d pid %d (was %d), output %q, %v", end.State, end.ExitCode, end.PID, job.PID, out.String(), err)
	}
	if err := <-followErr; err != nil || followed.String() != want.String() {
		t.Errorf("a follow through the upgrade: %q, %v", followed.String(), err)
	}

	// SIGUSR2 has the keeper execute its executable again, jobs and all.
	sleeper, _, err := second.Start(t.Context(), "sleeper", jobrun.Spec{Command: "sleep", Args: []string{"1000"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testWait)
	for execs(t, opts.DataDir) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no exec after SIGUSR2")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st, err := second.Stop(t.Context(), "sleeper", "test"); err != nil || st.State != jobrun.StateStopped || st.PID != sleeper.PID {
		t.Errorf("the job after SIGUSR2: %+v %v", st, err)
	}
	if now := keeperPid(t, opts.DataDir); now != pid {
		t.Errorf("keeper pid %d after SIGUSR2, was %d", now, pid)
	}
}

// execs counts the builds the keeper of dir executed, from its log.
func execs(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, logName))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("keeper executing a new build"))
}

// TestIdleKeeperEnds: a keeper with no job and no worker ends.
func TestIdleKeeperEnds(t *testing.T) {
	t.Setenv("BATON_TEST_KEEPER_IDLE", "300ms")
	opts := testOptions(t)
	c := open(t, opts, nil)
	pid := keeperPid(t, opts.DataDir)
	if _, err := c.Run(t.Context(), "one", jobrun.Spec{Command: "true"}, 0, func(jobrun.Status) error { return nil }, func(jobrun.Chunk) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
}

// TestSocketAnswersItsOwnerOnly: a connection from another uid is closed
// before a byte is read; the socket file is the owner's only.
func TestSocketAnswersItsOwnerOnly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l, err := listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(filepath.Join(dir, socketName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, %v", fi.Mode(), err)
	}
	l.(*ownerListener).uid = os.Geteuid() + 1 // as if the caller were someone else
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	conn, err := dial(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(testWait))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("a connection of another uid was served")
	}
	select {
	case c := <-accepted:
		t.Errorf("accepted %v", c)
	default:
	}
}

// TestLongDataDir: a data directory whose socket path is longer than a
// unix socket address holds still works.
func TestLongDataDir(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	opts.DataDir = filepath.Join(opts.DataDir, strings.Repeat("d", 60), strings.Repeat("e", 60))
	c := open(t, opts, nil)
	if st, err := c.Run(t.Context(), "one", jobrun.Spec{Command: "true"}, 0, func(jobrun.Status) error { return nil }, func(jobrun.Chunk) error { return nil }); err != nil || st.State != jobrun.StateSucceeded {
		t.Errorf("Run: %v %v", st.State, err)
	}
}

// TestUpgradeRefusesWhatCannotCarryOn: an upgrade to a binary that is not
// a keeper, or to options the new image would refuse, is refused before
// the keeper lets go of anything: it keeps serving, with its jobs.
func TestUpgradeRefusesWhatCannotCarryOn(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	c := open(t, opts, nil)
	job, _, err := c.Start(t.Context(), "sleeper", jobrun.Spec{Command: "sleep", Args: []string{"1000"}})
	if err != nil {
		t.Fatal(err)
	}
	pid := keeperPid(t, opts.DataDir)
	exe, _ := os.Executable()
	bad := opts
	bad.ScriptsDir = filepath.Join(t.TempDir(), "missing")
	_, badOptions, err := encodeOptions(bad)
	if err != nil {
		t.Fatal(err)
	}
	notBaton := filepath.Join(t.TempDir(), "not-baton")
	if err := os.WriteFile(notBaton, []byte("#!/bin/sh\necho hello\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		executable string
		options    []byte
	}{
		{"not a keeper", notBaton, c.options},
		{"not a program", "/etc/passwd", c.options},
		{"a relative path", "baton", c.options},
		{"options it refuses", exe, badOptions},
	} {
		_, err := c.rpc.Upgrade(t.Context(), connect.NewRequest(&keeperv1.UpgradeRequest{Executable: tc.executable, Options: tc.options}))
		if connect.CodeOf(err) != connect.CodeFailedPrecondition {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if now := keeperPid(t, opts.DataDir); now != pid {
		t.Errorf("keeper pid %d, was %d", now, pid)
	}
	if st, err := c.Status(t.Context(), "sleeper"); err != nil || st.State != jobrun.StateRunning || st.PID != job.PID {
		t.Errorf("the job after refused upgrades: %+v %v", st, err)
	}
}

// TestDataDirOthersCanWriteIsRefused: a data directory others may write
// to (where they could plant the socket, lock or log) gets no keeper.
func TestDataDirOthersCanWriteIsRefused(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	if err := os.Chmod(opts.DataDir, 0o777); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	if _, err := Open(t.Context(), Config{Options: opts, Executable: exe}); err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Errorf("Open on a data directory of mode 0777: %v", err)
	}
}

func TestReadStats(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	c := open(t, opts, nil)
	if _, _, err := c.Start(t.Context(), "sleeper", jobrun.Spec{Command: "sleep", Args: []string{"1000"}}); err != nil {
		t.Fatal(err)
	}
	st, err := ReadStats(t.Context(), opts.DataDir)
	if err != nil || st.Running != 1 || st.HeapLiveBytes <= 0 || st.RSSBytes <= 0 || st.Pid != keeperPid(t, opts.DataDir) {
		t.Errorf("ReadStats: %+v %v", st, err)
	}
	if _, err := ReadStats(t.Context(), t.TempDir()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("ReadStats without a keeper: %v", err)
	}
}

// TestChunksFromAnOlderKeeper: against a keeper of protocol version 1
// (before positions_only) the worker takes the output's bytes from the
// socket; from version 2 it reads the files itself. Both give the same
// bytes.
func TestChunksFromAnOlderKeeper(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	c := open(t, opts, nil)
	spec := jobrun.Spec{Command: "sh", Args: []string{"-c", "for i in $(seq 1 50); do echo out $i; echo err $i >&2; done; exit 2"}}
	read := func(id string) (run, replay, stderr string) {
		var a, b, e bytes.Buffer
		end, err := c.Run(t.Context(), id, spec, 0, func(jobrun.Status) error { return nil }, func(ch jobrun.Chunk) error {
			a.Write(ch.Data)
			return nil
		})
		if err != nil || end.ExitCode != 2 {
			t.Fatalf("Run %s: %v %v", id, end.State, err)
		}
		if _, err := c.Output(t.Context(), id, jobrun.OutputRequest{Follow: true}, func(ch jobrun.Chunk) error {
			b.Write(ch.Data)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Output(t.Context(), id, jobrun.OutputRequest{Offset: 6, Streams: jobrun.StreamStderr}, func(ch jobrun.Chunk) error {
			e.Write(ch.Data)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return a.String(), b.String(), e.String()
	}
	if v := c.protocol.Load(); v != ProtocolVersion {
		t.Fatalf("the keeper speaks version %d", v)
	}
	filesRun, filesReplay, filesErr := read("from-files")
	c.protocol.Store(1)
	defer c.protocol.Store(ProtocolVersion)
	sockRun, sockReplay, sockErr := read("from-socket")
	// The two jobs' streams interleave as their copiers happened to read
	// them; each stream on its own is the same.
	if filesRun != filesReplay || sockRun != sockReplay || filesErr != sockErr || len(filesRun) != len(sockRun) {
		t.Errorf("files and socket differ:\n%q\n%q\n%q\n%q", filesRun, sockRun, filesErr, sockErr)
	}
	if !strings.HasPrefix(filesErr, "err 2\n") || !strings.Contains(filesReplay, "out 50\n") || filesRun != filesReplay {
		t.Errorf("output: run %q replay %q stderr from 6 %q", filesRun, filesReplay, filesErr)
	}
	if _, err := c.Output(t.Context(), "nope", jobrun.OutputRequest{}, func(jobrun.Chunk) error { return nil }); !errors.Is(err, jobrun.ErrNotFound) {
		t.Errorf("Output of an unknown job: %v", err)
	}
}

// TestScriptThroughTheKeeper: a script of the largest size crosses the
// socket with its job, its status describes it without its content, and
// a keeper of a protocol before scripts is never sent one it would drop.
func TestScriptThroughTheKeeper(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	c := open(t, opts, nil)
	head := "echo \"$(basename \"$0\") $1\"\nexit 0\n#"
	script := []byte(head + strings.Repeat("x", jobrun.MaxScriptBytes-len(head)))
	spec := jobrun.Spec{Command: "sh", Script: script, ScriptName: "big.sh", Args: []string{"arg"}}
	var out bytes.Buffer
	end, err := c.Run(t.Context(), "big", spec, 0, func(jobrun.Status) error { return nil }, func(ch jobrun.Chunk) error {
		out.Write(ch.Data)
		return nil
	})
	if err != nil || end.State != jobrun.StateSucceeded || out.String() != "big.sh arg\n" {
		t.Fatalf("Run: %v %s %q, %v", end.State, end.Reason, out.String(), err)
	}
	st, err := c.Status(t.Context(), "big")
	if err != nil || st.Spec.Script != nil || st.Spec.ScriptName != "big.sh" || st.Spec.ScriptSize != jobrun.MaxScriptBytes || len(st.Spec.ScriptSHA256) != 64 {
		t.Errorf("Status: name %q size %d sha %q content %d bytes, %v", st.Spec.ScriptName, st.Spec.ScriptSize, st.Spec.ScriptSHA256, len(st.Spec.Script), err)
	}
	c.protocol.Store(2)
	defer c.protocol.Store(ProtocolVersion)
	if _, _, err := c.Start(t.Context(), "old", spec); !errors.Is(err, jobrun.ErrExec) {
		t.Errorf("a script to a keeper of protocol 2: %v", err)
	}
	if _, err := c.Status(t.Context(), "old"); !errors.Is(err, jobrun.ErrNotFound) {
		t.Errorf("the job refused for an old keeper: %v", err)
	}
}
