package scheduler_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/serving"
)

// TestStartJobIdempotentUnderConcurrency is a client retrying StartJob
// with one idempotency key 50 times at once (a retry loop behind a flaky
// network, many replicas of a controller): every answer names the same
// job, exactly one process runs on the whole fleet, and the scheduler and
// the workers know exactly one job.
func TestStartJobIdempotentUnderConcurrency(t *testing.T) {
	t.Parallel()
	marker := uniqueMarker("idem")
	// Registered first, so it runs last: after the workers stopped what
	// they could.
	t.Cleanup(func() { killMarked(marker) })
	s := startScheduler(t, "", func(o *scheduler.Options) { o.HeartbeatInterval = 200 * time.Millisecond })
	workers := map[string]*testWorker{
		"w1": startWorker(t, "w1", s, nil),
		"w2": startWorker(t, "w2", s, nil),
	}
	c := s.client
	waitWorkers(t, c, stateReady, "w1", "w2")

	const calls = 50
	ids := make([]string, calls)
	errs := make([]error, calls)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			req := connect.NewRequest(&batonv1.StartJobRequest{
				Command: "bash", Args: []string{"-c", "exec -a " + marker + " sleep 30"},
				IdempotencyKey: "key-" + marker,
			})
			<-gate
			res, err := c.StartJob(t.Context(), req)
			errs[i] = err
			if err == nil {
				ids[i] = res.Msg.GetJobId()
			}
		})
	}
	close(gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
	if distinct := slices.Compact(slices.Sorted(slices.Values(ids))); len(distinct) != 1 || distinct[0] == "" {
		t.Errorf("%d concurrent StartJob calls with one key answered jobs %v, want one job", calls, distinct)
	}
	id := ids[0]

	// Every call has returned, so every process a worker spawned for them
	// exists; wait until each has exec'd into its marked name, then count.
	waitFor(t, "the job's process to exec", func() bool {
		marked := procsMarked(marker)
		return len(marked) > 0 && len(procsWithArg0(marker)) == len(marked)
	})
	procs := procsWithArg0(marker)
	if len(procs) != 1 {
		t.Errorf("%d processes run for %d StartJob calls with one key, want exactly 1: %v", len(procs), calls, procs)
	}

	// The scheduler's store and each worker's job table hold one job.
	list, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{PageSize: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	if got := jobsNaming(list.Msg.GetJobs(), marker); len(got) != 1 || got[0].GetJobId() != id {
		t.Errorf("the scheduler lists jobs %v for the key, want only %s", jobIDsOf(got), id)
	}
	var onWorkers []*batonv1.JobStatus
	for name, w := range workers {
		hc := serving.NewHTTPClient(nil)
		t.Cleanup(hc.CloseIdleConnections)
		res, err := batonv1connect.NewWorkerServiceClient(hc, w.url).ListJobs(t.Context(), connect.NewRequest(&batonv1.WorkerServiceListJobsRequest{PageSize: 1000}))
		if err != nil {
			t.Fatalf("worker %s ListJobs: %v", name, err)
		}
		onWorkers = append(onWorkers, jobsNaming(res.Msg.GetJobs(), marker)...)
	}
	if len(onWorkers) != 1 || onWorkers[0].GetJobId() != id {
		t.Errorf("the workers hold jobs %v for the key, want only %s", jobIDsOf(onWorkers), id)
	} else if len(procs) == 1 && int(onWorkers[0].GetPid()) != procs[0].pid {
		t.Errorf("the job's pid is %d, but the marked process is %v", onWorkers[0].GetPid(), procs[0])
	}
}

// jobsNaming keeps the jobs whose arguments name marker.
func jobsNaming(jobs []*batonv1.JobStatus, marker string) []*batonv1.JobStatus {
	var out []*batonv1.JobStatus
	for _, j := range jobs {
		if slices.ContainsFunc(j.GetSpec().GetArgs(), func(a string) bool { return strings.Contains(a, marker) }) {
			out = append(out, j)
		}
	}
	return out
}

func jobIDsOf(jobs []*batonv1.JobStatus) []string {
	out := make([]string, 0, len(jobs))
	for _, j := range jobs {
		out = append(out, j.GetJobId())
	}
	return out
}

// TestFanOutIdempotentUnderConcurrency: four concurrent fan-outs with one
// key on two workers make one group and one job per worker, round after
// round: exactly one process per worker runs, and every answer names the
// same group.
func TestFanOutIdempotentUnderConcurrency(t *testing.T) {
	t.Parallel()
	marker := uniqueMarker("fanidem")
	t.Cleanup(func() { killMarked(marker) })
	s := startScheduler(t, "", nil)
	startWorker(t, "w1", s, nil)
	startWorker(t, "w2", s, nil)
	c := s.client
	waitWorkers(t, c, stateReady, "w1", "w2")

	const rounds, calls = 10, 4
	for round := range rounds {
		key := fmt.Sprintf("key-%s-%d", marker, round)
		groups := make([]string, calls)
		errs := make([]error, calls)
		gate := make(chan struct{})
		var wg sync.WaitGroup
		for i := range calls {
			wg.Go(func() {
				req := connect.NewRequest(&batonv1.StartJobRequest{
					All: true, Command: "bash", Args: []string{"-c", "exec -a " + marker + " sleep 30"}, IdempotencyKey: key,
				})
				<-gate
				res, err := c.StartJob(t.Context(), req)
				errs[i] = err
				if err == nil {
					groups[i] = res.Msg.GetGroupId()
				}
			})
		}
		close(gate)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d call %d: %v", round, i, err)
			}
		}
		if distinct := slices.Compact(slices.Sorted(slices.Values(groups))); len(distinct) != 1 || distinct[0] == "" {
			t.Fatalf("round %d: %d concurrent fan-outs with one key answered groups %v, want one", round, calls, distinct)
		}
		g, err := c.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{GroupId: groups[0]}))
		if err != nil {
			t.Fatal(err)
		}
		on := map[string]int{}
		for _, j := range g.Msg.GetJobs() {
			on[j.GetWorkerId()]++
		}
		if len(g.Msg.GetJobs()) != 2 || on["w1"] != 1 || on["w2"] != 1 {
			t.Fatalf("round %d: the group holds jobs on %v, want one on each worker", round, on)
		}
		waitFor(t, "the round's processes to exec", func() bool {
			marked := procsMarked(marker)
			return len(marked) >= 2 && len(procsWithArg0(marker)) == len(marked)
		})
		if procs := procsWithArg0(marker); len(procs) != 2 {
			t.Fatalf("round %d: %d processes run, want one per worker: %v", round, len(procs), procs)
		}
		if _, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{GroupId: groups[0]})); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the round's processes to end", func() bool { return len(procsMarked(marker)) == 0 })
	}
}
