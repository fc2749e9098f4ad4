package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// waitLimit bounds every wait of these tests; none of them should come
// near it.
const waitLimit = time.Minute

// holdWriter keeps the store's writer busy inside a write of its own until
// release is called, so that the writes queued meanwhile all go into the
// next batch.
func holdWriter(t *testing.T, s *store.SQLite) (release func()) {
	t.Helper()
	started, unblock, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- s.WriteFunc(context.Background(), func(func(string, ...any) error) error {
			close(started)
			<-unblock
			return nil
		})
	}()
	recv(t, "the writer to be held", started)
	var once sync.Once
	release = func() {
		once.Do(func() {
			close(unblock)
			if err := recvValue(t, "the holding write", done); err != nil {
				t.Errorf("holding write: %v", err)
			}
		})
	}
	t.Cleanup(release)
	return release
}

// countQueued returns a channel that receives once per write queued on s.
func countQueued(s *store.SQLite) <-chan struct{} {
	queued := make(chan struct{}, 1000)
	s.OnQueued(func() { queued <- struct{}{} })
	return queued
}

func recv[T any](t *testing.T, what string, c <-chan T) {
	t.Helper()
	recvValue(t, what, c)
}

func recvValue[T any](t *testing.T, what string, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// batchCall is one write of a batch and what it must return.
type batchCall struct {
	name    string
	call    func(ctx context.Context, s *store.SQLite) error
	wantErr error // nil: must succeed
	// applied reports whether the call's write is in the store.
	applied func(ctx context.Context, s *store.SQLite) bool
}

func jobExists(id string) func(ctx context.Context, s *store.SQLite) bool {
	return func(ctx context.Context, s *store.SQLite) bool {
		_, err := s.GetJob(ctx, id)
		return err == nil
	}
}

func jobState(id string, want batonv1.JobState) func(ctx context.Context, s *store.SQLite) bool {
	return func(ctx context.Context, s *store.SQLite) bool {
		j, err := s.GetJob(ctx, id)
		return err == nil && j.Status.GetState() == want
	}
}

// runBatch holds the writer, queues every call, and releases the writer:
// the calls run as one batch, in one transaction. It returns their errors
// and how many transactions the writer committed from the release on.
func runBatch(t *testing.T, s *store.SQLite, calls []batchCall) ([]error, int64) {
	t.Helper()
	ctx := t.Context()
	release := holdWriter(t, s)
	queued := countQueued(s)
	errs := make([]error, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Go(func() { errs[i] = c.call(ctx, s) })
	}
	for range calls {
		recv(t, "a write to be queued", queued)
	}
	before := s.Commits()
	release()
	wg.Wait()
	return errs, s.Commits() - before
}

var errBoom = errors.New("boom")

// TestBatchFailureStaysAlone: in one batch, a write that fails (a conflict,
// an unknown job, a constraint, an error after it changed rows) is rolled
// back alone and reported to its caller; the others commit.
func TestBatchFailureStaysAlone(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := t.Context()
	existing := newJob(0, "w1", "alice")
	mustCreateJob(t, ctx, s, existing)
	orphan := newJob(4, "w1", "alice")
	orphan.GroupID = "no-such-group"

	calls := []batchCall{
		{
			name:    "create",
			call:    func(ctx context.Context, s *store.SQLite) error { return s.CreateJob(ctx, newJob(1, "w1", "alice")) },
			applied: jobExists(jobID(1)),
		},
		{
			name:    "create with a taken id",
			call:    func(ctx context.Context, s *store.SQLite) error { return s.CreateJob(ctx, newJob(0, "w2", "bob")) },
			wantErr: store.ErrConflict,
			applied: func(ctx context.Context, s *store.SQLite) bool { return mustGetJob(t, ctx, s, jobID(0)).Owner == "bob" },
		},
		{
			name: "write that fails after changing rows",
			call: func(ctx context.Context, s *store.SQLite) error {
				return s.WriteFunc(ctx, func(exec func(string, ...any) error) error {
					if err := exec(`UPDATE jobs SET owner = 'mallory' WHERE job_id = ?`, jobID(0)); err != nil {
						return err
					}
					return errBoom
				})
			},
			wantErr: errBoom,
			applied: func(ctx context.Context, s *store.SQLite) bool {
				return mustGetJob(t, ctx, s, jobID(0)).Owner == "mallory"
			},
		},
		{
			name: "report on an unknown job",
			call: func(ctx context.Context, s *store.SQLite) error {
				return s.ApplyWorkerReport(ctx, "w1", jobID(99), &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING})
			},
			wantErr: store.ErrNotFound,
			applied: jobExists(jobID(99)),
		},
		{
			name:    "create in an unknown group",
			call:    func(ctx context.Context, s *store.SQLite) error { return s.CreateJob(ctx, orphan) },
			wantErr: store.ErrNotFound,
			applied: jobExists(orphan.ID),
		},
		{
			name: "report from another worker",
			call: func(ctx context.Context, s *store.SQLite) error {
				return s.ApplyWorkerReport(ctx, "w2", jobID(0), &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_FAILED})
			},
			wantErr: store.ErrNotOnWorker,
			applied: jobState(jobID(0), batonv1.JobState_JOB_STATE_FAILED),
		},
		{
			name: "report of an end",
			call: func(ctx context.Context, s *store.SQLite) error {
				return s.ApplyWorkerReport(ctx, "w1", jobID(0), terminal(existing, batonv1.JobState_JOB_STATE_SUCCEEDED, epoch.Add(time.Hour)))
			},
			applied: jobState(jobID(0), batonv1.JobState_JOB_STATE_SUCCEEDED),
		},
		{
			name:    "another create",
			call:    func(ctx context.Context, s *store.SQLite) error { return s.CreateJob(ctx, newJob(2, "w1", "alice")) },
			applied: jobExists(jobID(2)),
		},
	}
	errs, commits := runBatch(t, s, calls)
	// The holding write's transaction and the batch's.
	if commits > 2 {
		t.Errorf("the writes took %d transactions, want them in one batch", commits-1)
	}
	for i, c := range calls {
		err := errs[i]
		switch {
		case c.wantErr == nil && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.wantErr != nil && !errors.Is(err, c.wantErr):
			t.Errorf("%s = %v, want %v", c.name, err, c.wantErr)
		}
		if applied := c.applied(ctx, s); applied != (c.wantErr == nil) {
			t.Errorf("%s: applied = %v, want %v", c.name, applied, c.wantErr == nil)
		}
	}
}

// TestBatchVerdictReadable: a write that fails because of another write
// of its batch (a second create with the same idempotency key) returns only
// once that other write is committed, so that its caller can read what it
// conflicted with, as StartJob does.
func TestBatchVerdictReadable(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := t.Context()
	release := holdWriter(t, s)
	queued := countQueued(s)
	keyed := func(i int) store.Job {
		j := newJob(i, "w1", "alice")
		j.IdempotencyKey = "once"
		return j
	}
	won, lost := make(chan error, 1), make(chan error, 1)
	go func() { won <- s.CreateJob(ctx, keyed(1)) }()
	recv(t, "the first create to be queued", queued)
	go func() {
		err := s.CreateJob(ctx, keyed(2))
		if errors.Is(err, store.ErrConflict) {
			_, err = s.GetJobByIdempotencyKey(ctx, "alice", "once")
		}
		lost <- err
	}()
	recv(t, "the second create to be queued", queued)
	// The batch's last write keeps its transaction open for a while: a
	// verdict returned before the commit would be read in that time.
	go func() {
		_ = s.WriteFunc(ctx, func(func(string, ...any) error) error {
			<-time.After(250 * time.Millisecond)
			return nil
		})
	}()
	recv(t, "the last write to be queued", queued)
	release()
	if err := recvValue(t, "the first create", won); err != nil {
		t.Fatalf("first CreateJob: %v", err)
	}
	if err := recvValue(t, "the second create", lost); err != nil {
		t.Fatalf("second CreateJob, then GetJobByIdempotencyKey: %v", err)
	}
}

// TestBatchQueuedCallerGivesUp: a caller whose context ends while its
// write waits in the queue returns the context's error, and its write is
// never applied; the writes queued with it are.
func TestBatchQueuedCallerGivesUp(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := t.Context()
	release := holdWriter(t, s)
	queued := countQueued(s)

	giveUp, cancel := context.WithCancel(ctx)
	abandoned, kept := make(chan error, 1), make(chan error, 1)
	go func() { abandoned <- s.CreateJob(giveUp, newJob(1, "w1", "alice")) }()
	go func() { kept <- s.CreateJob(ctx, newJob(2, "w1", "alice")) }()
	recv(t, "a write to be queued", queued)
	recv(t, "a write to be queued", queued)
	cancel()
	if err := recvValue(t, "the abandoned write", abandoned); !errors.Is(err, context.Canceled) {
		t.Fatalf("CreateJob with its context cancelled in the queue = %v, want context.Canceled", err)
	}
	release()
	if err := recvValue(t, "the kept write", kept); err != nil {
		t.Fatalf("CreateJob queued alongside: %v", err)
	}
	if _, err := s.GetJob(ctx, jobID(1)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the abandoned job is stored (GetJob = %v)", err)
	}
	mustGetJob(t, ctx, s, jobID(2))
}

// TestBatchStartedWriteOutlivesContext: once the writer has started a
// write, its caller waits for the outcome even when its context ends, so
// that an error always means nothing was written.
func TestBatchStartedWriteOutlivesContext(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	started, unblock, result := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	j := newJob(1, "w1", "alice")
	go func() {
		result <- s.WriteFunc(ctx, func(exec func(string, ...any) error) error {
			close(started)
			<-unblock
			return exec(`INSERT INTO jobs (job_id, worker_id, owner, state, created_at, status) VALUES (?, ?, ?, ?, ?, x'')`,
				j.ID, j.WorkerID, j.Owner, int32(batonv1.JobState_JOB_STATE_PENDING), j.CreatedAt.UnixNano())
		})
	}()
	recv(t, "the write to start", started)
	cancel()
	select {
	case err := <-result:
		t.Fatalf("a started write returned %v before its outcome", err)
	default:
	}
	close(unblock)
	if err := recvValue(t, "the write", result); err != nil {
		t.Fatalf("started write with its context cancelled = %v, want nil", err)
	}
	mustGetJob(t, t.Context(), s, j.ID)
}

// TestBatchFailedCommitFailsAll: when the batch's COMMIT fails, every
// write of the batch fails, none is applied, and the store takes writes
// again afterwards.
func TestBatchFailedCommitFailsAll(t *testing.T) {
	t.Parallel()
	s, _ := openStore(t)
	ctx := t.Context()
	// A foreign key checked only at COMMIT makes the commit itself fail.
	deferred := batchCall{
		name: "write with a deferred violation",
		call: func(ctx context.Context, s *store.SQLite) error {
			return s.WriteFunc(ctx, func(exec func(string, ...any) error) error {
				if err := exec(`PRAGMA defer_foreign_keys = ON`); err != nil {
					return err
				}
				return exec(`INSERT INTO jobs (job_id, worker_id, owner, group_id, state, created_at, status) VALUES ('orphan', 'w1', 'alice', 'no-such-group', 1, 1, x'')`)
			})
		},
		applied: jobExists("orphan"),
	}
	calls := []batchCall{deferred}
	for i := range 3 {
		calls = append(calls, batchCall{
			name:    fmt.Sprintf("create %d", i),
			call:    func(ctx context.Context, s *store.SQLite) error { return s.CreateJob(ctx, newJob(i, "w1", "alice")) },
			applied: jobExists(jobID(i)),
		})
	}
	errs, _ := runBatch(t, s, calls)
	for i, c := range calls {
		// The commit's failure is not the verdict on any one write.
		if errs[i] == nil || errors.Is(errs[i], store.ErrNotFound) || errors.Is(errs[i], store.ErrConflict) {
			t.Errorf("%s = %v, want the commit's failure", c.name, errs[i])
		}
		if c.applied(ctx, s) {
			t.Errorf("%s is applied", c.name)
		}
	}
	mustCreateJob(t, ctx, s, newJob(0, "w1", "alice"))
}

// TestBatchDiskFull fills the store's file system while the writer is
// held: the batch's COMMIT cannot append to the WAL, and every write of the
// batch fails with ErrUnavailable, applied nowhere; once space is freed,
// writes succeed again.
func TestBatchDiskFull(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=8m"); err != nil {
		t.Skipf("cannot mount a tmpfs for the store (%v): a full disk is not played out", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	ctx := t.Context()
	s, err := store.Open(ctx, filepath.Join(dir, "baton.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for i := range 10 {
		mustCreateJob(t, ctx, s, newJob(i, "w1", "alice"))
	}
	// An empty WAL, so that the next commit has to grow it.
	if err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(dir, "filler")
	var calls []batchCall
	for i := 10; i < 14; i++ {
		calls = append(calls, batchCall{
			name:    fmt.Sprintf("create %d", i),
			call:    func(ctx context.Context, s *store.SQLite) error { return s.CreateJob(ctx, newJob(i, "w1", "alice")) },
			applied: jobExists(jobID(i)),
		})
	}
	calls = append(calls, batchCall{
		name: "report of an end",
		call: func(ctx context.Context, s *store.SQLite) error {
			return s.ApplyWorkerReport(ctx, "w1", jobID(0), terminal(newJob(0, "w1", "alice"), batonv1.JobState_JOB_STATE_FAILED, epoch.Add(time.Hour)))
		},
		applied: jobState(jobID(0), batonv1.JobState_JOB_STATE_FAILED),
	})
	calls[0].call = func(ctx context.Context, s *store.SQLite) error {
		// The first queued write fills the disk: the writer is held, so
		// the batch starts only after it.
		fill(t, filler)
		return s.CreateJob(ctx, newJob(10, "w1", "alice"))
	}
	errs, _ := runBatch(t, s, calls)
	for i, c := range calls {
		if !errors.Is(errs[i], store.ErrUnavailable) {
			t.Errorf("%s with the disk full = %v, want ErrUnavailable", c.name, errs[i])
		}
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for _, c := range calls {
		if c.applied(ctx, s) {
			t.Errorf("%s is applied", c.name)
		}
	}
	mustCreateJob(t, ctx, s, newJob(20, "w1", "alice"))
}

// fill writes to path until its file system is full.
func fill(t *testing.T, path string) {
	f, err := os.Create(path)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Error(err)
			}
			return
		}
	}
}

// TestConcurrentJobLives runs many jobs through their life at once, with
// late and repeated reports mixed in, while readers watch: every job ends
// SUCCEEDED, each end is observed once, a caller reads its own writes, and
// no reader ever sees a job's life go backward.
func TestConcurrentJobLives(t *testing.T) {
	t.Parallel()
	const goroutines, perG = 16, 15
	s, _ := openStore(t)
	ctx := t.Context()
	var log endLog
	s.ObserveJobEnds(log.add)
	stage := map[batonv1.JobState]int{
		batonv1.JobState_JOB_STATE_PENDING:   1,
		batonv1.JobState_JOB_STATE_RUNNING:   2,
		batonv1.JobState_JOB_STATE_SUCCEEDED: 3,
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	// atLeast checks that job id is at stage want or later.
	atLeast := func(id string, want batonv1.JobState) error {
		j, err := s.GetJob(ctx, id)
		if err != nil {
			return err
		}
		if stage[j.Status.GetState()] < stage[want] {
			return fmt.Errorf("job %s read as %v after %v was written", id, j.Status.GetState(), want)
		}
		return nil
	}
	done := make(chan struct{})
	for g := range goroutines {
		worker := fmt.Sprintf("w%d", g%4)
		wg.Go(func() {
			for i := range perG {
				k := g*perG + i
				id := jobID(k)
				running := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: int32(k)}
				steps := []struct {
					state batonv1.JobState
					write func() error
				}{
					{batonv1.JobState_JOB_STATE_PENDING, func() error {
						j := newJob(k, worker, "alice")
						j.Status.State = batonv1.JobState_JOB_STATE_PENDING
						return s.CreateJob(ctx, j)
					}},
					{batonv1.JobState_JOB_STATE_RUNNING, func() error { return s.ApplyWorkerReport(ctx, worker, id, running) }},
					{batonv1.JobState_JOB_STATE_RUNNING, func() error { return s.ApplyWorkerReport(ctx, worker, id, running) }},
					{batonv1.JobState_JOB_STATE_SUCCEEDED, func() error {
						return s.ApplyWorkerReport(ctx, worker, id, &batonv1.JobStatus{
							State: batonv1.JobState_JOB_STATE_SUCCEEDED, Pid: int32(k), ExitCode: new(int32(0)), EndedAt: timestamppb.Now(),
						})
					}},
					// Late reports change nothing.
					{batonv1.JobState_JOB_STATE_SUCCEEDED, func() error { return s.ApplyWorkerReport(ctx, worker, id, running) }},
					{batonv1.JobState_JOB_STATE_SUCCEEDED, func() error {
						return s.ApplyWorkerReport(ctx, worker, id, &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_PENDING})
					}},
				}
				for _, step := range steps {
					if err := step.write(); err != nil {
						fail(fmt.Errorf("job %s, write of %v: %w", id, step.state, err))
						return
					}
					if err := atLeast(id, step.state); err != nil {
						fail(err)
						return
					}
				}
			}
		})
	}
	// Readers: the life of any job they see only moves forward.
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Go(func() {
			seen := make(map[string]int)
			for {
				select {
				case <-done:
					return
				default:
				}
				jobs, _, err := s.ListJobs(ctx, store.JobFilter{WorkerID: fmt.Sprintf("w%d", r), PageSize: 50})
				if err != nil {
					fail(err)
					return
				}
				for _, j := range jobs {
					st := stage[j.Status.GetState()]
					if st < seen[j.ID] {
						fail(fmt.Errorf("job %s went back to %v", j.ID, j.Status.GetState()))
						return
					}
					seen[j.ID] = st
				}
			}
		})
	}
	wg.Wait()
	close(done)
	readers.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	jobs, _, err := s.ListJobs(ctx, store.JobFilter{PageSize: store.MaxPageSize, States: []batonv1.JobState{batonv1.JobState_JOB_STATE_SUCCEEDED}})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != goroutines*perG {
		t.Errorf("%d jobs succeeded, want %d", len(jobs), goroutines*perG)
	}
	if ends := log.take(); len(ends) != goroutines*perG {
		t.Errorf("%d ends observed, want %d", len(ends), goroutines*perG)
	}
	t.Logf("%d writes in %d transactions", goroutines*perG*6, s.Commits())
}
