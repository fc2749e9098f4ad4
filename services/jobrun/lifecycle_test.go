package jobrun

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestExitTaxonomy(t *testing.T) {
	t.Parallel()
	r, scripts := newRunner(t, nil)
	writeScript(t, scripts, "exit3.sh", "echo before; exit 3\n")
	writeScript(t, scripts, "kill9.sh", "kill -9 $$\n")
	tests := []struct {
		name   string
		spec   Spec
		state  State
		code   int
		sig    syscall.Signal
		reason string
	}{
		{"exit 0", Spec{Command: "true"}, StateSucceeded, 0, 0, "exited with code 0"},
		{"exit 3", Spec{Command: "sh", Path: "exit3.sh"}, StateFailed, 3, 0, "exited with code 3"},
		{"killed by SIGKILL", Spec{Command: "bash", Path: "kill9.sh"}, StateFailed, -1, syscall.SIGKILL, "killed by signal KILL"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id := fmt.Sprintf("exit-%d", i)
			mustStart(t, r, id, tc.spec)
			st := waitDone(t, r, id)
			if st.State != tc.state || st.ExitCode != tc.code || st.Signal != tc.sig || st.Reason != tc.reason {
				t.Errorf("got %v code=%d sig=%v reason=%q; want %v code=%d sig=%v reason=%q",
					st.State, st.ExitCode, st.Signal, st.Reason, tc.state, tc.code, tc.sig, tc.reason)
			}
			if st.PID == 0 || st.StartedAt.IsZero() || st.EndedAt.IsZero() {
				t.Errorf("missing pid or times: %+v", st)
			}
		})
	}
}

func TestExecFailureLeavesNothing(t *testing.T) {
	t.Parallel()
	r, scripts := newRunner(t, nil)
	writeScript(t, scripts, "badshebang.sh", "#!/nonexistent/interpreter\necho hi\n")
	_, _, err := r.Start(t.Context(), "bad-interp", Spec{Command: "badshebang.sh"})
	if !errors.Is(err, ErrExec) {
		t.Fatalf("Start: err = %v, want ErrExec", err)
	}
	if strings.Contains(err.Error(), scripts) {
		t.Errorf("error leaks a host path: %v", err)
	}
	for _, dir := range []string{r.jobsDir, r.homesDir} {
		if _, err := os.Stat(filepath.Join(dir, "bad-interp")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("job directory left behind: %v", err)
		}
	}
	if _, err := r.Status("bad-interp"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Status after exec failure: %v, want ErrNotFound", err)
	}
	// A child whose execve failed would still carry this test binary's
	// name; other tests' jobs carry their commands' names.
	if z := zombieClones(t); z != 0 {
		t.Errorf("%d zombie children after exec failure", z)
	}
	if n := r.Running(); n != 0 {
		t.Errorf("Running() = %d after exec failure", n)
	}
	// The ID is free again.
	writeScript(t, scripts, "good.sh", "#!/bin/sh\nexit 0\n")
	if _, _, err := r.Start(t.Context(), "bad-interp", Spec{Command: "good.sh"}); err != nil {
		t.Fatalf("Start after exec failure: %v", err)
	}
	waitDone(t, r, "bad-interp")
}

func TestStartIdempotent(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, nil)
	spec := Spec{Command: "sleep", Args: []string{"0"}, Labels: map[string]string{"a": "b"}}
	first := mustStart(t, r, "same", spec)
	again, created, err := r.Start(t.Context(), "same", spec)
	if err != nil || created || again.ID != first.ID || again.PID != first.PID {
		t.Fatalf("second Start: created=%v err=%v", created, err)
	}
	other := spec
	other.Args = []string{"1"}
	if _, _, err := r.Start(t.Context(), "same", other); !errors.Is(err, ErrConflict) {
		t.Fatalf("Start with another spec: %v, want ErrConflict", err)
	}
	waitDone(t, r, "same")
	if _, created, err := r.Start(t.Context(), "same", spec); err != nil || created {
		t.Fatalf("Start after the end: created=%v err=%v", created, err)
	}
	for _, id := range []string{"", "a b", "x/y", "ü", strings.Repeat("a", 65), "a\x00"} {
		if _, _, err := r.Start(t.Context(), id, spec); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("Start(%q): %v, want ErrInvalidSpec", id, err)
		}
	}
}

// treeScript ignores SIGTERM, forks a child in its group and a grandchild
// in a session of its own, and records the grandchild's pid.
const treeScript = `trap '' TERM
(setsid sleep 1000 & echo $! > "$1")
sleep 1000 &
echo ready
wait
`

func TestStopKillsTree(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		cgroup string
	}{
		{"cgroup", ""},
		{"process group only", "-"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r, scripts := newRunner(t, func(o *Options) { o.CgroupParent = tc.cgroup })
			writeScript(t, scripts, "tree.sh", treeScript)
			pidFile := filepath.Join(t.TempDir(), "grandchild")
			st := mustStart(t, r, "tree", Spec{Command: "bash", Path: "tree.sh", Args: []string{pidFile}})
			waitForOutput(t, r, "tree", "ready")
			cgDir := filepath.Join(r.cg.v2Parent, "tree")
			inV2 := tc.cgroup == "" && r.cg.v2Parent != ""
			if inV2 {
				if b, err := os.ReadFile(filepath.Join(cgDir, "cgroup.events")); err != nil || !strings.Contains(string(b), "populated 1") {
					t.Fatalf("cgroup.events before stop: %q, %v", b, err)
				}
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			grandchild, _ := strconv.Atoi(strings.TrimSpace(string(b)))

			final, err := r.Stop(t.Context(), "tree", "alice")
			if err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if final.State != StateStopped || final.Signal != syscall.SIGKILL || final.StoppedBy != "alice" || final.Reason != "stopped by alice" {
				t.Errorf("final status: %v sig=%v by=%q reason=%q", final.State, final.Signal, final.StoppedBy, final.Reason)
			}
			if aliveGroup(t, st.PID) {
				t.Errorf("a process of group %d survived Stop", st.PID)
			}
			t.Run("setsid grandchild killed", func(t *testing.T) {
				if !inV2 {
					// Known escape: without a cgroup a setsid grandchild
					// leaves the process group and survives. Clean it up.
					if aliveGroup(t, grandchild) {
						_ = syscall.Kill(grandchild, syscall.SIGKILL)
					}
					if tc.cgroup == "-" {
						t.Skip("cgroups disabled for this case: a setsid grandchild leaves the process group, so Stop cannot reach it (the known escape of process-group containment)")
					}
					t.Skip("this host gives the runner no cgroup v2 with cgroup.kill: jobs are contained by process group only, and a setsid grandchild escapes it")
				}
				// rmdir(2) succeeds only on an unpopulated cgroup.
				if _, err := os.Stat(cgDir); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("job cgroup still exists: %v", err)
				}
				if aliveGroup(t, grandchild) {
					t.Errorf("setsid grandchild %d survived cgroup.kill", grandchild)
				}
			})
		})
	}
}

// waitForOutput follows the job until its output contains want.
func waitForOutput(t *testing.T, r *Runner, id, want string) {
	t.Helper()
	var seen strings.Builder
	found := errors.New("found")
	_, err := r.Output(t.Context(), id, OutputRequest{Follow: true}, func(c Chunk) error {
		seen.Write(c.Data)
		if strings.Contains(seen.String(), want) {
			return found
		}
		return nil
	})
	if !errors.Is(err, found) {
		t.Fatalf("output %q never contained %q: %v", seen.String(), want, err)
	}
}

func TestStopSemantics(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, nil)
	t.Run("finished job", func(t *testing.T) {
		t.Parallel()
		mustStart(t, r, "fin", Spec{Command: "true"})
		before := waitDone(t, r, "fin")
		after, err := r.Stop(t.Context(), "fin", "bob")
		if err != nil {
			t.Fatal(err)
		}
		if after.State != StateSucceeded || after.StoppedBy != "" || after.Reason != before.Reason {
			t.Errorf("Stop changed a finished job: %+v", after)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		t.Parallel()
		if _, err := r.Stop(t.Context(), "nope", "bob"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Stop(unknown) = %v, want ErrNotFound", err)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		t.Parallel()
		mustStart(t, r, "twice", Spec{Command: "sleep", Args: []string{"1000"}})
		var wg sync.WaitGroup
		results := make(chan Status, 2)
		for _, by := range []string{"a", "b"} {
			wg.Go(func() {
				st, err := r.Stop(t.Context(), "twice", by)
				if err != nil {
					t.Errorf("Stop: %v", err)
				}
				results <- st
			})
		}
		wg.Wait()
		close(results)
		for st := range results {
			if st.State != StateStopped || st.Signal != syscall.SIGTERM || (st.StoppedBy != "a" && st.StoppedBy != "b") {
				t.Errorf("status: %v sig=%v by=%q", st.State, st.Signal, st.StoppedBy)
			}
		}
	})
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, nil)
	mustStart(t, r, "slow", Spec{Command: "sleep", Args: []string{"1000"}, Timeout: 200 * time.Millisecond})
	st := waitDone(t, r, "slow")
	if st.State != StateTimedOut || st.Reason != "timed out after 200ms" || st.Signal != syscall.SIGTERM {
		t.Errorf("got %v reason=%q sig=%v", st.State, st.Reason, st.Signal)
	}
}

func TestOutputLimit(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20
	r, _ := newRunner(t, func(o *Options) { o.OutputLimit = limit })
	mustStart(t, r, "yes", Spec{Command: "yes"})
	st := waitDone(t, r, "yes")
	if st.State != StateFailed || st.Reason != "output limit of 1 MiB reached" {
		t.Errorf("got %v reason=%q", st.State, st.Reason)
	}
	var total int64
	for _, name := range []string{stdoutFile, stderrFile, indexFile} {
		fi, err := os.Stat(filepath.Join(r.jobsDir, "yes", name))
		if name == stderrFile && errors.Is(err, os.ErrNotExist) {
			continue // yes(1) writes nothing to it
		}
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", name, fi.Mode().Perm())
		}
		total += fi.Size()
	}
	if total > limit {
		t.Errorf("stored %d bytes, limit %d", total, limit)
	}
	if got := int64(len(readOutput(t, r, "yes", OutputRequest{}))); got != st.StdoutBytes || got == 0 {
		t.Errorf("read %d bytes, status says %d", got, st.StdoutBytes)
	}
}

func TestArgsVerbatim(t *testing.T) {
	t.Parallel()
	r, scripts := newRunner(t, nil)
	writeScript(t, scripts, "args.sh", `for a in "$@"; do printf '[%s]' "$a"; done`)
	args := []string{"-x", ";", "$(id)", "a\nb", "", "*", "`id`"}
	mustStart(t, r, "args", Spec{Command: "bash", Path: "args.sh", Args: args})
	waitDone(t, r, "args")
	var want strings.Builder
	for _, a := range args {
		want.WriteString("[" + a + "]")
	}
	if got := string(readOutput(t, r, "args", OutputRequest{})); got != want.String() {
		t.Errorf("job saw %q, want %q", got, want.String())
	}
}

// TestEnvironment runs the allow-listed env(1) directly (no shell, which
// would add PWD, SHLVL and _) and checks that nothing from the worker's
// environment leaks. Not parallel: it sets the worker's environment.
func TestEnvironment(t *testing.T) {
	t.Setenv("WORKER_SECRET", "hunter2")
	t.Setenv("WORKER_SHARED", "shared")
	tests := []struct {
		name    string
		inherit []string
		env     map[string]string
		want    []string
	}{
		{"default", nil, nil, []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=", "LANG=C.UTF-8", "BATON_JOB_ID=env-default"}},
		{"spec overrides", nil, map[string]string{"LANG": "C", "FOO": "bar", "BATON_JOB_ID": "forged"},
			[]string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=", "LANG=C", "FOO=bar", "BATON_JOB_ID=env-spec-overrides"}},
		{"inherit", []string{"WORKER_SHARED", "MISSING_VAR"}, nil,
			[]string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=", "LANG=C.UTF-8", "WORKER_SHARED=shared", "BATON_JOB_ID=env-inherit"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newRunner(t, func(o *Options) { o.InheritEnv = tc.inherit })
			id := "env-" + strings.ReplaceAll(tc.name, " ", "-")
			mustStart(t, r, id, Spec{Command: "env", Env: tc.env})
			waitDone(t, r, id)
			got := strings.Split(strings.TrimSpace(string(readOutput(t, r, id, OutputRequest{}))), "\n")
			if len(got) != len(tc.want) {
				t.Fatalf("env = %q, want %q", got, tc.want)
			}
			gotSet := map[string]bool{}
			for _, kv := range got {
				if strings.HasPrefix(kv, "HOME=") {
					if home := strings.TrimPrefix(kv, "HOME="); home != filepath.Join(r.homesDir, id) {
						t.Errorf("HOME=%q is not the job's directory", home)
					}
					kv = "HOME="
				}
				gotSet[kv] = true
				if strings.Contains(kv, "hunter2") {
					t.Errorf("worker secret leaked: %q", kv)
				}
			}
			for _, w := range tc.want {
				if !gotSet[w] {
					t.Errorf("missing %q in %q", w, got)
				}
			}
		})
	}
}

func TestRetention(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, func(o *Options) { o.Retention = time.Hour })
	mustStart(t, r, "old", Spec{Command: "true"})
	st := waitDone(t, r, "old")
	r.expire(st.EndedAt.Add(30 * time.Minute))
	if _, err := r.Status("old"); err != nil {
		t.Fatalf("job expired early: %v", err)
	}
	r.expire(st.EndedAt.Add(2 * time.Hour))
	if _, err := r.Status("old"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Status after retention: %v", err)
	}
	entries, _ := os.ReadDir(r.jobsDir)
	if len(entries) != 0 {
		t.Errorf("jobs directory not empty after retention: %v", entries)
	}
}

func TestListAndOnChange(t *testing.T) {
	t.Parallel()
	changes := make(chan Status, 16)
	r, _ := newRunner(t, func(o *Options) { o.OnChange = func(st Status) { changes <- st } })
	mustStart(t, r, "l1", Spec{Command: "true"})
	waitDone(t, r, "l1")
	mustStart(t, r, "l2", Spec{Command: "true"})
	waitDone(t, r, "l2")
	list := r.List()
	if len(list) != 2 || list[0].ID != "l2" || list[1].ID != "l1" {
		t.Errorf("List order: %v", list)
	}
	var got []string
	for range 4 {
		select {
		case st := <-changes:
			got = append(got, st.ID+":"+st.State.String())
		case <-time.After(testWait):
			t.Fatal("missing OnChange call")
		}
	}
	want := "l1:RUNNING l1:SUCCEEDED l2:RUNNING l2:SUCCEEDED"
	if strings.Join(got, " ") != want {
		t.Errorf("OnChange: %v, want %s", got, want)
	}
}

func TestClosedRunner(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, nil)
	mustStart(t, r, "running", Spec{Command: "sleep", Args: []string{"1000"}})
	if err := r.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	st, _ := r.Status("running")
	if st.State != StateStopped {
		t.Errorf("after Close: %v", st.State)
	}
	if _, _, err := r.Start(t.Context(), "late", Spec{Command: "true"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v", err)
	}
}
