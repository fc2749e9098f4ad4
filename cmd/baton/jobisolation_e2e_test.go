package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestJobCannotReachAnotherUsersJob is the attack on a cluster built with
// `baton certs`, its worker running as root: bob's job tries to list the
// worker's jobs, read alice's record, output and environment, signal her
// process and read the worker's private key. Each is refused by the
// kernel, bob's job runs under a uid that is neither root nor the
// worker's, and alice's job runs on.
func TestJobCannotReachAnotherUsersJob(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skipf("jobs get uids of their own only under a worker running as root; this test runs as uid %d", os.Geteuid())
	}
	bin := e2e.SharedBaton(t)
	certs := filepath.Join(t.TempDir(), "certs")
	issueCerts(t, bin, certs, "e2e", "scheduler", "worker/w1", "user/alice", "user/bob", "admin/root")
	sc := newSecureCluster(t, bin, certs, "w1")
	ctx := t.Context()
	alice, bob := sc.client("user-alice"), sc.client("user-bob")

	marker := sc.marker + "-alice"
	started, err := alice.StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{
		WorkerId: "w1", Command: "bash", Args: []string{"-c", "echo alice-output; exec -a " + marker + " sleep 100"},
		Env: map[string]string{"API_TOKEN": "alice-s3cret"},
	}))
	if err != nil {
		t.Fatalf("alice StartJob: %v", err)
	}
	aliceJob := started.Msg.GetJobId()
	var pid int32
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		q, err := alice.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: aliceJob}))
		if err == nil && q.Msg.GetStatus().GetPid() > 0 && e2e.ProcessWithArg0(marker) {
			pid = q.Msg.GetStatus().GetPid()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice's job never ran: %v", err)
		}
	}

	// What bob's job aims at exists: a refusal is the kernel's, not a
	// missing file's.
	for _, f := range []string{"journal", filepath.Join("jobs", aliceJob, "stdout")} {
		if _, err := os.Stat(filepath.Join(sc.workers["w1"].dataDir, f)); err != nil {
			t.Fatalf("the worker's %s: %v", f, err)
		}
	}

	probe := `
try() { if eval "$2" >/dev/null 2>&1; then echo "$1=reached"; else echo "$1=refused"; fi; }
echo "uid=$(id -u)"
try list-jobs 'ls "$DATA/jobs"'
try read-record 'cat "$DATA/journal"'
try read-output 'cat "$DATA/jobs/$ALICE/stdout"'
try read-environ 'cat /proc/$PID/environ'
try signal 'kill -0 $PID'
try read-key 'cat "$KEY"'
`
	run, err := bob.StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{
		WorkerId: "w1", Command: "bash", Args: []string{"-c", probe},
		Env: map[string]string{
			"DATA": sc.workers["w1"].dataDir, "ALICE": aliceJob, "PID": strconv.Itoa(int(pid)),
			"KEY": filepath.Join(certs, "worker-w1.key"),
		},
	}))
	if err != nil {
		t.Fatalf("bob StartJob: %v", err)
	}
	stream, err := bob.StreamJobOutput(ctx, connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: run.Msg.GetJobId(), Follow: true}))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	var final *batonv1.JobStatus
	for stream.Receive() {
		out.Write(stream.Msg().GetChunk().GetData())
		if st := stream.Msg().GetStatus(); st != nil {
			final = st
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	_ = stream.Close()
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			got[k] = v
		}
	}
	if uid, err := strconv.Atoi(got["uid"]); err != nil || uid == 0 || uid == os.Geteuid() {
		t.Errorf("bob's job ran as uid %q, want one of its own (not 0, not the worker's)", got["uid"])
	}
	for _, attempt := range []string{"list-jobs", "read-record", "read-output", "read-environ", "signal", "read-key"} {
		if got[attempt] != "refused" {
			t.Errorf("bob's job: %s %s, want refused", attempt, got[attempt])
		}
	}
	if final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || !strings.HasPrefix(final.GetRunAs(), "uid ") {
		t.Errorf("bob's job ended %v, run_as %q; want SUCCEEDED under a uid of its own", final.GetState(), final.GetRunAs())
	}
	if err := syscall.Kill(int(pid), 0); err != nil {
		t.Errorf("alice's process %d is gone: %v", pid, err)
	}
	if _, err := alice.StopJob(ctx, connect.NewRequest(&batonv1.StopJobRequest{JobId: aliceJob})); err != nil {
		t.Errorf("alice StopJob: %v", err)
	}
}
