package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// TestWorkerBinaryRunsJobsUnderOwnUIDs runs `baton worker` as root with no
// job_uids or job_user: its jobs run under uids of their own from the
// default range, and JobStatus.run_as says so.
func TestWorkerBinaryRunsJobsUnderOwnUIDs(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skipf("the per-job uid default applies to a worker running as root; this test runs as uid %d", os.Geteuid())
	}
	bin := e2e.SharedBaton(t)
	dir := e2e.JobsTempDir(t)
	scripts := filepath.Join(dir, "scripts")
	if err := os.MkdirAll(scripts, 0o755); err != nil {
		t.Fatal(err)
	}
	w := startPlainWorker(t, bin, dir, "uids", scripts)
	logs := w.logs
	base := "http://" + w.addr + "/baton.v1.WorkerService/"
	var started struct {
		JobID string `json:"jobId"`
	}
	if code := e2e.PostJSON(t, base+"StartJob", `{"command":"bash","args":["-c","id -u"]}`, &started); code != 200 || started.JobID == "" {
		t.Fatalf("StartJob: HTTP %d\n%s", code, logs.String())
	}
	out, final := streamJSON(t, base+"StreamJobOutput", `{"job_id":"`+started.JobID+`","follow":true}`)
	uid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || uid < 61184 || uid > 65519 {
		t.Fatalf("the job ran as uid %q, want one of 61184-65519\n%s", out, logs.String())
	}
	if got, want := final["runAs"], "uid "+strconv.Itoa(uid)+" (per job)"; got != want {
		t.Errorf("run_as = %v, want %q (final status %v)", got, want, final)
	}
}
