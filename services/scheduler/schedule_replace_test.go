package scheduler_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestAReplacingFireDoesNotHoldOtherSchedules: a REPLACE fire stops the
// earlier fire's job, and that stop may take the worker's grace period (a
// job that ignores SIGTERM). Here the worker holds every StopJob until the
// test lets it go: another schedule must go on firing meanwhile, which it
// cannot if the stop runs inside the one goroutine that fires every
// schedule.
func TestAReplacingFireDoesNotHoldOtherSchedules(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	held, release := make(chan struct{}, 1), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	slowStop := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if strings.HasSuffix(req.Spec().Procedure, "/StopJob") {
				select {
				case held <- struct{}{}:
				default:
				}
				<-release
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
	select {
	case <-held:
	case <-time.After(2 * waitTimeout):
		t.Fatal("no replacing fire stopped the earlier fire's job")
	}
	before := getSchedule(t, sched.client, "other").GetFires()
	waitSchedule(t, sched.client, "other", "firing twice while a replacing fire's stop is held", func(sc *batonv1.Schedule) bool {
		return sc.GetFires() >= before+2
	})
	once.Do(func() { close(release) })
}
