package scheduler_test

import (
	"testing"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestOneClockOwnsCreatedAt: a job's created_at is the scheduler's record,
// the same in StartJob's answer, in QueryJob's (which asks the worker) and
// in ListJobs', while the job runs and after it ended.
func TestOneClockOwnsCreatedAt(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", nil)
	startWorker(t, "w1", s, nil)
	c := s.client
	waitWorkers(t, c, stateReady, "w1")
	started := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh", Args: []string{"1"}})
	id, want := started.GetJobId(), started.GetJobs()[0].GetCreatedAt().AsTime()
	check := func(when string) {
		t.Helper()
		if got := queryJob(t, c, id).GetStatus().GetCreatedAt().AsTime(); !got.Equal(want) {
			t.Errorf("%s: QueryJob created_at %v, StartJob said %v", when, got, want)
		}
		list, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{WorkerId: "w1"}))
		if err != nil {
			t.Fatal(err)
		}
		if got := list.Msg.GetJobs()[0].GetCreatedAt().AsTime(); !got.Equal(want) {
			t.Errorf("%s: ListJobs created_at %v, StartJob said %v", when, got, want)
		}
	}
	check("running")
	waitFor(t, "the job to end", func() bool { return queryJob(t, c, id).GetDone() })
	check("ended")
}
