package scheduler_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestReplaceStallsOtherSchedules: a REPLACE fire stops the earlier
// fire's job synchronously inside the one goroutine that fires every
// schedule, with no deadline. A stop that takes the worker's grace period
// (a job that ignores SIGTERM; here the worker's StopJob takes 4s) holds
// back every other schedule of every owner for that long.
func TestAReplacingFireDoesNotHoldOtherSchedules(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	slowStop := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if strings.HasSuffix(req.Spec().Procedure, "/StopJob") {
				time.Sleep(4 * time.Second) // a stop that takes the grace period
			}
			return next(ctx, req)
		}
	})
	startWorkerWith(t, "w1", sched, workerSetup{interceptors: []connect.Interceptor{slowStop}})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	createSchedule(t, sched.client, &batonv1.Schedule{
		Name: "other", Cron: "@every 1s", HistoryLimit: 100,
		Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"},
	})
	createSchedule(t, sched.client, sleeper("replace", batonv1.OverlapPolicy_OVERLAP_POLICY_REPLACE))
	time.Sleep(8 * time.Second)
	sc := getSchedule(t, sched.client, "other")
	var worst time.Duration
	for _, f := range sc.GetRecent() {
		if f.GetJobId() == "" {
			continue
		}
		st := queryJob(t, sched.client, f.GetJobId()).GetStatus()
		if late := st.GetCreatedAt().AsTime().Sub(st.GetFireTime().AsTime()); late > worst {
			worst = late
		}
	}
	t.Logf("schedule other: %d fires, latest job made %v after its fire time", sc.GetFires(), worst)
	if worst > 2*time.Second {
		t.Errorf("another schedule's fire was %v late: a REPLACE fire's stop blocked the firing loop", worst.Round(time.Millisecond))
	}
}
