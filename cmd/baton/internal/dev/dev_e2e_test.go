package dev

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

func TestMain(m *testing.M) {
	code := m.Run()
	e2e.RemoveSharedBaton()
	os.Exit(code)
}

// TestDevClusterFromScratch runs `baton dev` as a user would on a fresh
// machine (an empty HOME): the client commands find it by themselves over
// mutual TLS, Ctrl-C stops everything with nothing left behind, and a
// second start reuses the data and certificates of the first.
func TestDevClusterFromScratch(t *testing.T) {
	bin := e2e.SharedBaton(t)
	home := e2e.JobsTempDir(t)
	repo, err := filepath.Abs(filepath.Join("..", "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	d := newDevProcess(t, bin, home, repo)
	baton := func(args ...string) *exec.Cmd { return d.baton(t.Context(), args...) }

	dev, out := d.start()
	if !strings.Contains(out.String(), "https://"+d.addr) {
		t.Errorf("dev did not print its mutual-TLS address:\n%s", out.String())
	}
	var stdout, stderr bytes.Buffer
	run := baton("run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
	run.Stdout, run.Stderr = &stdout, &stderr
	err = run.Run()
	if code := e2e.ExitCode(t, err); code != 3 || stdout.String() != "out\n" || stderr.String() != "err\n" {
		t.Errorf("run: exit %d, stdout %q, stderr %q; want 3, \"out\\n\", \"err\\n\"", code, stdout.String(), stderr.String())
	}
	// A job still running when the cluster stops, marked so that a
	// leftover process is found in /proc.
	marker := "baton-dev-leftover-" + strconv.Itoa(os.Getpid())
	detached, err := baton("run", "--detach", "--", "bash", "-c", "exec -a "+marker+" sleep 300").Output()
	if err != nil {
		t.Fatalf("run --detach: %v", err)
	}
	jobID := strings.TrimSpace(string(detached))
	ca, err := os.ReadFile(filepath.Join(home, ".local", "state", "baton", "dev", "certs", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !e2e.ProcessWithArg0(marker); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the detached job never ran")
		}
	}
	d.stop(dev, out)
	if e2e.ProcessWithArg0(marker) {
		t.Error("a job's process outlived baton dev")
	}

	// The second start keeps the CA and the history.
	dev, out = d.start()
	again, err := os.ReadFile(filepath.Join(home, ".local", "state", "baton", "dev", "certs", "ca.crt"))
	if err != nil || !bytes.Equal(ca, again) {
		t.Errorf("the second start made a new CA (%v)", err)
	}
	status, err := baton("status", "-o", "json", jobID).Output()
	if err != nil || !strings.Contains(string(status), "JOB_STATE_STOPPED") {
		t.Errorf("status of the job from the first run: %v %s", err, status)
	}
	d.stop(dev, out)
}

// TestDevRefusesTakenPorts: a port held by something else is an error that
// names it, not a cluster that half starts.
func TestDevRefusesTakenPorts(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	err = runDev(t.Context(), devConfig{
		dataDir: t.TempDir(), scriptsDir: filepath.Join("..", "..", "..", "..", "examples", "scripts"),
		addr: e2e.FreeAddr(t), httpAddr: taken.Addr().String(), workerPort: e2e.FreePortPair(t), logLevel: "error",
	})
	if err == nil || !strings.Contains(err.Error(), taken.Addr().String()+" is taken") {
		t.Errorf("runDev with a taken port: %v", err)
	}
}
