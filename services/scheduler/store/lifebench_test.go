package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// jobLife is the store's part in one job's life, as the scheduler plays it:
// created PENDING by StartJob, then its worker's reports of RUNNING and of
// its end.
type jobLife interface {
	CreateJob(ctx context.Context, j store.Job) error
	ApplyWorkerReport(ctx context.Context, workerID, id string, st *batonv1.JobStatus) error
}

// liveJobs runs the lives of jobs from up to n from clients goroutines.
func liveJobs(tb testing.TB, s jobLife, clients, from, n int) {
	ctx := tb.Context()
	var (
		next sync.WaitGroup
		i    atomic.Int64
		errs = make(chan error, clients)
	)
	i.Store(int64(from))
	for c := range clients {
		worker := fmt.Sprintf("w%d", c)
		next.Go(func() {
			for {
				k := int(i.Add(1)) - 1
				if k >= n {
					return
				}
				if err := liveJob(ctx, s, worker, k); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	next.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

func liveJob(ctx context.Context, s jobLife, worker string, k int) error {
	j := newJob(k, worker, "alice")
	j.Status.State = batonv1.JobState_JOB_STATE_PENDING
	j.Status.Pid, j.Status.StartedAt = 0, nil
	if err := s.CreateJob(ctx, j); err != nil {
		return err
	}
	running := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: int32(1000 + k), StartedAt: timestamppb.Now()}
	if err := s.ApplyWorkerReport(ctx, worker, j.ID, running); err != nil {
		return err
	}
	done := proto.CloneOf(running)
	done.State, done.ExitCode, done.EndedAt = batonv1.JobState_JOB_STATE_SUCCEEDED, new(int32(0)), timestamppb.Now()
	return s.ApplyWorkerReport(ctx, worker, j.ID, done)
}

// BenchmarkJobLife runs jobs through their life from 1 and 16 goroutines.
// ns/op is per job on the store; baseline-ns/job is the same life written
// as a store without group commit writes it, each write in its own
// transaction; speedup is the baseline's time over the store's. The two
// take turns, a slice of the jobs each, so that both see the same load.
func BenchmarkJobLife(b *testing.B) {
	const turns = 10
	for _, clients := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			s, _ := openStore(b)
			base := openBaseline(b)
			var took, baseTook time.Duration
			b.ResetTimer()
			for t := range turns {
				from, to := b.N*t/turns, b.N*(t+1)/turns
				start := time.Now()
				liveJobs(b, s, clients, from, to)
				took += time.Since(start)
				b.StopTimer()
				start = time.Now()
				liveJobs(b, base, clients, from, to)
				baseTook += time.Since(start)
				b.StartTimer()
			}
			b.ReportMetric(float64(baseTook.Nanoseconds())/float64(b.N), "baseline-ns/job")
			b.ReportMetric(float64(baseTook)/float64(took), "speedup")
		})
	}
}

// BenchmarkJobLifeStore is BenchmarkJobLife without the baseline, for
// counting the store's system calls.
func BenchmarkJobLifeStore(b *testing.B) {
	for _, clients := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			s, _ := openStore(b)
			b.ResetTimer()
			liveJobs(b, s, clients, 0, b.N)
		})
	}
}

// baseline writes a job's life with one transaction per write, queued on
// a semaphore and begun with BEGIN IMMEDIATE, through database/sql on a
// file with the store's schema and pragmas.
type baseline struct {
	db                   *sql.DB
	sem                  chan struct{}
	insert, read, update *sql.Stmt
}

func openBaseline(tb testing.TB) *baseline {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "baseline.db")
	s, err := store.Open(tb.Context(), path)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Close(); err != nil {
		tb.Fatal(err)
	}
	q := url.Values{}
	for _, p := range []string{"busy_timeout(5000)", "journal_mode(WAL)", "foreign_keys(1)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", (&url.URL{Scheme: "file", Path: path, OmitHost: true, RawQuery: q.Encode()}).String())
	if err != nil {
		tb.Fatal(err)
	}
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	tb.Cleanup(func() { db.Close() })
	b := &baseline{db: db, sem: make(chan struct{}, 1)}
	for _, p := range []struct {
		st    **sql.Stmt
		query string
	}{
		{&b.insert, `INSERT INTO jobs (job_id, worker_id, owner, group_id, idempotency_key, state, created_at, ended_at, status)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		{&b.read, `SELECT worker_id, status FROM jobs WHERE job_id = ?`},
		{&b.update, `UPDATE jobs SET state = ?, ended_at = ?, status = ?,
	stop_requested_by = CASE WHEN ? THEN NULL ELSE stop_requested_by END WHERE job_id = ?`},
	} {
		if *p.st, err = db.PrepareContext(tb.Context(), p.query); err != nil {
			tb.Fatal(err)
		}
	}
	return b
}

func (b *baseline) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	b.sem <- struct{}{}
	defer func() { <-b.sem }()
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

func (b *baseline) CreateJob(ctx context.Context, j store.Job) error {
	st := proto.CloneOf(j.Status)
	st.JobId, st.WorkerId, st.Owner, st.CreatedAt = j.ID, j.WorkerID, j.Owner, timestamppb.New(j.CreatedAt)
	blob, err := proto.Marshal(st)
	if err != nil {
		return err
	}
	return b.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.StmtContext(ctx, b.insert).ExecContext(ctx, j.ID, j.WorkerID, j.Owner, nil, nil, int32(st.GetState()), j.CreatedAt.UnixNano(), nil, blob)
		return err
	})
}

func (b *baseline) ApplyWorkerReport(ctx context.Context, workerID, id string, st *batonv1.JobStatus) error {
	return b.write(ctx, func(tx *sql.Tx) error {
		var (
			worker string
			blob   []byte
		)
		err := tx.StmtContext(ctx, b.read).QueryRowContext(ctx, id).Scan(&worker, &blob)
		if err != nil {
			return err
		}
		if worker != workerID {
			return errors.New("job on another worker")
		}
		next := &batonv1.JobStatus{}
		if err := proto.Unmarshal(blob, next); err != nil {
			return err
		}
		next.State, next.Pid, next.ExitCode = st.GetState(), st.GetPid(), st.ExitCode
		next.StartedAt, next.EndedAt = st.GetStartedAt(), st.GetEndedAt()
		if blob, err = proto.Marshal(next); err != nil {
			return err
		}
		var ended any
		if st.GetEndedAt() != nil {
			ended = st.GetEndedAt().AsTime().UnixNano()
		}
		_, err = tx.StmtContext(ctx, b.update).ExecContext(ctx, int32(st.GetState()), ended, blob, ended != nil, id)
		return err
	})
}
