package store_test

import (
	"testing"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestApplyWorkerReportKeepsRunAs: whose uid a job runs under is something
// only its worker knows, so the scheduler takes it from the worker's
// report, and QueryJob through the scheduler shows it.
func TestApplyWorkerReportKeepsRunAs(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		j := newJob(1, "w1", "alice")
		mustCreateJob(t, t.Context(), s, j)
		report := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 77, RunAs: "uid 61190 (per job)"}
		if err := s.ApplyWorkerReport(t.Context(), "w1", j.ID, report); err != nil {
			t.Fatal(err)
		}
		if got := mustGetJob(t, t.Context(), s, j.ID).Status.GetRunAs(); got != "uid 61190 (per job)" {
			t.Errorf("run_as after the worker's report = %q", got)
		}
	})
}
