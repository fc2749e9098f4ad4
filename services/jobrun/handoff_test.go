package jobrun

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHandoffCarriesRunningJobs hands running jobs from one Runner to the
// next, as a keeper does across an exec: the processes, their output, a
// timeout, a stop in progress and an exit in between go on as if nothing
// happened.
func TestHandoffCarriesRunningJobs(t *testing.T) {
	t.Parallel()
	for _, cgroup := range []string{"", "-"} {
		t.Run("cgroup="+cgroup, func(t *testing.T) {
			t.Parallel()
			opts := Options{DataDir: t.TempDir(), ScriptsDir: t.TempDir(), AllowedCommands: testCommands, CgroupParent: cgroup, StopGrace: 2 * time.Second}
			first, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			counter := mustStart(t, first, "counter", Spec{Command: "sh", Args: []string{"-c",
				`for i in $(seq 1 40); do echo "out $i"; echo "err $i" >&2; sleep 0.02; done; exit 7`}})
			timeout := mustStart(t, first, "timeout", Spec{Command: "sleep", Args: []string{"1000"}, Timeout: 1500 * time.Millisecond})
			stubborn := mustStart(t, first, "stubborn", Spec{Command: "sh", Args: []string{"-c", `trap "" TERM; echo ready; while :; do sleep 0.05; done`}})
			release := filepath.Join(t.TempDir(), "release")
			between := mustStart(t, first, "between", Spec{Command: "sh", Args: []string{"-c",
				`while [ ! -e "$0" ]; do sleep 0.01; done; exit 4`, release}})
			eventually(t, "stubborn traps TERM", func() bool { return first.mustStatus(t, "stubborn").StdoutBytes > 0 })
			stopCtx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
			_, _ = first.Stop(stopCtx, "stubborn", "alice") // begins the stop; the grace runs on
			cancel()
			time.Sleep(100 * time.Millisecond) // the counter is part-way

			handed, err := first.Handoff()
			if err != nil {
				t.Fatal(err)
			}
			if len(handed) != 4 {
				t.Fatalf("handed over %d jobs, want 4", len(handed))
			}
			// "between" exits with nobody to see it.
			if err := os.WriteFile(release, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			eventually(t, "between exits", func() bool { return isZombie(between.PID) })

			opts.Adopt = handed
			second, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = second.Close(context.Background()) })

			got := waitDone(t, second, "counter")
			if got.State != StateFailed || got.ExitCode != 7 || got.PID != counter.PID {
				t.Errorf("counter: %v code %d pid %d (was %d)", got.State, got.ExitCode, got.PID, counter.PID)
			}
			var wantOut, wantErr strings.Builder
			for i := 1; i <= 40; i++ {
				fmt.Fprintf(&wantOut, "out %d\n", i)
				fmt.Fprintf(&wantErr, "err %d\n", i)
			}
			if out := string(readOutput(t, second, "counter", OutputRequest{Streams: StreamStdout})); out != wantOut.String() {
				t.Errorf("counter stdout across the handoff:\n%q\nwant\n%q", out, wantOut.String())
			}
			if out := string(readOutput(t, second, "counter", OutputRequest{Streams: StreamStderr})); out != wantErr.String() {
				t.Errorf("counter stderr across the handoff:\n%q", out)
			}
			if both := readOutput(t, second, "counter", OutputRequest{}); len(both) != wantOut.Len()+wantErr.Len() {
				t.Errorf("both streams: %d bytes, want %d", len(both), wantOut.Len()+wantErr.Len())
			}
			if got := waitDone(t, second, "timeout"); got.State != StateTimedOut || got.PID != timeout.PID {
				t.Errorf("timeout: %v %q", got.State, got.Reason)
			}
			if got := waitDone(t, second, "stubborn"); got.State != StateStopped || got.StoppedBy != "alice" || got.PID != stubborn.PID {
				t.Errorf("stop in progress: %v by %q: %q", got.State, got.StoppedBy, got.Reason)
			}
			if got := waitDone(t, second, "between"); got.State != StateFailed || got.ExitCode != 4 || got.PID != between.PID {
				t.Errorf("exit during the handoff: %v code %d", got.State, got.ExitCode)
			}
			for _, st := range []Status{counter, timeout, stubborn, between} {
				if aliveGroup(t, st.PID) {
					t.Errorf("%s: process group %d left running", st.ID, st.PID)
				}
			}
			// A third Runner reads the ends from the journal.
			if err := second.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			opts.Adopt = nil
			third, _ := newRunner(t, func(o *Options) { *o = opts })
			if st, _ := third.Status("counter"); st.State != StateFailed || st.ExitCode != 7 {
				t.Errorf("counter after a restart: %v", st.State)
			}
		})
	}
}

// TestHandoffNotMatchingIsNotAdopted: a handoff that does not name the
// process its job's record names (here another start time, as a reused
// pid would have) is never adopted. The job is LOST, as after a crash, and
// the process the record proves to be the job's is killed.
func TestHandoffNotMatchingIsNotAdopted(t *testing.T) {
	t.Parallel()
	opts := Options{DataDir: t.TempDir(), ScriptsDir: t.TempDir(), AllowedCommands: testCommands, CgroupParent: "-"}
	first, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	st := mustStart(t, first, "sleeper", Spec{Command: "sleep", Args: []string{"1000"}})
	t.Cleanup(func() { _ = signalGroup(st.PID, 9) })
	handed, err := first.Handoff()
	if err != nil || len(handed) != 1 {
		t.Fatalf("Handoff: %d jobs, %v", len(handed), err)
	}
	handed[0].StartTicks++
	opts.Adopt = handed
	second, _ := newRunner(t, func(o *Options) { *o = opts })
	if got := second.mustStatus(t, "sleeper"); got.State != StateLost {
		t.Errorf("a handoff with another start time: adopted as %v", got.State)
	}
	eventually(t, "the job's process is killed", func() bool { return !aliveGroup(t, st.PID) })
	// Nobody else waits for it: unreaped, it would stay a zombie.
	eventually(t, "the killed process is reaped", func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", st.PID))
		return errors.Is(err, os.ErrNotExist)
	})
}

func (r *Runner) mustStatus(t testing.TB, id string) Status {
	t.Helper()
	st, err := r.Status(id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestAdoptingJobsThatEndedMeanwhile hands over many jobs that all exit
// before the next Runner adopts them: each ends the moment it is resumed,
// while the others are still being resumed. Under the race detector this
// shows that adoption does not read the job table those ends rewrite.
func TestAdoptingJobsThatEndedMeanwhile(t *testing.T) {
	t.Parallel()
	opts := Options{DataDir: t.TempDir(), ScriptsDir: t.TempDir(), AllowedCommands: testCommands, CgroupParent: "-"}
	first, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	const n = 150
	release := filepath.Join(t.TempDir(), "release")
	for i := range n {
		mustStart(t, first, fmt.Sprintf("short-%d", i), Spec{Command: "sh", Args: []string{"-c",
			`while [ ! -e "$0" ]; do sleep 0.01; done; exit 3`, release}})
	}
	handed, err := first.Handoff()
	if err != nil || len(handed) != n {
		t.Fatalf("Handoff: %d jobs, %v", len(handed), err)
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, h := range handed {
		pid := h.Status.PID
		eventually(t, "the job exits", func() bool { return isZombie(pid) })
	}
	opts.Adopt = handed
	second, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = second.Close(context.Background()) })
	for i := range n {
		if got := waitDone(t, second, fmt.Sprintf("short-%d", i)); got.State != StateFailed || got.ExitCode != 3 {
			t.Errorf("short-%d: %v code %d, want FAILED 3", i, got.State, got.ExitCode)
		}
	}
}

// isZombie reports whether pid has exited and awaits its parent's reaping,
// as a job's process does between one Runner's Handoff and the next's
// adoption.
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && strings.Contains(string(b), ") Z ")
}
