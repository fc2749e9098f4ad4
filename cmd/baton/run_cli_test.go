package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// cliEnv runs the baton CLI as a subprocess against a test cluster.
type cliEnv struct {
	c    *cluster
	home string
}

// newCLIEnv gives the CLI a home holding the client config `baton dev`
// would write for this cluster, so the commands find it by themselves.
func newCLIEnv(t *testing.T, c *cluster) *cliEnv {
	t.Helper()
	home := t.TempDir()
	path := filepath.Join(home, ".local", "state", "baton", "dev", "client.toml")
	if err := config.WriteClientConfig(path, config.ClientSection{Scheduler: "http://" + c.schedAdr}); err != nil {
		t.Fatal(err)
	}
	return &cliEnv{c: c, home: home}
}

func (e *cliEnv) command(args ...string) *exec.Cmd {
	cmd := exec.Command(e.c.bin, args...)
	cmd.Env = append([]string{"HOME=" + e.home, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// cliResult is a finished CLI run.
type cliResult struct {
	stdout, stderr string
	code           int
}

// run runs the CLI to its end (at most a minute).
func (e *cliEnv) run(t *testing.T, args ...string) cliResult {
	t.Helper()
	cmd := e.command(args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("baton %v did not end within a minute; stderr:\n%s", args, stderr.String())
	}
	return cliResult{stdout.String(), stderr.String(), e2e.ExitCode(t, err)}
}

// lineReader collects a pipe's lines as they arrive.
type lineReader struct {
	mu    sync.Mutex
	lines []string
	added chan struct{}
	done  chan struct{}
}

func readLines(r io.Reader) *lineReader {
	l := &lineReader{added: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			close(l.added)
			l.added = make(chan struct{})
			l.mu.Unlock()
		}
	}()
	return l
}

// waitFor returns the first line matching re, waiting up to d for it.
func (l *lineReader) waitFor(t *testing.T, re *regexp.Regexp, d time.Duration) []string {
	t.Helper()
	deadline := time.After(d)
	for {
		l.mu.Lock()
		for _, line := range l.lines {
			if m := re.FindStringSubmatch(line); m != nil {
				l.mu.Unlock()
				return m
			}
		}
		added := l.added
		l.mu.Unlock()
		select {
		case <-added:
		case <-l.done:
			t.Fatalf("the stream ended without a line matching %q; got %q", re, l.all())
		case <-deadline:
			t.Fatalf("no line matching %q within %v; got %q", re, d, l.all())
		}
	}
}

func (l *lineReader) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

// attached is a `baton run` in progress.
type attached struct {
	cmd    *exec.Cmd
	stdout *lineReader
	stderr *lineReader
	done   chan error
}

func (e *cliEnv) start(t *testing.T, args ...string) *attached {
	t.Helper()
	cmd := e.command(args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &attached{cmd: cmd, stdout: readLines(stdout), stderr: readLines(stderr), done: make(chan error, 1)}
	go func() {
		// Wait closes the pipes: read them to the end first.
		<-a.stdout.done
		<-a.stderr.done
		a.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
	})
	return a
}

// exit waits up to d for the CLI to exit and returns its status.
func (a *attached) exit(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case err := <-a.done:
		return e2e.ExitCode(t, err)
	case <-time.After(d):
		t.Fatalf("the CLI did not exit within %v; stderr %q", d, a.stderr.all())
		return -1
	}
}

var stoppingLine = regexp.MustCompile(`^baton: stopping job ([0-9a-f-]{36}) `)

// TestCLIAgainstCluster drives the CLI binary against a real scheduler and
// two workers: exit codes, the two output streams, Ctrl-C, listings and
// errors.
func TestCLIAgainstCluster(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{workers: []string{"w1", "w2"}})
	e := newCLIEnv(t, c)

	t.Run("exit codes and streams", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name           string
			args           []string
			stdout, stderr string
			code           int
		}{
			{"script path, exit 0", []string{"bash", "count.sh"}, "1\n2\n3\ndone\n", "", 0},
			{"stdout and stderr apart, exit 3", []string{"bash", "-c", "echo out; echo err >&2; exit 3"}, "out\n", "err\n", 3},
			{"killed by SIGKILL", []string{"bash", "-c", "kill -KILL $$"}, "", "", 128 + 9},
			{"killed by SIGTERM", []string{"bash", "-c", "echo bye; kill -TERM $$"}, "bye\n", "", 128 + 15},
			{"binary output byte for byte", []string{"bash", "-c", `printf 'a\0b\377'`}, "a\x00b\xff", "", 0},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				got := e.run(t, append([]string{"run", "--"}, tt.args...)...)
				if got.stdout != tt.stdout || got.stderr != tt.stderr || got.code != tt.code {
					t.Errorf("stdout %q stderr %q exit %d; want %q %q %d", got.stdout, got.stderr, got.code, tt.stdout, tt.stderr, tt.code)
				}
			})
		}
	})

	t.Run("fan-out prefixes lines and fails when a job fails", func(t *testing.T) {
		t.Parallel()
		got := e.run(t, "run", "--all", "--", "bash", "-c", "echo hi; printf 'no newline'; exit 5")
		lines := strings.Split(strings.TrimSuffix(got.stdout, "\n"), "\n")
		slices.Sort(lines)
		want := []string{"[w1] hi", "[w1] no newline", "[w2] hi", "[w2] no newline"}
		if !slices.Equal(lines, want) || got.code != 5 {
			t.Errorf("stdout %q exit %d; want lines %q, exit 5; stderr %q", got.stdout, got.code, want, got.stderr)
		}
	})

	t.Run("Ctrl-C stops the job", func(t *testing.T) {
		t.Parallel()
		marker := c.marker + "-cli-stop"
		a := e.start(t, "run", "--", "bash", "-c", "echo ready; exec -a "+marker+" sleep 100")
		a.stdout.waitFor(t, regexp.MustCompile(`^ready$`), 30*time.Second)
		if err := a.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		id := a.stderr.waitFor(t, stoppingLine, 30*time.Second)[1]
		// SIGTERM ends sleep: the job's status, and the CLI's, say so.
		if code := a.exit(t, 30*time.Second); code != 128+15 {
			t.Errorf("exit %d, want 143; stderr %q", code, a.stderr.all())
		}
		st := waitJobIn(t, c, id, 10*time.Second, "STOPPED", func(s jobStatus) bool { return isTerminal(s.State) })
		if st.State != "JOB_STATE_STOPPED" || st.Signal != "SIGTERM" {
			t.Errorf("job ended %v, want STOPPED by SIGTERM", st)
		}
		if left := waitNoMarked(marker, 5*time.Second); len(left) > 0 {
			t.Errorf("the stopped job left processes %v", left)
		}
	})

	t.Run("a second Ctrl-C detaches", func(t *testing.T) {
		t.Parallel()
		marker := c.marker + "-cli-detach"
		// sleep inherits the ignored SIGTERM: only the SIGKILL after the
		// worker's stop grace ends it, long after the CLI has gone.
		a := e.start(t, "run", "--", "bash", "-c", `trap "" TERM; echo ready; exec -a `+marker+` sleep 100`)
		a.stdout.waitFor(t, regexp.MustCompile(`^ready$`), 30*time.Second)
		if err := a.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		id := a.stderr.waitFor(t, stoppingLine, 30*time.Second)[1]
		if err := a.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if code := a.exit(t, 30*time.Second); code != 128+2 {
			t.Errorf("exit %d, want 130; stderr %q", code, a.stderr.all())
		}
		st := waitJobIn(t, c, id, 30*time.Second, "done", func(s jobStatus) bool { return isTerminal(s.State) })
		if st.State != "JOB_STATE_STOPPED" || st.Signal != "SIGKILL" {
			t.Errorf("job ended %v, want STOPPED by SIGKILL", st)
		}
	})

	t.Run("start, logs, status, jobs and workers", func(t *testing.T) {
		t.Parallel()
		started := e.run(t, "start", "--worker", "w2", "--", "bash", "count.sh")
		id := strings.TrimSpace(started.stdout)
		if _, err := uuid.Parse(id); started.code != 0 || err != nil {
			t.Fatalf("start: %+v", started)
		}
		logs := e.run(t, "logs", "-f", id)
		if logs.stdout != "1\n2\n3\ndone\n" || logs.code != 0 {
			t.Errorf("logs -f: %+v", logs)
		}
		if tail := e.run(t, "logs", "--stdout", "--offset", "4", id); tail.stdout != "3\ndone\n" {
			t.Errorf("logs --offset 4: %+v", tail)
		}

		st := c.waitJobState(id, "JOB_STATE_SUCCEEDED", 10*time.Second)
		status := e.run(t, "status", id)
		for _, want := range []string{"Job:          " + id, "Worker:       w2", "State:        SUCCEEDED", "Command:      bash count.sh", "Owner:"} {
			if !strings.Contains(status.stdout, want+"\n") && !strings.Contains(status.stdout, want) {
				t.Errorf("status lacks %q:\n%s", want, status.stdout)
			}
		}
		var query struct {
			Done   bool      `json:"done"`
			Status jobStatus `json:"status"`
		}
		if err := json.Unmarshal([]byte(e.run(t, "status", "-o", "json", id).stdout), &query); err != nil || !query.Done || query.Status.JobID != st.JobID {
			t.Errorf("status -o json: %+v, %v", query, err)
		}

		jobsJSON := e.run(t, "jobs", "-o", "json", "--limit", "0")
		var jobs []jobStatus
		if err := json.Unmarshal([]byte(jobsJSON.stdout), &jobs); err != nil {
			t.Fatalf("jobs -o json is not JSON: %v\n%s", err, jobsJSON.stdout)
		}
		if !slices.ContainsFunc(jobs, func(j jobStatus) bool { return j.JobID == id && j.State == "JOB_STATE_SUCCEEDED" }) {
			t.Errorf("jobs -o json lacks %s: %+v", id, jobs)
		}
		filtered := e.run(t, "jobs", "--worker", "w2", "--state", "succeeded", "--limit", "0")
		if !strings.HasPrefix(filtered.stdout, "JOB ID ") || !strings.Contains(filtered.stdout, id) || strings.Contains(filtered.stdout, " w1 ") {
			t.Errorf("jobs --worker w2 --state succeeded:\n%s", filtered.stdout)
		}
		limited := e.run(t, "jobs", "-o", "json", "--limit", "1")
		if err := json.Unmarshal([]byte(limited.stdout), &jobs); err != nil || len(jobs) != 1 {
			t.Errorf("jobs --limit 1: %d jobs, %v", len(jobs), err)
		}

		workers := e.run(t, "workers")
		rows := strings.Split(strings.TrimSpace(workers.stdout), "\n")
		if len(rows) != 3 || !strings.HasPrefix(rows[1], "w1  ") || !strings.HasPrefix(rows[2], "w2  ") ||
			!strings.Contains(rows[1], " READY ") || !strings.Contains(rows[2], " READY ") {
			t.Errorf("workers:\n%s", workers.stdout)
		}
		var roster []map[string]any
		if err := json.Unmarshal([]byte(e.run(t, "workers", "-o", "json").stdout), &roster); err != nil || len(roster) != 2 {
			t.Errorf("workers -o json: %v, %v", roster, err)
		}
		if rows := strings.Split(strings.TrimSpace(e.run(t, "workers", "--selector", "host=w2", "--state", "ready").stdout), "\n"); len(rows) != 2 || !strings.HasPrefix(rows[1], "w2  ") {
			t.Errorf("workers --selector host=w2 --state ready:\n%s", strings.Join(rows, "\n"))
		}
		if out := e.run(t, "workers", "--state", "draining").stdout; strings.Contains(out, "w1") || strings.Contains(out, "w2") {
			t.Errorf("workers --state draining lists a ready worker:\n%s", out)
		}
	})

	t.Run("stop prints the final status", func(t *testing.T) {
		t.Parallel()
		marker := c.marker + "-cli-stopcmd"
		id := strings.TrimSpace(e.run(t, "start", "--", "bash", "nap.sh", marker, "100").stdout)
		c.waitJobState(id, "JOB_STATE_RUNNING", 10*time.Second)
		got := e.run(t, "stop", id)
		if got.code != 0 || !strings.Contains(got.stdout, "State:        STOPPED") {
			t.Errorf("stop: %+v", got)
		}
		if again := e.run(t, "stop", id, "-o", "json"); again.code != 0 || !strings.Contains(again.stdout, `"JOB_STATE_STOPPED"`) {
			t.Errorf("stop again: %+v", again)
		}
	})

	t.Run("errors", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name string
			args []string
			code int
			// stderr is the start of the one line expected, which also
			// holds contains.
			stderr, contains string
		}{
			{"not an id", []string{"status", "nope"}, 2, `baton: JOB "nope" is not an id`, ""},
			{"no command", []string{"run"}, 2, "baton: missing COMMAND: baton run [flags] -- COMMAND [ARGS...], or baton run --script FILE [ARGS...]", ""},
			{"unknown flag", []string{"jobs", "--bogus"}, 2, "baton: baton jobs: unknown flag: --bogus", ""},
			{"unknown state", []string{"jobs", "--state", "sleeping"}, 2, `baton: --state "sleeping"`, ""},
			{"bad output", []string{"workers", "-o", "yaml"}, 2, `baton: --output "yaml"`, ""},
			{"unknown worker state", []string{"workers", "--state", "busy"}, 2, `baton: --state "busy"`, ""},
			{"bad selector", []string{"workers", "--selector", "host"}, 2, `baton: --selector "host"`, ""},
			{"selector the schema refuses", []string{"workers", "--selector", "bad key=1"}, 1, "baton: invalid_argument: ", ""},
			{"unknown job", []string{"status", "01a21d30-3bcb-72dd-97fe-c0ad8a69ebf4"}, 1, "baton: not_found: ", ""},
			{"unknown worker", []string{"run", "--worker", "w9", "--", "bash", "-c", "true"}, 1, "baton: not_found: ", ""},
			{"missing script", []string{"run", "--", "bash", "nosuch.sh"}, 1, "baton: not_found: ", "--no-path passes it as a plain argument"},
			{"command not allowed", []string{"run", "--", "python3", "-c", "1"}, 1, "baton: permission_denied: ", ""},
			{"unreachable", []string{"workers", "--scheduler", e2e.FreeAddr(t)}, 1, "baton: unavailable: cannot reach the scheduler", ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				got := e.run(t, tt.args...)
				if got.code != tt.code || !strings.HasPrefix(got.stderr, tt.stderr) || !strings.Contains(got.stderr, tt.contains) || strings.Count(got.stderr, "\n") != 1 || got.stdout != "" {
					t.Errorf("exit %d, stdout %q, stderr %q; want exit %d and one line starting %q", got.code, got.stdout, got.stderr, tt.code, tt.stderr)
				}
			})
		}
	})

	t.Run("the scheduler from the environment", func(t *testing.T) {
		t.Parallel()
		cmd := exec.Command(c.bin, "workers", "-o", "json")
		cmd.Env = append([]string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH"), "BATON_CLIENT_SCHEDULER=" + c.schedAdr}, e2e.CoverEnv()...)
		out, err := cmd.Output()
		var roster []map[string]any
		if err != nil || json.Unmarshal(out, &roster) != nil || len(roster) != 2 {
			t.Errorf("workers with BATON_CLIENT_SCHEDULER: %v, %s", err, out)
		}
	})
}

// waitJobIn is cluster.waitJob for a subtest: it fails t, not the test
// that made the cluster (FailNow must run on the failing test's goroutine).
func waitJobIn(t *testing.T, c *cluster, id string, d time.Duration, what string, ok func(jobStatus) bool) jobStatus {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var res struct {
			Status jobStatus `json:"status"`
		}
		code, rpcErr, err := c.call("QueryJob", fmt.Sprintf(`{"job_id":%q}`, id), &res)
		if err == nil && code == http.StatusOK && ok(res.Status) {
			return res.Status
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: not %s within %v; last %v (HTTP %d %v %v)", id, what, d, res.Status, code, rpcErr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCLIWaitsForASlot: with every worker full, run waits for a slot (and
// says so) unless --no-wait, which fails at once with resource_exhausted.
func TestCLIWaitsForASlot(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{workers: []string{"w1"}, capacity: 1})
	e := newCLIEnv(t, c)
	busy := e.run(t, "start", "--", "bash", "-c", "sleep 100")
	id := strings.TrimSpace(busy.stdout)
	if _, err := uuid.Parse(id); busy.code != 0 || err != nil {
		t.Fatalf("start: %+v", busy)
	}
	if full := e.run(t, "run", "--no-wait", "--", "true"); full.code != 1 || !strings.Contains(full.stderr, "resource_exhausted") {
		t.Errorf("run --no-wait on a full cluster: %+v", full)
	}
	waiting := e.start(t, "run", "--", "bash", "-c", "echo got a slot")
	waiting.stderr.waitFor(t, regexp.MustCompile(`waiting for a free slot`), 30*time.Second)
	if stopped := e.run(t, "stop", id); stopped.code != 0 {
		t.Fatalf("stop: %+v", stopped)
	}
	waiting.stdout.waitFor(t, regexp.MustCompile(`^got a slot$`), 30*time.Second)
	if code := waiting.exit(t, 30*time.Second); code != 0 {
		t.Errorf("the waiting run exited %d, want 0", code)
	}
}

// TestRunStopsWhenItsOutputCloses: `baton run … | head -1` — the reader of
// the output goes away after a line; baton run stops the job, as Ctrl-C
// does, and exits 141 (SIGPIPE) instead of dying and leaving it running.
func TestRunStopsWhenItsOutputCloses(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{workers: []string{"w1"}})
	e := newCLIEnv(t, c)
	cmd := e.command("run", "--", "bash", "-c", "while :; do echo line; sleep 0.05; done")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr e2e.LockedBuffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	// head -1: one line, then the pipe's reading end is gone.
	line := make([]byte, len("line\n"))
	if _, err := io.ReadFull(r, line); err != nil || string(line) != "line\n" {
		t.Fatalf("first line %q, %v; stderr %q", line, err, stderr.String())
	}
	_ = r.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if code := e2e.ExitCode(t, err); code != 141 {
			t.Errorf("baton run exited %d, want 141; stderr %q", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("baton run did not exit after its output closed; stderr %q", stderr.String())
	}
	jobs := c.listJobs()
	if len(jobs) != 1 {
		t.Fatalf("jobs: %v", jobs)
	}
	if st := c.waitJob(jobs[0].JobID, 30*time.Second, "ended", func(s jobStatus) bool { return isTerminal(s.State) }); st.State != "JOB_STATE_STOPPED" {
		t.Errorf("the job after its output closed: %v, want STOPPED", st)
	}
}

// TestRunIgnoresAStraySIGPIPE: a SIGPIPE that is not its output closing
// (while baton run asks for the signal, a write to any broken connection
// raises one) neither stops the job nor ends the run.
func TestRunIgnoresAStraySIGPIPE(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{workers: []string{"w1"}})
	e := newCLIEnv(t, c)
	cmd := e.command("run", "--", "bash", "-c", "echo started; sleep 1; echo done")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr e2e.LockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	first := make([]byte, len("started\n"))
	if _, err := io.ReadFull(stdout, first); err != nil {
		t.Fatalf("first line: %v; stderr %q", err, stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGPIPE); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(stdout)
	if err := cmd.Wait(); err != nil || string(rest) != "done\n" || strings.Contains(stderr.String(), "stopping") {
		t.Errorf("after a stray SIGPIPE: %v, rest of the output %q, stderr %q", err, rest, stderr.String())
	}
}
