package dev

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// devProcess is a `baton dev` a test starts, with the environment and
// working directory its client commands share.
type devProcess struct {
	t              *testing.T
	bin, dir       string
	env            []string
	addr, httpAddr string
	port           int
}

// newDevProcess prepares `baton dev` from bin, run in dir with HOME set to
// home and nothing else of the test's environment but PATH.
func newDevProcess(t *testing.T, bin, home, dir string) *devProcess {
	return &devProcess{
		t: t, bin: bin, dir: dir,
		env:  append([]string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...),
		addr: e2e.FreeAddr(t), httpAddr: e2e.FreeAddr(t), port: e2e.FreePortPair(t),
	}
}

// baton is a baton command run as the dev cluster's user.
func (d *devProcess) baton(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.bin, args...)
	cmd.Env, cmd.Dir = d.env, d.dir
	return cmd
}

// start starts the cluster and waits until both workers are READY. The
// process is killed at the end of the test unless stop ended it before.
func (d *devProcess) start() (*exec.Cmd, *e2e.LockedBuffer) {
	t := d.t
	t.Helper()
	out := &e2e.LockedBuffer{}
	dev := d.baton(context.Background(), "dev", "--addr", d.addr, "--http-addr", d.httpAddr, "--worker-port", strconv.Itoa(d.port))
	dev.Stdout, dev.Stderr = out, out
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dev.Process.Kill(); _, _ = dev.Process.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := d.baton(t.Context(), "workers", "-o", "json").Output()
		var workers []map[string]any
		if err == nil && json.Unmarshal(b, &workers) == nil && len(workers) == 2 &&
			workers[0]["state"] == "WORKER_STATE_READY" && workers[1]["state"] == "WORKER_STATE_READY" {
			return dev, out
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dev cluster did not get two READY workers: %v %s\n%s", err, b, out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop stops the cluster with Ctrl-C, which must end it cleanly.
func (d *devProcess) stop(dev *exec.Cmd, out *e2e.LockedBuffer) {
	t := d.t
	t.Helper()
	if err := dev.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- dev.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("baton dev after Ctrl-C: %v\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("baton dev did not stop after Ctrl-C\n%s", out.String())
	}
}

// TestDevRunsAnywhere is a user who installed the binary with `go install`:
// `baton dev` in an empty directory with an empty HOME, no checkout near.
// The example scripts come with the binary, the workers run any program on
// PATH rather than a server's allow-list of interpreters, and the working
// directory is left as it was.
func TestDevRunsAnywhere(t *testing.T) {
	t.Parallel()
	home, work := e2e.JobsTempDir(t), e2e.JobsTempDir(t)
	d := newDevProcess(t, e2e.SharedBaton(t), home, work)
	dev, out := d.start()
	if !strings.Contains(out.String(), "any program on PATH") {
		t.Errorf("the banner does not say that jobs may run any program on PATH:\n%s", out.String())
	}

	var count strings.Builder
	for i := 1; i <= 30; i++ {
		count.WriteString(strconv.Itoa(i) + "\n")
	}
	count.WriteString("done\n")
	tests := []struct {
		name       string
		flags      []string // baton run's
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string // a part of it
	}{
		{name: "true", args: []string{"true"}},
		{name: "echo", args: []string{"echo", "hi"}, wantStdout: "hi\n"},
		{name: "echo, hi not a script path", flags: []string{"--no-path"}, args: []string{"echo", "hi"}, wantStdout: "hi\n"},
		{name: "example script", args: []string{"bash", "count.sh"}, wantStdout: count.String()},
		{name: "not on PATH", args: []string{"no-such-program-" + strconv.Itoa(os.Getpid())}, wantCode: 1, wantStderr: "not allow-listed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			var stdout, stderr bytes.Buffer
			args := append(append([]string{"run"}, tt.flags...), "--")
			run := d.baton(ctx, append(args, tt.args...)...)
			run.Stdout, run.Stderr = &stdout, &stderr
			code := e2e.ExitCode(t, run.Run())
			if code != tt.wantCode || stdout.String() != tt.wantStdout || !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("baton %s: exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr with %q",
					strings.Join(run.Args[1:], " "), code, stdout.String(), stderr.String(), tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
		})
	}

	want, err := os.ReadFile(filepath.Join("..", "..", "..", "..", "examples", "scripts", "count.sh"))
	if err != nil {
		t.Fatal(err)
	}
	written := filepath.Join(home, ".local", "state", "baton", "dev", devScriptsDir, "count.sh")
	if got, err := os.ReadFile(written); err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s is not examples/scripts/count.sh: %v", written, err)
	}
	d.stop(dev, out)
	if left, err := os.ReadDir(work); err != nil || len(left) != 0 {
		t.Errorf("baton dev left files in its working directory: %v %v", left, err)
	}
}
