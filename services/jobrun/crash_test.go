package jobrun

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Environment of a worker child: its role, and its Runner's directories.
const (
	childRoleEnv    = "JOBRUN_TEST_CHILD"
	childDataEnv    = "JOBRUN_TEST_DATA"
	childScriptsEnv = "JOBRUN_TEST_SCRIPTS"
)

// runWorkerChild is the worker of a child process. It runs one job to its
// end, prints "ended <state>" once OnChange reported the end, and then
// waits to be killed without ever closing its Runner.
func runWorkerChild(role string) int {
	ended := make(chan Status, 1)
	opts := Options{
		DataDir:         os.Getenv(childDataEnv),
		ScriptsDir:      os.Getenv(childScriptsEnv),
		AllowedCommands: testCommands,
		OnChange: func(st Status) {
			if st.State.Terminal() {
				ended <- st
			}
		},
	}
	spec := Spec{Command: "true"}
	switch role {
	case "durable":
		spec = Spec{Command: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 3"}}
	case "hog-" + UsageCgroup, "hog-" + UsageRusage:
		// A worker of its own, so that its resident set, which Linux
		// counts into its children's (see rusageUsage), is small.
		source := strings.TrimPrefix(role, "hog-")
		opts.AllowedCommands = append(opts.AllowedCommands, os.Args[0])
		spec = Spec{Command: os.Args[0], Env: map[string]string{hogEnv: source}}
		if source == UsageRusage {
			opts.CgroupParent = "-"
		} else {
			spec.MemoryLimit = 1 << 30 // see TestUsageMeasured
		}
	}
	r, err := New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if _, _, err := r.Start(context.Background(), "child-job", spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	st := <-ended
	fmt.Printf("ended %s\n", st.State)
	time.Sleep(time.Hour)
	return 0
}

// startWorkerChild runs a worker child over data and scripts, waits until
// it reports its job's end, kills it with SIGKILL and reaps it. It returns
// the state the child reported.
func startWorkerChild(t *testing.T, role, data, scripts string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childRoleEnv+"="+role, childDataEnv+"="+data, childScriptsEnv+"="+scripts)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		lines <- line
		_, _ = io.Copy(io.Discard, out)
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(testWait):
		_ = cmd.Process.Kill()
		t.Fatal("the worker child never reported its job's end")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	state, ok := strings.CutPrefix(strings.TrimSpace(line), "ended ")
	if !ok {
		t.Fatalf("the worker child said %q", line)
	}
	return state
}

// TestEndSurvivesKill9 kills a worker with SIGKILL right after it reported
// a job's end: the next worker of its data directory reports the job with
// the same end and all of its output.
func TestEndSurvivesKill9(t *testing.T) {
	t.Parallel()
	data, scripts := t.TempDir(), t.TempDir()
	if got := startWorkerChild(t, "durable", data, scripts); got != "FAILED" {
		t.Fatalf("the child reported %s, want FAILED", got)
	}
	r, _ := newRunner(t, func(o *Options) { o.DataDir, o.ScriptsDir = data, scripts })
	st, err := r.Status("child-job")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateFailed || st.ExitCode != 3 || st.Reason != "exited with code 3" || st.StdoutBytes != 4 || st.StderrBytes != 4 {
		t.Errorf("after the kill: %v code=%d %q stdout=%d stderr=%d", st.State, st.ExitCode, st.Reason, st.StdoutBytes, st.StderrBytes)
	}
	// The two pipes are copied apart, so their interleaving is not fixed.
	if got := string(readOutput(t, r, "child-job", OutputRequest{})); got != "out\nerr\n" && got != "err\nout\n" {
		t.Errorf("output after the kill: %q", got)
	}
	if got := string(readOutput(t, r, "child-job", OutputRequest{Streams: StreamStdout})); got != "out\n" {
		t.Errorf("stdout after the kill: %q", got)
	}
	if got := string(readOutput(t, r, "child-job", OutputRequest{Streams: StreamStderr, Follow: true})); got != "err\n" {
		t.Errorf("stderr after the kill: %q", got)
	}
}

// TestStaleCgroupParentRemoved kills a worker with SIGKILL, which leaves
// its empty cgroup parent behind, and starts a worker of another data
// directory: that one removes it. Not parallel: other Runners of this
// package could remove the leftover first.
func TestStaleCgroupParentRemoved(t *testing.T) {
	probe, _ := newRunner(t, nil)
	var leftovers []string
	for _, parent := range []string{probe.cg.v2Parent, probe.cg.v1Memory, probe.cg.v1CPU} {
		if parent != "" && isParentName(filepath.Base(parent)) {
			leftovers = append(leftovers, filepath.Dir(parent))
		}
	}
	if len(leftovers) == 0 {
		t.Skip("this host gives the runner no writable cgroup parent (no cgroup v2 with cgroup.kill, no v1 memory or cpu controller): no cgroup is left behind")
	}
	data := t.TempDir()
	for i, dir := range leftovers {
		leftovers[i] = filepath.Join(dir, dataDirTag(data))
	}
	startWorkerChild(t, "idle", data, t.TempDir())
	for _, dir := range leftovers {
		if _, err := os.Stat(dir); err != nil {
			// Any Runner starting on this host meanwhile may have done
			// what the one below is to do.
			t.Logf("the killed worker's cgroup %s is already gone: %v", dir, err)
		}
	}
	newRunner(t, nil)
	for _, dir := range leftovers {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the killed worker's cgroup %s is still there: %v", dir, err)
			_ = syscall.Rmdir(dir)
		}
	}
	// The probe's own parent may have gone with them (it was empty): its
	// next job makes it again.
	mustStart(t, probe, "after", Spec{Command: "true"})
	if st := waitDone(t, probe, "after"); st.State != StateSucceeded || (probe.cg.v2Parent != "") != (st.Cgroup == "v2") {
		t.Errorf("a job after the sweep: %v %s, cgroup %q", st.State, st.Reason, st.Cgroup)
	}
}
