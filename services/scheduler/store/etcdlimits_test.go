package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// bigArgs are n KiB of a job's arguments, in arguments of 8 KiB; the API
// takes up to 256 KiB of command, path, args and env together.
func bigArgs(n int) []string {
	args := make([]string, n/8)
	for i := range args {
		args[i] = strings.Repeat("x", 8<<10)
	}
	return args
}

// TestEtcdMarkLostOfLargeJobs: a worker whose jobs have large (but
// allowed) arguments is given up like any other: its jobs are marked LOST
// in transactions that each stay within etcd's request size, instead of
// one that etcd refuses every time, leaving them RUNNING for ever.
func TestEtcdMarkLostOfLargeJobs(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := openEtcd(t, fmt.Sprintf("/test/%d/", testEtcd.prefixes.Add(1)), nil)
	const jobs = 8
	for i := range jobs {
		j := newJob(i+1, "w1", "alice")
		j.Status.Spec.Args = bigArgs(248)
		mustCreateJob(t, ctx, s, j)
	}
	n, err := s.MarkWorkerJobsLost(ctx, "w1", "worker down", epoch.Add(time.Hour))
	if err != nil {
		t.Fatalf("MarkWorkerJobsLost = %d, %v", n, err)
	}
	if n != jobs {
		t.Errorf("MarkWorkerJobsLost marked %d jobs, want %d", n, jobs)
	}
	for i := range jobs {
		if got := mustGetJob(t, ctx, s, jobID(i+1)).Status.GetState(); got != batonv1.JobState_JOB_STATE_LOST {
			t.Errorf("job %d is %v, want LOST", i+1, got)
		}
	}
}

// TestEtcdListJobsScansInBatches: a page whose matches are few among many
// jobs is found in a few requests to etcd, not one request per job
// looked at.
func TestEtcdListJobsScansInBatches(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	var requests atomic.Int64
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   testEtcd.cli.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(
			func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				requests.Add(1)
				return invoker(ctx, method, req, reply, cc, opts...)
			})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	s, err := store.OpenEtcd(ctx, cli, store.EtcdOptions{Prefix: fmt.Sprintf("/test/%d/", testEtcd.prefixes.Add(1))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	// The newest job matches; the 300 before it do not.
	const others = 300
	for i := range others {
		j := newJob(i+1, "w1", "alice")
		j.Status = terminal(j, batonv1.JobState_JOB_STATE_FAILED, epoch.Add(time.Hour))
		mustCreateJob(t, ctx, s, j)
	}
	mustCreateJob(t, ctx, s, newJob(others+1, "w1", "alice"))
	requests.Store(0)
	jobs, next, err := s.ListJobs(ctx, store.JobFilter{
		States:   []batonv1.JobState{batonv1.JobState_JOB_STATE_RUNNING, batonv1.JobState_JOB_STATE_SUCCEEDED},
		PageSize: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].ID != jobID(others+1) || next != "" {
		t.Errorf("ListJobs = %v, next %q; want the newest job alone", ids(jobs), next)
	}
	if n := requests.Load(); n > 20 {
		t.Errorf("ListJobs made %d requests to etcd for %d jobs", n, others+1)
	}
}

// TestEtcdFireTooLarge: a fire whose jobs, with their scripts, are more
// than etcd takes in one request fails with ErrTooLarge, which no retry
// cures, and writes nothing; the fire recorded without its jobs lands.
func TestEtcdFireTooLarge(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := openEtcd(t, fmt.Sprintf("/test/%d/", testEtcd.prefixes.Add(1)), nil)
	sc := testSchedule("sched-big", "user/alice", "fanout")
	if err := s.CreateSchedule(ctx, sc, 0); err != nil {
		t.Fatal(err)
	}
	at := epoch.Add(time.Second)
	rec := store.FireRecord{
		ScheduleID: sc.ID,
		Fire:       store.Fire{Time: at, Outcome: batonv1.FireOutcome_FIRE_OUTCOME_STARTED, JobID: jobID(1), GroupID: "group-big"},
		Group:      &store.Group{ID: "group-big", Owner: sc.Owner, IdempotencyKey: "schedule/sched-big/1", CreatedAt: epoch},
	}
	// Each job carries the fan-out's script: 3 × 700 KiB is above etcd's
	// default request limit (1.5 MiB), as 20 × 1 MiB is above the 16 MiB
	// the embedded members take.
	for i := range 3 {
		j := fireJob(i+1, sc.Owner, "", "group-big")
		j.Script = []byte(strings.Repeat("#", 700<<10))
		rec.Jobs = append(rec.Jobs, j)
	}
	if _, err := s.RecordFire(ctx, rec); !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("RecordFire of %d jobs with 700 KiB scripts: %v, want ErrTooLarge", len(rec.Jobs), err)
	}
	if got, err := s.GetSchedule(ctx, sc.Owner, sc.Name); err != nil || got.Fires != 0 || !got.Cursor.Equal(epoch) {
		t.Fatalf("the refused fire moved the schedule: %+v (%v)", got, err)
	}
	if _, err := s.GetJob(ctx, jobID(1)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused fire left a job: %v", err)
	}
	rec.Fire = store.Fire{Time: at, Outcome: batonv1.FireOutcome_FIRE_OUTCOME_FAILED, Reason: "too large"}
	rec.Group, rec.Jobs = nil, nil
	if _, err := s.RecordFire(ctx, rec); err != nil {
		t.Fatalf("the fire without its jobs: %v", err)
	}
}
