package jobrun

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// needRoot skips a test that starts jobs under other uids.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("jobs run under other uids only when the worker is root (setuid(2) in the child); this test runs as uid %d", os.Geteuid())
	}
}

// reachableTempDir is t.TempDir made reachable by other uids: the testing
// package creates its parent with mode 0700.
func reachableTempDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Each test takes uids from a range of its own, far from the default one,
// so parallel tests (and workers elsewhere on the host) never share a uid.
func testUIDs(first uint32, n uint32) UIDRange {
	return UIDRange{First: 3_100_000 + first, Last: 3_100_000 + first + n - 1}
}

// uidOptions are Options for a Runner with per-job uids from rng over fresh
// reachable directories and a lease directory of the test's own.
func uidOptions(t testing.TB, rng UIDRange) Options {
	t.Helper()
	return Options{
		DataDir:         reachableTempDir(t),
		ScriptsDir:      reachableTempDir(t),
		AllowedCommands: append(slices.Clone(testCommands), "id", "cat", "ls", "kill"),
		StopGrace:       300 * time.Millisecond,
		JobUIDs:         rng,
		UIDLeaseDir:     t.TempDir(),
	}
}

func uidRunner(t testing.TB, rng UIDRange, mod func(*Options)) (*Runner, string) {
	t.Helper()
	needRoot(t)
	var scripts string
	r, _ := newRunner(t, func(o *Options) {
		*o = uidOptions(t, rng)
		if mod != nil {
			mod(o)
		}
		scripts = o.ScriptsDir
	})
	return r, scripts
}

// waitForLines waits until the job's stdout has at least n lines and
// returns them.
func waitForLines(t testing.TB, r *Runner, id string, n int) []string {
	t.Helper()
	var lines []string
	eventually(t, id+" printing "+strconv.Itoa(n)+" lines", func() bool {
		out := string(readOutput(t, r, id, OutputRequest{Streams: StreamStdout}))
		lines = strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		return strings.HasSuffix(out, "\n") && len(lines) >= n
	})
	return lines
}

func fileOwner(t testing.TB, path string) (uid, gid uint32, mode os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode().Perm()
}

// uidHolders lists the live processes running under uid.
func uidHolders(uid uint32) []int {
	return uidProcesses(UIDRange{First: uid, Last: uid})[uid]
}

// TestJobUIDPerJob runs two jobs at once: each runs under a uid of its own
// from the range (never root, never the worker's), with gid = uid and no
// supplementary groups, in a home directory that is its own while it runs
// and the worker's again afterwards; the worker's files stay the worker's.
func TestJobUIDPerJob(t *testing.T) {
	t.Parallel()
	rng := testUIDs(0, 10)
	r, _ := uidRunner(t, rng, nil)
	spec := Spec{Command: "sh", Args: []string{"-c", "id -u; id -g; id -G; pwd; echo $HOME; exec sleep 1000"}}
	ids := []string{"first", "second"}
	uids := map[string]uint32{}
	for _, id := range ids {
		mustStart(t, r, id, spec)
	}
	for _, id := range ids {
		lines := waitForLines(t, r, id, 5)
		uid64, err := strconv.ParseUint(lines[0], 10, 32)
		if err != nil {
			t.Fatalf("%s: id -u printed %q", id, lines[0])
		}
		uid := uint32(uid64)
		uids[id] = uid
		if uid == 0 || int(uid) == os.Geteuid() || !rng.contains(uid) {
			t.Errorf("%s runs as uid %d: want one in %s, not root, not the worker's", id, uid, rng)
		}
		if lines[1] != lines[0] || lines[2] != lines[0] {
			t.Errorf("%s: gid %q, groups %q; want gid = uid = %s and no supplementary group", id, lines[1], lines[2], lines[0])
		}
		home := filepath.Join(r.homesDir, id)
		if lines[3] != home || lines[4] != home {
			t.Errorf("%s: working directory %q, HOME %q; want %s", id, lines[3], lines[4], home)
		}
		if st, _ := r.Status(id); st.RunAs != "uid "+lines[0]+" (per job)" {
			t.Errorf("%s: RunAs = %q", id, st.RunAs)
		}
		if u, g, mode := fileOwner(t, home); u != uid || g != uid || mode != 0o700 {
			t.Errorf("%s: home is %d:%d mode %04o, want %d:%d 0700", id, u, g, mode, uid, uid)
		}
		for _, name := range []string{stdoutFile, indexFile} {
			if u, _, mode := fileOwner(t, filepath.Join(r.jobsDir, id, name)); int(u) != os.Geteuid() || mode != 0o600 {
				t.Errorf("%s/%s is uid %d mode %04o, want the worker's and 0600", id, name, u, mode)
			}
		}
	}
	if uids["first"] == uids["second"] {
		t.Errorf("two running jobs share uid %d", uids["first"])
	}
	for dir, want := range map[string]os.FileMode{
		filepath.Dir(r.jobsDir): 0o711, r.homesDir: 0o711, r.jobsDir: 0o700,
		filepath.Join(r.jobsDir, "first"): 0o700, r.jl.path: 0o600,
	} {
		if u, _, mode := fileOwner(t, dir); int(u) != os.Geteuid() || mode != want {
			t.Errorf("%s is uid %d mode %04o, want the worker's and %04o", dir, u, mode, want)
		}
	}
	for _, id := range ids {
		if _, err := r.Stop(t.Context(), id, "test"); err != nil {
			t.Fatal(err)
		}
		// The job left nothing in its home, so it is gone.
		if _, err := os.Lstat(filepath.Join(r.homesDir, id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: after the job, its empty home is still there: %v", id, err)
		}
		if _, err := os.Stat(filepath.Join(r.opts.UIDLeaseDir, strconv.FormatUint(uint64(uids[id]), 10))); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the lease of uid %d outlived the job: %v", id, uids[id], err)
		}
	}
}

// bobScript tries, one line per attempt, everything a job must not be able
// to do to another job or to the worker, and prints how each attempt ended.
const bobScript = `data=$1 alice=$2 pid=$3 key=$4
try() { name=$1; shift; out=$("$@" 2>&1 </dev/null); echo "$name rc=$? $out" | tr '\n' ' '; echo; }
try list-data ls "$data"
try list-jobs ls "$data/jobs"
try list-homes ls "$data/home"
try read-journal cat "$data/journal"
try read-stdout cat "$data/jobs/$alice/stdout"
try read-index cat "$data/jobs/$alice/index"
try read-home cat "$data/home/$alice/notes"
try list-home ls "$data/home/$alice"
try read-environ cat "/proc/$pid/environ"
try list-cwd ls "/proc/$pid/cwd/"
try signal kill -TERM "$pid"
try signal-kill kill -KILL "$pid"
try read-key cat "$key"
`

// TestJobCannotReachAnotherJob is RELIABILITY.md B2, written as the attack:
// bob's job tries to list, read and signal everything of alice's running job
// and to read the worker's key. Every attempt fails with the error the
// kernel gives a stranger, nothing of alice's leaks, and alice's job runs on.
func TestJobCannotReachAnotherJob(t *testing.T) {
	t.Parallel()
	r, scripts := uidRunner(t, testUIDs(100, 10), nil)
	writeScript(t, scripts, "bob.sh", bobScript)
	keyDir := reachableTempDir(t)
	key := filepath.Join(keyDir, "worker.key")
	if err := os.WriteFile(key, []byte("WORKER-PRIVATE-KEY"), 0o600); err != nil {
		t.Fatal(err)
	}
	const secret = "alice-env-secret"
	alice := mustStart(t, r, "alice", Spec{
		Command: "sh", Args: []string{"-c", "echo alice-stdout-secret; echo alice-home-secret > notes; echo ready; exec sleep 1000"},
		Env: map[string]string{"ALICE_TOKEN": secret}, Owner: "user/alice",
	})
	waitForLines(t, r, "alice", 2)

	mustStart(t, r, "bob", Spec{Command: "sh", Path: "bob.sh", Args: []string{filepath.Dir(r.jobsDir), "alice", strconv.Itoa(alice.PID), key}, Owner: "user/bob"})
	st := waitDone(t, r, "bob")
	out := string(readOutput(t, r, "bob", OutputRequest{}))
	if st.State != StateSucceeded {
		t.Fatalf("bob's job: %v %s\n%s", st.State, st.Reason, out)
	}
	t.Logf("bob's attempts:\n%s", out)
	results := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		name, rest, _ := strings.Cut(line, " ")
		results[name] = rest
	}
	// ls exits 2 when it cannot open a directory, cat and kill exit 1.
	const eacces, eperm = "Permission denied", "Operation not permitted"
	for _, tc := range []struct {
		attempt string
		rc      int
		err     string
	}{
		{"list-data", 2, eacces}, {"list-jobs", 2, eacces}, {"list-homes", 2, eacces},
		{"read-journal", 1, eacces}, {"read-stdout", 1, eacces}, {"read-index", 1, eacces},
		{"read-home", 1, eacces}, {"list-home", 2, eacces},
		{"read-environ", 1, eacces}, {"list-cwd", 2, eacces},
		{"signal", 1, eperm}, {"signal-kill", 1, eperm},
		{"read-key", 1, eacces},
	} {
		got, ok := results[tc.attempt]
		switch {
		case !ok:
			t.Errorf("%s: no result in bob's output:\n%s", tc.attempt, out)
		case !strings.HasPrefix(got, "rc="+strconv.Itoa(tc.rc)+" ") || !strings.HasSuffix(strings.TrimSpace(got), ": "+tc.err):
			t.Errorf("%s: %q, want exit code %d and %q", tc.attempt, got, tc.rc, tc.err)
		}
	}
	for _, leak := range []string{secret, "alice-stdout-secret", "alice-home-secret", "WORKER-PRIVATE-KEY"} {
		if strings.Contains(out, leak) {
			t.Errorf("bob's job got %q:\n%s", leak, out)
		}
	}
	if now, _ := r.Status("alice"); now.State != StateRunning || !aliveGroup(t, alice.PID) {
		t.Errorf("alice's job after bob's: %v, alive %v", now.State, aliveGroup(t, alice.PID))
	}
	// The worker itself still reads what bob could not.
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(alice.PID) + "/environ"); err != nil || !strings.Contains(string(b), secret) {
		t.Errorf("alice's environment as the worker reads it: %q, %v", b, err)
	}
}

// TestJobUIDReleasedWhenProcessesGone shows that a job's uid goes back to
// the pool only once none of the job's processes is left, even one that
// left the process group with setsid: with a one-uid range, a second job is
// refused while the first runs, and gets the same uid after it; at the
// moment the uid is given back, no process runs under it.
func TestJobUIDReleasedWhenProcessesGone(t *testing.T) {
	t.Parallel()
	for i, tc := range []struct{ name, cgroup string }{
		{"cgroup", ""},
		{"process group only", "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rng := testUIDs(200+uint32(i), 1)
			r, _ := uidRunner(t, rng, func(o *Options) { o.CgroupParent = tc.cgroup })
			var mu sync.Mutex
			var atRelease [][]int
			r.onUIDRelease = func(uid uint32) {
				mu.Lock()
				defer mu.Unlock()
				atRelease = append(atRelease, uidHolders(uid))
			}
			mustStart(t, r, "first", Spec{Command: "sh", Args: []string{"-c", "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!; id -u; exec sleep 1000"}})
			lines := waitForLines(t, r, "first", 2)
			grandchild, _ := strconv.Atoi(lines[0])
			if _, _, err := r.Start(t.Context(), "refused", Spec{Command: "true"}); !errors.Is(err, ErrNoUID) {
				t.Fatalf("a start while the only uid is held: %v, want ErrNoUID", err)
			}
			if _, err := r.Stop(t.Context(), "first", "test"); err != nil {
				t.Fatal(err)
			}
			if aliveGroup(t, grandchild) {
				_ = syscall.Kill(grandchild, syscall.SIGKILL)
				t.Errorf("the setsid grandchild %d outlived its job", grandchild)
			}
			mu.Lock()
			if len(atRelease) != 1 || len(atRelease[0]) != 0 {
				t.Errorf("processes under the uid when it was given back: %v", atRelease)
			}
			mu.Unlock()
			mustStart(t, r, "second", Spec{Command: "id", Args: []string{"-u"}})
			waitDone(t, r, "second")
			if got := strings.TrimSpace(string(readOutput(t, r, "second", OutputRequest{}))); got != lines[1] {
				t.Errorf("the second job runs as uid %s, want the freed %s", got, lines[1])
			}
		})
	}
}

// TestJobUIDsHostWide runs two Runners (two workers of one host) over one
// lease directory and a one-uid range: while a job of the first holds the
// uid, the second hands it to nobody.
func TestJobUIDsHostWide(t *testing.T) {
	t.Parallel()
	rng := testUIDs(300, 1)
	leases := t.TempDir()
	a, _ := uidRunner(t, rng, func(o *Options) { o.UIDLeaseDir = leases })
	b, _ := uidRunner(t, rng, func(o *Options) { o.UIDLeaseDir = leases })
	mustStart(t, a, "holder", Spec{Command: "sleep", Args: []string{"1000"}})
	if _, _, err := b.Start(t.Context(), "other", Spec{Command: "true"}); !errors.Is(err, ErrNoUID) {
		t.Fatalf("the other worker's start while the uid is held: %v, want ErrNoUID", err)
	}
	if _, err := a.Stop(t.Context(), "holder", "test"); err != nil {
		t.Fatal(err)
	}
	mustStart(t, b, "other", Spec{Command: "true"})
	if st := waitDone(t, b, "other"); st.State != StateSucceeded || st.RunAs != "uid "+strconv.Itoa(int(rng.First))+" (per job)" {
		t.Errorf("other: %v %s, run as %q", st.State, st.Reason, st.RunAs)
	}
}

// TestJobUIDAfterRestart is the restart path: a worker dies while its job
// runs (with a setsid grandchild). The next worker of the data directory
// reports the job LOST, kills everything still running under its uid, and
// only then hands the uid to a new job.
func TestJobUIDAfterRestart(t *testing.T) {
	t.Parallel()
	for i, tc := range []struct{ name, cgroup string }{
		{"cgroup", ""},
		{"process group only", "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			needRoot(t)
			rng := testUIDs(400+uint32(i), 1)
			opts := uidOptions(t, rng)
			opts.CgroupParent = tc.cgroup
			first, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			mustStart(t, first, "survivor", Spec{Command: "sh", Args: []string{"-c", "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!; exec sleep 1000"}})
			lines := waitForLines(t, first, "survivor", 1)
			grandchild, _ := strconv.Atoi(lines[0])
			t.Cleanup(func() { _ = syscall.Kill(grandchild, syscall.SIGKILL) })
			first.simulateCrash()

			second, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = second.Close(context.Background()) })
			if holders := uidHolders(rng.First); len(holders) != 0 {
				t.Errorf("processes of the lost job under uid %d after the restart: %v", rng.First, holders)
			}
			got, _ := second.Status("survivor")
			if got.State != StateLost || got.RunAs != "uid "+strconv.Itoa(int(rng.First))+" (per job)" {
				t.Errorf("after restart: %v, run as %q", got.State, got.RunAs)
			}
			waitDone(t, first, "survivor") // the first worker's waiter reaps the leader
			mustStart(t, second, "next", Spec{Command: "id", Args: []string{"-u"}})
			if st := waitDone(t, second, "next"); st.State != StateSucceeded {
				t.Fatalf("next: %v %s", st.State, st.Reason)
			}
			if out := strings.TrimSpace(string(readOutput(t, second, "next", OutputRequest{}))); out != strconv.Itoa(int(rng.First)) {
				t.Errorf("next job runs as uid %s", out)
			}
		})
	}
}

// TestJobUIDKeepsContainment checks that the uid switch breaks none of what
// the runtime does for a job: it is born in its v2 cgroup and attached to
// its v1 limit groups, its output is captured, and Stop (the worker
// signalling another uid) ends it.
func TestJobUIDKeepsContainment(t *testing.T) {
	t.Parallel()
	r, _ := uidRunner(t, testUIDs(500, 2), nil)
	// stderr is written before the line the test waits for: a TERM
	// that came between the two would end the script before it.
	spec := Spec{Command: "sh", Args: []string{"-c", `trap 'echo got TERM; exit 7' TERM; echo to stderr >&2; id -u; while :; do sleep 0.05; done`}}
	if r.cg.memoryOK() {
		spec.MemoryLimit = 64 << 20
	}
	if r.cg.cpuOK() {
		spec.CPULimit = 0.5
	}
	st := mustStart(t, r, "contained", spec)
	uid := waitForLines(t, r, "contained", 1)[0]
	var dirs []string
	if r.cg.v2Parent != "" {
		dirs = append(dirs, filepath.Join(r.cg.v2Parent, "contained"))
	}
	if spec.MemoryLimit > 0 && !r.cg.v2Memory {
		dirs = append(dirs, filepath.Join(r.cg.v1Memory, "contained"))
	}
	if spec.CPULimit > 0 && !r.cg.v2CPU {
		dirs = append(dirs, filepath.Join(r.cg.v1CPU, "contained"))
	}
	if len(dirs) == 0 {
		t.Log("this host gives the runner no cgroup: only output and Stop are checked")
	}
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil || !slices.Contains(strings.Fields(string(b)), strconv.Itoa(st.PID)) {
			t.Errorf("pid %d not in %s/cgroup.procs (%q, %v)", st.PID, dir, b, err)
		}
	}
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(st.PID) + "/status"); err != nil || !strings.Contains(string(b), "\nUid:\t"+uid+"\t"+uid+"\t"+uid+"\t"+uid+"\n") {
		t.Errorf("the job's process does not run as uid %s throughout: %v", uid, err)
	}
	end, err := r.Stop(t.Context(), "contained", "test")
	if err != nil {
		t.Fatal(err)
	}
	if end.State != StateStopped || end.ExitCode != 7 {
		t.Errorf("after Stop: %v, exit code %d, %s", end.State, end.ExitCode, end.Reason)
	}
	if got := string(readOutput(t, r, "contained", OutputRequest{Streams: StreamStdout})); got != uid+"\ngot TERM\n" {
		t.Errorf("captured stdout %q", got)
	}
	// sh may add a line for the sleep the TERM ended.
	if got := string(readOutput(t, r, "contained", OutputRequest{Streams: StreamStderr})); !strings.HasPrefix(got, "to stderr\n") {
		t.Errorf("captured stderr %q", got)
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s left behind: %v", dir, err)
		}
	}
}

// TestJobUIDHomeRemoved checks that retention deletes a job's home whatever
// the job left in it: files of its uid, a directory it made unreadable, its
// home's own mode changed.
func TestJobUIDHomeRemoved(t *testing.T) {
	t.Parallel()
	r, _ := uidRunner(t, testUIDs(600, 1), func(o *Options) { o.Retention = 200 * time.Millisecond })
	mustStart(t, r, "messy", Spec{Command: "sh", Args: []string{"-c", "mkdir -p a/b && echo x > a/b/f && ln -s /etc/passwd link && mkfifo fifo && chmod 0 a/b a && chmod 0777 ."}})
	if st := waitDone(t, r, "messy"); st.State != StateSucceeded {
		t.Fatalf("messy: %v %s", st.State, st.Reason)
	}
	eventually(t, "the expired job deleted", func() bool {
		_, err := r.Status("messy")
		return errors.Is(err, ErrNotFound)
	})
	for _, dir := range []string{filepath.Join(r.homesDir, "messy"), filepath.Join(r.jobsDir, "messy")} {
		if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", dir, err)
		}
	}
	// The job is forgotten first; what it left, moved aside, is deleted
	// right after.
	eventually(t, "the home directories emptied", func() bool {
		entries, _ := os.ReadDir(r.homesDir)
		return len(entries) == 0
	})
}

// TestJobUIDNeedsReachableDirs checks that a worker whose jobs could not
// reach their homes or the scripts refuses to start and says which
// directory is in the way, and that a script jobs cannot read is refused
// at Start rather than failing inside the job.
func TestJobUIDNeedsReachableDirs(t *testing.T) {
	t.Parallel()
	needRoot(t)
	closed := filepath.Join(t.TempDir(), "closed")
	if err := os.Mkdir(closed, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"data dir", func(o *Options) { o.DataDir = filepath.Join(closed, "data") }, closed + " (mode 0700) is not searchable"},
		{"scripts dir", func(o *Options) { o.ScriptsDir = closed }, closed + " (mode 0700) is not searchable"},
	} {
		opts := uidOptions(t, testUIDs(700, 1))
		tc.mod(&opts)
		r, err := New(opts)
		if err == nil {
			_ = r.Close(context.Background())
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}

	r, scripts := uidRunner(t, testUIDs(701, 1), nil)
	writeScript(t, scripts, "private.sh", "echo hi\n")
	if err := os.Chmod(filepath.Join(scripts, "private.sh"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, _, err := r.Start(t.Context(), "private", Spec{Command: "sh", Path: "private.sh"})
	if !errors.Is(err, ErrCommandNotAllowed) || !strings.Contains(err.Error(), "not readable by the jobs' users") {
		t.Errorf("Start of a script only root can read: %v", err)
	}
}

// TestJobUser runs jobs as one configured account.
func TestJobUser(t *testing.T) {
	t.Parallel()
	needRoot(t)
	u, err := LookupUser("nobody")
	if err != nil {
		t.Skipf("this host has no user nobody to run jobs as: %v", err)
	}
	r, _ := newRunner(t, func(o *Options) {
		*o = uidOptions(t, UIDRange{})
		o.JobUser = u
	})
	mustStart(t, r, "as-nobody", Spec{Command: "sh", Args: []string{"-c", "id -u; id -g"}})
	st := waitDone(t, r, "as-nobody")
	want := strconv.Itoa(int(u.UID)) + "\n" + strconv.Itoa(int(u.GID)) + "\n"
	if out := string(readOutput(t, r, "as-nobody", OutputRequest{})); out != want || st.RunAs != "user nobody (uid "+strconv.Itoa(int(u.UID))+")" {
		t.Errorf("output %q, run as %q; want %q as user nobody", out, st.RunAs, want)
	}
}
