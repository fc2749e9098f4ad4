package worker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/jobrun"
)

// TestNoUIDIsResourceExhausted: a worker whose job uids are all held is
// full, like one at capacity, and says so in words a caller can act on.
func TestNoUIDIsResourceExhausted(t *testing.T) {
	t.Parallel()
	err := mapError(fmt.Errorf("%w: all 3 job uids of this worker are in use; try again later", jobrun.ErrNoUID))
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted || ce.Message() != "no job uid free: all 3 job uids of this worker are in use; try again later" {
		t.Errorf("mapError = %v, want resource_exhausted with the runtime's sentence", err)
	}
}

// TestRunAsReported: JobStatus.run_as is the runtime's word for whose uid
// the job runs under.
func TestRunAsReported(t *testing.T) {
	t.Parallel()
	for _, runAs := range []string{"uid 61190 (per job)", "user batch (uid 990)", "the worker's uid 1000"} {
		if got := statusToProto(jobrun.Status{ID: "j", RunAs: runAs}, "w1").GetRunAs(); got != runAs {
			t.Errorf("run_as = %q, want %q", got, runAs)
		}
	}
}

// TestJobUIDsOverTheAPI runs a worker with a one-uid range: StartJob
// reports the job's uid in run_as, and a second StartJob while the uid is
// held is resource_exhausted, like a worker at capacity.
func TestJobUIDsOverTheAPI(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skipf("jobs run under their own uids only when the worker is root; this test runs as uid %d", os.Geteuid())
	}
	// The testing package makes the parent of t.TempDir 0700; jobs under
	// other uids must pass through it.
	if err := os.Chmod(filepath.Dir(t.TempDir()), 0o711); err != nil {
		t.Fatal(err)
	}
	leases := t.TempDir()
	tw := startWorker(t, nil, func(o *Options) {
		o.Runner.JobUIDs = jobrun.UIDRange{First: 3_190_000, Last: 3_190_000}
		o.Runner.UIDLeaseDir = leases
		o.Runner.AllowedCommands = append(o.Runner.AllowedCommands, "sleep")
	})
	c := tw.client()
	res, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "sleep", Args: []string{"1000"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Msg.GetStatus().GetRunAs(); got != "uid 3190000 (per job)" {
		t.Errorf("run_as = %q", got)
	}
	_, err = c.StartJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "true"}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "job uids of this worker are in use") {
		t.Errorf("StartJob with every uid held: %v, want resource_exhausted", err)
	}
	if _, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStopJobRequest{JobId: res.Msg.GetStatus().GetJobId()})); err != nil {
		t.Fatal(err)
	}
}
