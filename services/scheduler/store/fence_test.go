package store_test

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// checkFenced runs writes through old, whose term has passed, and checks
// that each fails with ErrFenced and that current, the newer writer, sees
// none of them and writes on.
func checkFenced(t *testing.T, old, current store.Store) {
	t.Helper()
	ctx := t.Context()
	running := newJob(1, "w1", "alice")
	if err := current.CreateJob(ctx, running); err != nil {
		t.Fatalf("the new writer's CreateJob: %v", err)
	}
	writes := map[string]func() error{
		"create job": func() error { return old.CreateJob(ctx, newJob(2, "w1", "alice")) },
		"update job": func() error {
			return old.UpdateJobStatus(ctx, running.ID, terminal(running, batonv1.JobState_JOB_STATE_FAILED, epoch))
		},
		"worker report": func() error {
			return old.ApplyWorkerReport(ctx, "w1", running.ID, terminal(running, batonv1.JobState_JOB_STATE_SUCCEEDED, epoch))
		},
		"upsert worker": func() error { return old.UpsertWorker(ctx, store.Worker{ID: "w9", Name: "stale"}) },
		"create group":  func() error { return old.CreateGroup(ctx, store.Group{ID: "g9", Owner: "alice"}) },
		"request stop":  func() error { return old.RequestStop(ctx, running.ID, "alice") },
		"mark lost": func() error {
			_, err := old.MarkWorkerJobsLost(ctx, "w1", "stale leader", epoch)
			return err
		},
	}
	for name, write := range writes {
		if err := write(); !errors.Is(err, store.ErrFenced) {
			t.Errorf("%s by the old writer = %v, want ErrFenced", name, err)
		}
	}
	if _, err := current.GetJob(ctx, jobID(2)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the old writer's job was written: %v", err)
	}
	if got := mustGetJob(t, ctx, current, running.ID); got.Status.GetState() != batonv1.JobState_JOB_STATE_RUNNING || got.StopRequestedBy != "" {
		t.Errorf("the old writer changed the job: %v, stop by %q", got.Status.GetState(), got.StopRequestedBy)
	}
	if _, err := current.GetWorker(ctx, "w9"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the old writer's worker was written: %v", err)
	}
	if _, err := current.GetGroup(ctx, "g9"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the old writer's group was written: %v", err)
	}
	// The new writer's writes land.
	if err := current.UpdateJobStatus(ctx, running.ID, terminal(running, batonv1.JobState_JOB_STATE_SUCCEEDED, epoch)); err != nil {
		t.Fatalf("the new writer's UpdateJobStatus: %v", err)
	}
	if err := current.CreateJob(ctx, newJob(3, "w1", "alice")); err != nil {
		t.Fatalf("the new writer's CreateJob: %v", err)
	}
}

// TestFenceSQLite: a store opened on the file begins a newer term; the
// store opened before it can no longer write.
func TestFenceSQLite(t *testing.T) {
	t.Parallel()
	old, path := openStore(t)
	if err := old.UpsertWorker(t.Context(), store.Worker{ID: "w1", Name: "alpha"}); err != nil {
		t.Fatalf("a write in the first term: %v", err)
	}
	current, err := store.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { current.Close() })
	if old.Term() >= current.Term() {
		t.Fatalf("terms %d then %d, want them increasing", old.Term(), current.Term())
	}
	checkFenced(t, old, current)
}

// TestFenceEtcd: a store fenced on a leader key writes only while that key
// is the one created at its term; once it is replaced (a new leader), its
// writes fail and the new term's succeed.
func TestFenceEtcd(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	prefix := fmt.Sprintf("/test/fence-%d/", testEtcd.prefixes.Add(1))
	leader := prefix + "leader"
	first, err := testEtcd.cli.Put(ctx, leader, "replica-a")
	if err != nil {
		t.Fatal(err)
	}
	old := openEtcd(t, prefix+"store/", &store.Fence{Key: leader, Term: first.Header.Revision})
	if err := old.UpsertWorker(ctx, store.Worker{ID: "w1", Name: "alpha"}); err != nil {
		t.Fatalf("a write in the first term: %v", err)
	}
	// The first leader's key goes (its lease expired) and another
	// replica's takes its place.
	if _, err := testEtcd.cli.Delete(ctx, leader); err != nil {
		t.Fatal(err)
	}
	if err := old.UpsertWorker(ctx, store.Worker{ID: "w2", Name: "beta"}); !errors.Is(err, store.ErrFenced) {
		t.Errorf("a write with no leader key = %v, want ErrFenced", err)
	}
	second, err := testEtcd.cli.Put(ctx, leader, "replica-b")
	if err != nil {
		t.Fatal(err)
	}
	current := openEtcd(t, prefix+"store/", &store.Fence{Key: leader, Term: second.Header.Revision})
	checkFenced(t, old, current)
}

// TestFenceEtcdConflictsAreRetried: fenced writers that collide on one job
// run again from fresh reads, and none is taken for a stale term.
func TestFenceEtcdConflictsAreRetried(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	prefix := fmt.Sprintf("/test/fence-%d/", testEtcd.prefixes.Add(1))
	leader := prefix + "leader"
	put, err := testEtcd.cli.Put(ctx, leader, "replica-a")
	if err != nil {
		t.Fatal(err)
	}
	s := openEtcd(t, prefix+"store/", &store.Fence{Key: leader, Term: put.Header.Revision})
	j := newJob(1, "w1", "alice")
	mustCreateJob(t, ctx, s, j)
	const writers = 8
	errs := make(chan error, writers)
	for i := range writers {
		go func() { errs <- s.RequestStop(ctx, j.ID, fmt.Sprintf("user-%d", i)) }()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Errorf("RequestStop: %v", err)
		}
	}
	if got := mustGetJob(t, ctx, s, j.ID); got.StopRequestedBy == "" {
		t.Error("no stop recorded")
	}
}

// TestEtcdUnreachable: a cluster that cannot be reached fails calls with
// ErrUnavailable instead of hanging them.
func TestEtcdUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := store.OpenEtcd(t.Context(), cli, store.EtcdOptions{}); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("OpenEtcd on an unreachable cluster = %v, want ErrUnavailable", err)
	}
}

// TestFenceEtcdTellsTheWriter: a write refused for a stale term calls the
// fence's Fenced, so that a leader leaves office at once rather than when
// it next sees its session end.
func TestFenceEtcdTellsTheWriter(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	prefix := fmt.Sprintf("/test/fence-%d/", testEtcd.prefixes.Add(1))
	leader := prefix + "leader"
	put, err := testEtcd.cli.Put(ctx, leader, "replica-a")
	if err != nil {
		t.Fatal(err)
	}
	told := make(chan struct{}, 1)
	s := openEtcd(t, prefix+"store/", &store.Fence{Key: leader, Term: put.Header.Revision, Fenced: func() {
		select {
		case told <- struct{}{}:
		default:
		}
	}})
	if _, err := testEtcd.cli.Delete(ctx, leader); err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertWorker(ctx, store.Worker{ID: "w1", Name: "alpha"}); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("a write of a stale term = %v, want ErrFenced", err)
	}
	select {
	case <-told:
	default:
		t.Error("the fenced write did not call Fence.Fenced")
	}
}

// TestFenceEtcdNoChangeIsFencedToo: a write that finds nothing to change
// (a stop asked for again) still fails for a stale term, so that a deposed
// leader does not go on to act, on a worker, as if its term held.
func TestFenceEtcdNoChangeIsFencedToo(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	prefix := fmt.Sprintf("/test/fence-%d/", testEtcd.prefixes.Add(1))
	leader := prefix + "leader"
	put, err := testEtcd.cli.Put(ctx, leader, "replica-a")
	if err != nil {
		t.Fatal(err)
	}
	s := openEtcd(t, prefix+"store/", &store.Fence{Key: leader, Term: put.Header.Revision})
	j := newJob(1, "w1", "alice")
	mustCreateJob(t, ctx, s, j)
	if err := s.RequestStop(ctx, j.ID, "alice"); err != nil {
		t.Fatalf("RequestStop in the term: %v", err)
	}
	if _, err := testEtcd.cli.Delete(ctx, leader); err != nil {
		t.Fatal(err)
	}
	if err := s.RequestStop(ctx, j.ID, "alice"); !errors.Is(err, store.ErrFenced) {
		t.Errorf("the same stop asked again of a stale term = %v, want ErrFenced", err)
	}
}

// TestEtcdClosedIsUnavailable: a call still in flight when its replica
// leaves office (and closes the store) is told to try again, as a fenced
// one is, not that the scheduler failed.
func TestEtcdClosedIsUnavailable(t *testing.T) {
	t.Parallel()
	s := openEtcd(t, fmt.Sprintf("/test/%d/", testEtcd.prefixes.Add(1)), nil)
	s.Close()
	if err := s.UpsertWorker(t.Context(), store.Worker{ID: "w1", Name: "alpha"}); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("a write to a closed store = %v, want ErrUnavailable", err)
	}
	if _, err := s.GetJob(t.Context(), jobID(1)); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("a read of a closed store = %v, want ErrUnavailable", err)
	}
}
