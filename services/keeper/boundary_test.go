package keeper

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/baton-run/baton/services/jobrun"
)

// TestJobCannotReachItsKeeper: a job running under a uid of its own (a
// root worker's default) tries the keeper's socket, log and lock, and is
// refused each time: it cannot start, stop or upgrade jobs, nor read what
// the keeper writes.
func TestJobCannotReachItsKeeper(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("jobs run under uids of their own only when the worker is root")
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("the probe is a python3 script: /usr/bin/python3 is missing")
	}
	opts := testOptions(t)
	opts.DataDir, opts.ScriptsDir = reachableDir(t), reachableDir(t)
	opts.JobUIDs = jobrun.UIDRange{First: 3_200_000, Last: 3_200_009}
	opts.UIDLeaseDir = t.TempDir()
	probe := `#!/usr/bin/python3
import socket, sys
for kind, path in (("socket", sys.argv[1]), ("log", sys.argv[2]), ("lock", sys.argv[3])):
    try:
        if kind == "socket":
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        else:
            open(path, "r+b").read(1)
        print(kind, "reached")
    except PermissionError:
        print(kind, "refused")
`
	if err := os.WriteFile(filepath.Join(opts.ScriptsDir, "probe.py"), []byte(probe), 0o755); err != nil {
		t.Fatal(err)
	}
	c := open(t, opts, nil)
	var out bytes.Buffer
	st, err := c.Run(t.Context(), "probe", jobrun.Spec{Command: "probe.py", Args: []string{
		filepath.Join(opts.DataDir, socketName), filepath.Join(opts.DataDir, logName), filepath.Join(opts.DataDir, lockName),
	}}, jobrun.StreamStdout, func(jobrun.Status) error { return nil }, func(ch jobrun.Chunk) error {
		out.Write(ch.Data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "socket refused\nlog refused\nlock refused\n"; out.String() != want || st.State != jobrun.StateSucceeded {
		t.Errorf("the job, run as %s, got %q (%v: %s); want %q", st.RunAs, out.String(), st.State, st.Reason, want)
	}
}

// TestKeeperSIGTERMStopsItsJobs: SIGTERM of the keeper is a decommission:
// every job stopped and its end recorded, the worker told, the keeper gone.
func TestKeeperSIGTERMStopsItsJobs(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	var ch changes
	c := open(t, opts, &ch)
	job, _, err := c.Start(t.Context(), "sleeper", jobrun.Spec{Command: "sleep", Args: []string{"1000"}})
	if err != nil {
		t.Fatal(err)
	}
	pid := keeperPid(t, opts.DataDir)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ch.await(t, "sleeper", jobrun.StateStopped)
	select {
	case <-c.Ending():
	case <-time.After(testWait):
		t.Fatal("the client was not told the keeper ended")
	}
	waitGone(t, pid)
	if alive(job.PID) && !zombie(job.PID) {
		t.Errorf("the job's process %d outlived the keeper's SIGTERM", job.PID)
	}
}

// reachableDir is t.TempDir made reachable by other uids (the testing
// package creates its parent with mode 0700).
func reachableDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}
