package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// busyTimeout is how long a statement waits for a lock held by another
// connection before failing with SQLITE_BUSY. In-process writes all go
// through one connection, so this only matters when another process (an
// operator's sqlite3 shell, a backup) holds the file.
const busyTimeout = 5 * time.Second

// pruneBatch is how many jobs one PruneJobs transaction deletes, so that a
// large backlog never holds the write lock for long.
const pruneBatch = 1000

// SQLite is the [Store] kept in one SQLite file. It is safe for concurrent
// use; Close it when done.
//
// Reads run in parallel on a small pool of connections (WAL mode lets readers
// proceed while a write is in progress). Writes are handed to one goroutine
// that owns the only writing connection and commits the writes queued by
// concurrent callers together, one transaction per batch; a write returns
// once its batch committed. A write's ctx bounds only its wait in the
// queue: one whose ctx ends before the writer starts it returns ctx's
// error and changes nothing, and one already started runs to its outcome.
type SQLite struct {
	db *sql.DB // the read pool

	mu    sync.Mutex
	stmts map[string]*sql.Stmt // of the read pool, prepared on first use, by query text

	queue writeQueue
	w     *writer
	// wdb holds the writer's connection and the checkpointer's.
	wdb        *sql.DB
	ckptConn   *sql.Conn
	ckpt       chan struct{} // capacity 1: a checkpoint is wanted
	ckptTail   chan struct{} // capacity 1: the checkpointer is done
	writerDone chan struct{}
	ckptDone   chan struct{}
	// commits counts the writer's committed transactions.
	commits atomic.Int64
	// feed wakes the readers of the change feed at each commit that
	// wrote jobs.
	feed feedWake

	closeOnce sync.Once
	closeErr  error

	// onJobEnd is called after a write that ended a job; see ObserveJobEnds.
	onJobEnd atomic.Pointer[func(JobEnd)]

	// term is this store's term, taken at Open; a batch commits only
	// while the file's term is still this one.
	term int64
}

var (
	_ Store          = (*SQLite)(nil)
	_ JobEndObserver = (*SQLite)(nil)
)

// ObserveJobEnds implements [JobEndObserver].
func (s *SQLite) ObserveJobEnds(fn func(JobEnd)) {
	s.onJobEnd.Store(&fn)
}

// jobsEnded reports jobs that ended to the observer, if any. It is called
// after the transaction committed, with no lock held.
func (s *SQLite) jobsEnded(ends ...JobEnd) {
	if fn := s.onJobEnd.Load(); fn != nil && *fn != nil {
		for _, e := range ends {
			(*fn)(e)
		}
	}
}

// Open opens the store in the SQLite file at path, creating the file (mode
// 0600) and its parent directory (mode 0700) if needed, and brings its schema
// up to date. It fails with an error wrapping ErrSchemaTooNew if the file was
// written by a newer scheduler.
func Open(ctx context.Context, path string) (*SQLite, error) {
	if path == "" {
		return nil, errors.New("open store: no database path given")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// The store holds every job's env values: its directory and files are
	// the scheduler's alone, also when they already existed with wider
	// modes. SQLite would create the file with mode 0644 (less the umask);
	// create it first so that it, and the -wal and -shm files SQLite
	// derives their mode from, are readable by the scheduler only.
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("open store: create directory: %w", err)
	}
	if err := os.Chmod(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	err = f.Chmod(0o600)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	for _, side := range []string{abs + "-wal", abs + "-shm"} {
		if err := os.Chmod(side, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}

	db, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	conns := max(4, runtime.GOMAXPROCS(0))
	db.SetMaxOpenConns(conns)
	// Keep idle connections: a new one repeats the pragmas and loses its
	// prepared statements.
	db.SetMaxIdleConns(conns)

	var mode string
	if err := db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		db.Close()
		return nil, fmt.Errorf("open store: the database file cannot use write-ahead logging (journal mode %q); put it on a local file system", mode)
	}
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	var term int64
	if err := db.QueryRowContext(ctx, `UPDATE term SET term = term + 1 WHERE id = 1 RETURNING term`).Scan(&term); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store: begin a term: %w", err)
	}
	s, err := openWriter(ctx, abs, db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	s.term = term
	return s, nil
}

// openWriter returns the store reading through db, with its writer and
// checkpointer connected and running.
func openWriter(ctx context.Context, abs string, db *sql.DB) (*SQLite, error) {
	wdb, err := sql.Open("sqlite", dsn(abs, writerPragmas...))
	if err != nil {
		return nil, err
	}
	wdb.SetMaxOpenConns(2)
	wdb.SetMaxIdleConns(2)
	wconn, err := wdb.Conn(ctx)
	if err != nil {
		wdb.Close()
		return nil, err
	}
	cconn, err := wdb.Conn(ctx)
	if err != nil {
		wconn.Close()
		wdb.Close()
		return nil, err
	}
	// The term is the store's already: no other store commits from now
	// on, and the last rev written stays the last one committed.
	var rev int64
	if err := db.QueryRowContext(ctx, lastRevQuery).Scan(&rev); err != nil {
		wconn.Close()
		cconn.Close()
		wdb.Close()
		return nil, fmt.Errorf("read the change feed's position: %w", err)
	}
	s := &SQLite{
		db:         db,
		stmts:      make(map[string]*sql.Stmt),
		queue:      writeQueue{wake: make(chan struct{})},
		w:          &writer{conn: wconn, stmts: make(map[string]*sql.Stmt), rev: rev},
		wdb:        wdb,
		ckptConn:   cconn,
		ckpt:       make(chan struct{}, 1),
		ckptTail:   make(chan struct{}, 1),
		writerDone: make(chan struct{}),
		ckptDone:   make(chan struct{}),
	}
	go s.runWriter()
	go s.runCheckpoints()
	return s, nil
}

// dsn returns the modernc.org/sqlite data source name for the file at abs,
// with the extra pragmas after the common ones. The file: URI form keeps a
// '?' or '#' in the path from being read as the start of the parameters.
// The pragmas are applied to every new connection.
func dsn(abs string, extra ...string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	// NORMAL is durable across application crashes in WAL mode; a power loss
	// may roll back the last commits but never corrupts the file
	// (https://sqlite.org/pragma.html#pragma_synchronous).
	q.Add("_pragma", "synchronous(NORMAL)")
	for _, p := range extra {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), OmitHost: true, RawQuery: q.Encode()}
	return u.String()
}

// Term is the store's term: the number of times the file had been opened,
// this time included. A store whose term is no longer the file's newest
// fails every write with ErrFenced.
func (s *SQLite) Term() int64 { return s.term }

// Close closes the database. Writes queued before Close are carried out;
// calls after Close fail. Close waits for calls in progress to finish.
func (s *SQLite) Close() error {
	s.closeOnce.Do(func() {
		s.queue.close()
		<-s.writerDone
		close(s.ckpt)
		<-s.ckptDone
		errs := []error{s.w.close(), s.ckptConn.Close(), s.wdb.Close()}
		s.mu.Lock()
		for _, st := range s.stmts {
			errs = append(errs, st.Close())
		}
		s.stmts = nil
		s.mu.Unlock()
		errs = append(errs, s.db.Close())
		s.closeErr = errors.Join(errs...)
		// Readers waiting in Changes find the store closed now rather
		// than at their next poll.
		s.feed.committed()
	})
	return s.closeErr
}

// stmt returns the prepared statement for query, preparing it on first use.
// Every query text is a constant or built from constant fragments, so the
// cache stays small.
func (s *SQLite) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stmts == nil {
		return nil, errClosed
	}
	if st, ok := s.stmts[query]; ok {
		return st, nil
	}
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	s.stmts[query] = st
	return st, nil
}

// query runs a read-only statement outside any transaction.
func (s *SQLite) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := s.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// queryRow is query for one row; a missing row shows as sql.ErrNoRows on Scan.
func (s *SQLite) queryRow(ctx context.Context, query string, args ...any) (*sql.Row, error) {
	st, err := s.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryRowContext(ctx, args...), nil
}

// unavailable marks err as ErrUnavailable when SQLite failed for a reason
// of the moment rather than of the request.
func unavailable(err error) error {
	switch sqliteCode(err) & 0xff {
	case sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_BUSY,
		sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOMEM:
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// sqliteCode returns the extended result code of err, or 0 if err does not
// come from SQLite.
func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// Workers.

const workerColumns = `worker_id, name, address, state, labels, capacity, running_jobs, last_heartbeat, registered_at`

// DeleteWorker implements [Store].
func (s *SQLite) DeleteWorker(ctx context.Context, id string) error {
	var n int64
	err := s.write(ctx, func(tx *writer) error {
		res, err := tx.exec(`DELETE FROM workers WHERE worker_id = ?`, id)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return fmt.Errorf("delete worker %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("worker %s: %w", id, ErrNotFound)
	}
	return nil
}

// UpsertWorker implements [Store].
func (s *SQLite) UpsertWorker(ctx context.Context, w Worker) error {
	if w.ID == "" {
		return errors.New("upsert worker: empty worker id")
	}
	labels := w.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	lj, err := json.Marshal(labels)
	if err != nil {
		return fmt.Errorf("upsert worker %s: %w", w.ID, err)
	}
	err = s.write(ctx, func(tx *writer) error {
		_, err := tx.exec(`INSERT INTO workers (`+workerColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (worker_id) DO UPDATE SET
	name = excluded.name, address = excluded.address, state = excluded.state,
	labels = excluded.labels, capacity = excluded.capacity, running_jobs = excluded.running_jobs,
	last_heartbeat = excluded.last_heartbeat, registered_at = excluded.registered_at`,
			w.ID, w.Name, w.Address, int32(w.State), string(lj), w.Capacity, w.RunningJobs,
			unixNano(w.LastHeartbeat), unixNano(w.RegisteredAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("upsert worker %s: %w", w.ID, err)
	}
	return nil
}

// GetWorker implements [Store].
func (s *SQLite) GetWorker(ctx context.Context, id string) (Worker, error) {
	row, err := s.queryRow(ctx, `SELECT `+workerColumns+` FROM workers WHERE worker_id = ?`, id)
	if err != nil {
		return Worker{}, fmt.Errorf("get worker %s: %w", id, err)
	}
	w, err := scanWorker(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Worker{}, fmt.Errorf("worker %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Worker{}, fmt.Errorf("get worker %s: %w", id, err)
	}
	return w, nil
}

// ListWorkers implements [Store].
func (s *SQLite) ListWorkers(ctx context.Context) ([]Worker, error) {
	rows, err := s.query(ctx, `SELECT `+workerColumns+` FROM workers ORDER BY name, worker_id`)
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	defer rows.Close()
	var ws []Worker
	for rows.Next() {
		w, err := scanWorker(rows)
		if err != nil {
			return nil, fmt.Errorf("list workers: %w", err)
		}
		ws = append(ws, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	return ws, nil
}

type scanner interface{ Scan(dest ...any) error }

func scanWorker(r scanner) (Worker, error) {
	var (
		w                     Worker
		state                 int32
		labels                string
		heartbeat, registered int64
	)
	if err := r.Scan(&w.ID, &w.Name, &w.Address, &state, &labels, &w.Capacity, &w.RunningJobs, &heartbeat, &registered); err != nil {
		return Worker{}, err
	}
	w.State = batonv1.WorkerState(state)
	if err := json.Unmarshal([]byte(labels), &w.Labels); err != nil {
		return Worker{}, fmt.Errorf("worker %s: decode labels: %w", w.ID, err)
	}
	if len(w.Labels) == 0 {
		w.Labels = nil
	}
	w.LastHeartbeat = fromUnixNano(heartbeat)
	w.RegisteredAt = fromUnixNano(registered)
	return w, nil
}

// Jobs.

const jobColumns = `job_id, worker_id, owner, group_id, idempotency_key, created_at, status, stop_requested_by`

// CreateJob implements [Store].
func (s *SQLite) CreateJob(ctx context.Context, j Job) error {
	st := newJobStatus(&j)
	if j.ID == "" {
		return errors.New("create job: empty job id")
	}
	blob, err := proto.Marshal(st)
	if err != nil {
		return fmt.Errorf("create job %s: %w", j.ID, err)
	}
	queued := st.GetState() == batonv1.JobState_JOB_STATE_QUEUED
	if queued != (j.Queue != nil) {
		return fmt.Errorf("create job %s: a job has a place in the queue if and only if it is QUEUED", j.ID)
	}
	err = s.write(ctx, func(tx *writer) error { return insertJob(tx, j, st, blob) })
	switch sqliteCode(err) {
	case 0:
		if err != nil {
			return fmt.Errorf("create job %s: %w", j.ID, err)
		}
		return nil
	case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return fmt.Errorf("job %s: %w", j.ID, ErrConflict)
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE:
		return fmt.Errorf("job with idempotency key %q of owner %q: %w", j.IdempotencyKey, j.Owner, ErrConflict)
	case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		return fmt.Errorf("group %s of job %s: %w", j.GroupID, j.ID, ErrNotFound)
	default:
		return fmt.Errorf("create job %s: %w", j.ID, err)
	}
}

// insertJob writes job j, whose status st (as newJobStatus made it) is
// blob, and its place in the queue when it is QUEUED.
func insertJob(tx *writer, j Job, st *batonv1.JobStatus, blob []byte) error {
	_, err := tx.exec(`INSERT INTO jobs (job_id, worker_id, owner, group_id, idempotency_key, state, created_at, ended_at, status, rev)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		j.ID, j.WorkerID, j.Owner, nullString(j.GroupID), nullString(j.IdempotencyKey),
		int32(st.GetState()), unixNano(j.CreatedAt), endedAt(st), blob, tx.nextRev())
	if err != nil {
		return err
	}
	if len(j.Script) > 0 {
		if _, err := tx.exec(`INSERT INTO scripts (job_id, content) VALUES (?, ?)`, j.ID, j.Script); err != nil {
			return err
		}
	}
	if st.GetState() != batonv1.JobState_JOB_STATE_QUEUED {
		return nil
	}
	q := j.Queue
	_, err = tx.exec(`INSERT INTO queue (job_id, worker_id, priority, round, seq, deadline) VALUES (?, ?, ?, ?, ?, ?)`,
		j.ID, q.WorkerID, q.Priority, q.Round, q.Seq, unixNano(q.Deadline))
	return err
}

// GetJob implements [Store].
func (s *SQLite) GetJob(ctx context.Context, id string) (Job, error) {
	row, err := s.queryRow(ctx, `SELECT `+jobColumns+` FROM jobs WHERE job_id = ?`, id)
	if err != nil {
		return Job{}, fmt.Errorf("get job %s: %w", id, err)
	}
	j, err := scanJob(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Job{}, fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Job{}, fmt.Errorf("get job %s: %w", id, err)
	}
	return j, nil
}

// GetJobByIdempotencyKey implements [Store].
func (s *SQLite) GetJobByIdempotencyKey(ctx context.Context, owner, key string) (Job, error) {
	if key == "" {
		return Job{}, fmt.Errorf("job with an empty idempotency key: %w", ErrNotFound)
	}
	row, err := s.queryRow(ctx, `SELECT `+jobColumns+` FROM jobs WHERE owner = ? AND idempotency_key = ?`, owner, key)
	if err != nil {
		return Job{}, fmt.Errorf("get job by idempotency key: %w", err)
	}
	j, err := scanJob(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Job{}, fmt.Errorf("job with idempotency key %q of owner %q: %w", key, owner, ErrNotFound)
	}
	if err != nil {
		return Job{}, fmt.Errorf("get job by idempotency key: %w", err)
	}
	return j, nil
}

// UpdateJobStatus implements [Store].
func (s *SQLite) UpdateJobStatus(ctx context.Context, id string, st *batonv1.JobStatus) error {
	return s.updateJobStatus(ctx, id, "", st, schedulerUpdate(st))
}

// ApplyWorkerReport implements [Store].
func (s *SQLite) ApplyWorkerReport(ctx context.Context, workerID, id string, st *batonv1.JobStatus) error {
	return s.updateJobStatus(ctx, id, workerID, st, workerReport(workerID, id, st))
}

// updateJobStatus writes the status next(old) returns for job id, or
// leaves the job as it is when next returns none. The identity fields
// always stay the stored ones.
//
// A worker's report (from worker, empty for the scheduler's own writes)
// names the job by the id its current attempt runs under there (see
// JobStatus.run_id), and an end it reports may be retried: the job is then
// QUEUED for its next attempt instead of ending (see retryOf). A report
// about an attempt retried since is ErrRetiredRun.
func (s *SQLite) updateJobStatus(ctx context.Context, id, worker string, st *batonv1.JobStatus, next nextFunc) error {
	fromWorker := worker != ""
	if st == nil {
		return fmt.Errorf("update job %s: nil status", id)
	}
	var ended *JobEnd
	lookup := `SELECT ` + jobColumns + ` FROM jobs WHERE job_id = ?`
	if fromWorker {
		lookup = `SELECT ` + jobColumns + ` FROM jobs WHERE (job_id = ?1 AND run_id IS NULL) OR run_id = ?1`
	}
	err := s.write(ctx, func(tx *writer) error {
		ended = nil
		row, err := tx.queryRow(lookup, id)
		if err != nil {
			return err
		}
		old, err := scanJob(row)
		if errors.Is(err, sql.ErrNoRows) && fromWorker {
			return retiredRun(tx, id, worker)
		}
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		upd, err := next(old)
		if upd == nil || err != nil {
			return err
		}
		c := decideStatus(old, upd, fromWorker, time.Now())
		switch {
		case c.None:
			return nil
		case c.Retry != nil:
			if err := writeRetry(tx, old, c.Retry); err != nil {
				return err
			}
			ended = c.Ended
			return nil
		}
		id := old.ID
		blob, err := proto.Marshal(upd)
		if err != nil {
			return err
		}
		// Only the columns that change are set: SQLite rewrites a row's
		// entry in every index on a column of the SET list, changed or not,
		// and each index page it touches is one more page to write.
		switch {
		case c.SameState && c.SameEnd && !c.ClearStop:
			_, err = tx.exec(`UPDATE jobs SET status = ?, rev = ? WHERE job_id = ?`, blob, tx.nextRev(), id)
		case c.SameEnd && !c.ClearStop:
			_, err = tx.exec(`UPDATE jobs SET state = ?, status = ?, rev = ? WHERE job_id = ?`, int32(upd.GetState()), blob, tx.nextRev(), id)
		default:
			_, err = tx.exec(`UPDATE jobs SET state = ?, ended_at = ?, status = ?,
	stop_requested_by = CASE WHEN ? THEN NULL ELSE stop_requested_by END, rev = ? WHERE job_id = ?`,
				int32(upd.GetState()), endedAt(upd), blob, c.ClearStop, tx.nextRev(), id)
		}
		if err != nil {
			return err
		}
		if c.LeavesQueue {
			if _, err := tx.exec(`DELETE FROM queue WHERE job_id = ?`, id); err != nil {
				return err
			}
		}
		if c.DropScript {
			if _, err := tx.exec(`DELETE FROM scripts WHERE job_id = ?`, id); err != nil {
				return err
			}
		}
		ended = c.Ended
		return nil
	})
	if err != nil {
		return lookupError(id, err)
	}
	if ended != nil {
		s.jobsEnded(*ended)
	}
	return nil
}

// DeleteJob implements [Store].
func (s *SQLite) DeleteJob(ctx context.Context, id string) error {
	err := s.write(ctx, func(tx *writer) error {
		res, err := tx.exec(`DELETE FROM jobs WHERE job_id = ?`, id)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		return addTombstone(tx, id, time.Now())
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return err
		}
		return fmt.Errorf("delete job %s: %w", id, err)
	}
	return nil
}

// ListJobs implements [Store].
func (s *SQLite) ListJobs(ctx context.Context, f JobFilter) ([]Job, string, error) {
	f, size, cur, fp, none, err := f.page()
	if err != nil || none {
		return nil, "", err
	}

	// The query text depends only on which filters are set, so the number
	// of distinct prepared statements is small.
	var (
		q     strings.Builder
		conds []string
		args  []any
	)
	q.WriteString(`SELECT ` + jobColumns + ` FROM jobs`)
	if f.WorkerID != "" {
		conds = append(conds, `worker_id = ?`)
		args = append(args, f.WorkerID)
	}
	if f.Owner != "" {
		conds = append(conds, `owner = ?`)
		args = append(args, f.Owner)
	}
	if f.GroupID != "" {
		conds = append(conds, `group_id = ?`)
		args = append(args, f.GroupID)
	}
	if len(f.States) > 0 {
		conds = append(conds, `state IN (?`+strings.Repeat(`, ?`, len(f.States)-1)+`)`)
		for _, st := range f.States {
			args = append(args, int32(st))
		}
	}
	if cur != nil {
		conds = append(conds, `(created_at, job_id) < (?, ?)`)
		args = append(args, cur.createdAt, cur.jobID)
	}
	if len(conds) > 0 {
		q.WriteString(` WHERE ` + strings.Join(conds, ` AND `))
	}
	// One row more than the page tells whether another page follows.
	q.WriteString(` ORDER BY created_at DESC, job_id DESC LIMIT ?`)
	args = append(args, size+1)

	jobs, err := s.queryJobs(ctx, q.String(), args...)
	if err != nil {
		return nil, "", fmt.Errorf("list jobs: %w", err)
	}
	if len(jobs) <= size {
		return jobs, "", nil
	}
	jobs = jobs[:size]
	last := jobs[size-1]
	return jobs, encodeCursor(cursor{createdAt: unixNano(last.CreatedAt), jobID: last.ID}, fp), nil
}

// JobsOnWorker implements [Store].
func (s *SQLite) JobsOnWorker(ctx context.Context, workerID string, nonTerminalOnly bool) ([]Job, error) {
	q := `SELECT ` + jobColumns + ` FROM jobs WHERE worker_id = ? ORDER BY created_at DESC, job_id DESC`
	args := []any{workerID}
	if nonTerminalOnly {
		// A job queued for the worker is not on it yet.
		q = `SELECT ` + jobColumns + ` FROM jobs WHERE worker_id = ? AND ended_at IS NULL AND state != ? ORDER BY created_at DESC, job_id DESC`
		args = append(args, int32(batonv1.JobState_JOB_STATE_QUEUED))
	}
	jobs, err := s.queryJobs(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("jobs on worker %s: %w", workerID, err)
	}
	return jobs, nil
}

// MarkWorkerJobsLost implements [Store].
func (s *SQLite) MarkWorkerJobsLost(ctx context.Context, workerID, reason string, at time.Time) (int, error) {
	if at.IsZero() {
		at = time.Now()
	}
	var ends []JobEnd
	err := s.write(ctx, func(tx *writer) error {
		ends = ends[:0]
		// A job queued for the worker waits for it to come back.
		rows, err := tx.query(`SELECT `+jobColumns+` FROM jobs WHERE worker_id = ? AND ended_at IS NULL AND state != ?`,
			workerID, int32(batonv1.JobState_JOB_STATE_QUEUED))
		if err != nil {
			return err
		}
		jobs, err := collectJobs(rows)
		if err != nil {
			return err
		}
		for _, j := range jobs {
			st, retried := lostStatus(j, reason, at)
			if retried {
				if err := writeRetry(tx, j, st); err != nil {
					return err
				}
				ends = append(ends, JobEnd{ID: j.ID, GroupID: j.GroupID, State: batonv1.JobState_JOB_STATE_LOST, Retried: true})
				continue
			}
			blob, err := proto.Marshal(st)
			if err != nil {
				return err
			}
			if _, err := tx.exec(`UPDATE jobs SET state = ?, ended_at = ?, status = ?, rev = ? WHERE job_id = ?`,
				int32(st.State), endedAt(st), blob, tx.nextRev(), j.ID); err != nil {
				return err
			}
			if _, err := tx.exec(`DELETE FROM queue WHERE job_id = ?`, j.ID); err != nil {
				return err
			}
			if _, err := tx.exec(`DELETE FROM scripts WHERE job_id = ?`, j.ID); err != nil {
				return err
			}
			ends = append(ends, JobEnd{ID: j.ID, GroupID: j.GroupID, State: st.State})
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("mark jobs of worker %s lost: %w", workerID, err)
	}
	s.jobsEnded(ends...)
	return len(ends), nil
}

func (s *SQLite) queryJobs(ctx context.Context, query string, args ...any) ([]Job, error) {
	rows, err := s.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return collectJobs(rows)
}

// collectJobs reads and closes rows of jobColumns.
func collectJobs(rows *sql.Rows) ([]Job, error) {
	defer rows.Close()
	var jobs []Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, j)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return jobs, nil
}

// scanJob scans one row of jobColumns followed by the extra columns.
func scanJob(r scanner, extra ...any) (Job, error) {
	var (
		j                Job
		group, key, stop sql.NullString
		created          int64
		blob             []byte
	)
	dest := append([]any{&j.ID, &j.WorkerID, &j.Owner, &group, &key, &created, &blob, &stop}, extra...)
	if err := r.Scan(dest...); err != nil {
		return Job{}, err
	}
	j.GroupID, j.IdempotencyKey, j.StopRequestedBy = group.String, key.String, stop.String
	j.CreatedAt = fromUnixNano(created)
	j.Status = &batonv1.JobStatus{}
	if err := proto.Unmarshal(blob, j.Status); err != nil {
		return Job{}, fmt.Errorf("job %s: decode status: %w", j.ID, err)
	}
	return j, nil
}

// Groups.

// CreateGroup implements [Store].
func (s *SQLite) CreateGroup(ctx context.Context, g Group) error {
	if g.ID == "" {
		return errors.New("create group: empty group id")
	}
	if g.CreatedAt.IsZero() {
		g.CreatedAt = time.Now()
	}
	err := s.write(ctx, func(tx *writer) error {
		_, err := tx.exec(`INSERT INTO groups (group_id, owner, created_at, idempotency_key) VALUES (?, ?, ?, ?)`,
			g.ID, g.Owner, unixNano(g.CreatedAt), nullString(g.IdempotencyKey))
		return err
	})
	switch {
	case err == nil:
		return nil
	case sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return fmt.Errorf("group %s: %w", g.ID, ErrConflict)
	case sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT_UNIQUE:
		return fmt.Errorf("group with idempotency key %q of owner %q: %w", g.IdempotencyKey, g.Owner, ErrConflict)
	default:
		return fmt.Errorf("create group %s: %w", g.ID, err)
	}
}

// GetGroup implements [Store].
func (s *SQLite) GetGroup(ctx context.Context, id string) (Group, error) {
	row, err := s.queryRow(ctx, `SELECT owner, created_at, idempotency_key FROM groups WHERE group_id = ?`, id)
	if err != nil {
		return Group{}, fmt.Errorf("get group %s: %w", id, err)
	}
	g := Group{ID: id}
	var created int64
	var key sql.NullString
	err = row.Scan(&g.Owner, &created, &key)
	g.IdempotencyKey = key.String
	if errors.Is(err, sql.ErrNoRows) {
		return Group{}, fmt.Errorf("group %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Group{}, fmt.Errorf("get group %s: %w", id, err)
	}
	g.CreatedAt = fromUnixNano(created)

	rows, err := s.query(ctx, `SELECT job_id FROM jobs WHERE group_id = ? ORDER BY created_at, job_id`, id)
	if err != nil {
		return Group{}, fmt.Errorf("get group %s: %w", id, err)
	}
	defer rows.Close()
	for rows.Next() {
		var jid string
		if err := rows.Scan(&jid); err != nil {
			return Group{}, fmt.Errorf("get group %s: %w", id, err)
		}
		g.JobIDs = append(g.JobIDs, jid)
	}
	if err := rows.Err(); err != nil {
		return Group{}, fmt.Errorf("get group %s: %w", id, err)
	}
	return g, nil
}

// GetGroupByIdempotencyKey implements [Store].
func (s *SQLite) GetGroupByIdempotencyKey(ctx context.Context, owner, key string) (Group, error) {
	if key == "" {
		return Group{}, fmt.Errorf("group with an empty idempotency key: %w", ErrNotFound)
	}
	row, err := s.queryRow(ctx, `SELECT group_id FROM groups WHERE owner = ? AND idempotency_key = ?`, owner, key)
	if err != nil {
		return Group{}, fmt.Errorf("get group by idempotency key: %w", err)
	}
	var id string
	if err := row.Scan(&id); errors.Is(err, sql.ErrNoRows) {
		return Group{}, fmt.Errorf("group with idempotency key %q of owner %q: %w", key, owner, ErrNotFound)
	} else if err != nil {
		return Group{}, fmt.Errorf("get group by idempotency key: %w", err)
	}
	return s.GetGroup(ctx, id)
}

// Stops waiting for delivery.

// RequestStop implements [Store].
func (s *SQLite) RequestStop(ctx context.Context, id, by string) error {
	var found bool
	err := s.write(ctx, func(tx *writer) error {
		res, err := tx.exec(`UPDATE jobs SET stop_requested_by = ?, rev = ? WHERE job_id = ? AND (ended_at IS NULL OR state = ?)`,
			by, tx.nextRev(), id, int32(batonv1.JobState_JOB_STATE_LOST))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil || n > 0 {
			found = n > 0
			return err
		}
		row, err := tx.queryRow(`SELECT 1 FROM jobs WHERE job_id = ?`, id)
		if err != nil {
			return err
		}
		var one int
		if err := row.Scan(&one); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		found = one == 1
		return nil
	})
	if err != nil {
		return fmt.Errorf("request stop of job %s: %w", id, err)
	}
	if !found {
		return fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	return nil
}

// ClearStop implements [Store].
func (s *SQLite) ClearStop(ctx context.Context, id string) error {
	err := s.write(ctx, func(tx *writer) error {
		// A job with no stop waiting is not written: the feed would report
		// a change that changed nothing.
		_, err := tx.exec(`UPDATE jobs SET stop_requested_by = NULL, rev = ? WHERE job_id = ? AND stop_requested_by IS NOT NULL`, tx.nextRev(), id)
		return err
	})
	if err != nil {
		return fmt.Errorf("clear stop of job %s: %w", id, err)
	}
	return nil
}

// PendingStops implements [Store].
func (s *SQLite) PendingStops(ctx context.Context, workerID string) ([]Job, error) {
	rows, err := s.query(ctx, `SELECT `+jobColumns+` FROM jobs WHERE worker_id = ? AND stop_requested_by IS NOT NULL ORDER BY created_at, job_id`, workerID)
	if err != nil {
		return nil, fmt.Errorf("pending stops of worker %s: %w", workerID, err)
	}
	return collectJobs(rows)
}

// Retention.

// PruneJobs implements [Store].
func (s *SQLite) PruneJobs(ctx context.Context, endedBefore time.Time) (int, error) {
	before := unixNano(endedBefore)
	total := 0
	for {
		var n int64
		err := s.write(ctx, func(tx *writer) error {
			rows, err := tx.query(`DELETE FROM jobs WHERE job_id IN (
	SELECT job_id FROM jobs WHERE ended_at < ? LIMIT ?) RETURNING job_id`, before, pruneBatch)
			if err != nil {
				return err
			}
			var pruned []string
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					rows.Close()
					return err
				}
				pruned = append(pruned, id)
			}
			if err := errors.Join(rows.Err(), rows.Close()); err != nil {
				return err
			}
			now := time.Now()
			for _, id := range pruned {
				if err := addTombstone(tx, id, now); err != nil {
					return err
				}
			}
			n = int64(len(pruned))
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("prune jobs: %w", err)
		}
		total += int(n)
		if n < pruneBatch {
			break
		}
	}
	// Only groups created before the cut-off: a group created just now may
	// not have its jobs yet.
	err := s.write(ctx, func(tx *writer) error {
		_, err := tx.exec(`DELETE FROM groups WHERE created_at < ?
	AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.group_id = groups.group_id)`, before)
		if err != nil {
			return err
		}
		return trimTombstones(tx, before)
	})
	if err != nil {
		return total, fmt.Errorf("prune groups: %w", err)
	}
	return total, nil
}

// Values.

// unixNano returns t as stored: unix nanoseconds, 0 for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromUnixNano is the inverse of unixNano, in UTC.
func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// endedAt returns the ended_at column for st: NULL unless st is terminal.
func endedAt(st *batonv1.JobStatus) any {
	if !isTerminal(st.GetState()) {
		return nil
	}
	return unixNano(st.GetEndedAt().AsTime())
}

// nullString maps "" to NULL, for optional columns under a unique index.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// GroupProgress implements [Store].
func (s *SQLite) GroupProgress(ctx context.Context, id string) (GroupProgress, error) {
	row, err := s.queryRow(ctx, `SELECT
	(SELECT count(*) FROM groups WHERE group_id = ?1),
	count(*) FILTER (WHERE ended_at IS NULL),
	count(*) FILTER (WHERE ended_at IS NOT NULL AND state = ?2),
	count(*) FILTER (WHERE ended_at IS NOT NULL AND state != ?2)
FROM jobs WHERE group_id = ?1`, id, int32(batonv1.JobState_JOB_STATE_SUCCEEDED))
	if err != nil {
		return GroupProgress{}, fmt.Errorf("group %s progress: %w", id, err)
	}
	var exists int
	var p GroupProgress
	if err := row.Scan(&exists, &p.Open, &p.Succeeded, &p.Unsucceeded); err != nil {
		return GroupProgress{}, fmt.Errorf("group %s progress: %w", id, err)
	}
	if exists == 0 {
		return GroupProgress{}, fmt.Errorf("group %s: %w", id, ErrNotFound)
	}
	return p, nil
}
