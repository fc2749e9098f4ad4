package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	sqlite3 "modernc.org/sqlite/lib"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// A store moves from SQLite to etcd as a stream of records: ExportSQLite
// reads them from a SQLite file, and Etcd.Import writes them. Both see
// more than the Store interface shows (the attempts retried, a queue place
// of a job being started, the script kept, a schedule's counters and
// fires), so that the etcd store reads back as the SQLite one did.

// ErrInUse reports a SQLite file that another connection has open: a
// scheduler still running on it.
var ErrInUse = errors.New("the database is in use")

// Record is one item of a store as [ExportSQLite] yields it and
// [Etcd.Import] takes it. Exactly one field is set.
type Record struct {
	Worker   *Worker
	Group    *Group
	Job      *JobRecord
	Schedule *ScheduleRecord
}

// JobRecord is a job with what only the store keeps of it.
type JobRecord struct {
	// Job is the job; its Queue is set while it has a place in the queue
	// (QUEUED, or PENDING until its start is settled), and its Script
	// while the store keeps one (until the job ends).
	Job
	// RunID is the id the job's current attempt runs under on its worker;
	// empty: the job id.
	RunID string
	// Retired are the attempts retried since, which their workers are
	// told to stop if they report them.
	Retired []RetiredRun
}

// RetiredRun is an attempt of a job that was retried, and its worker.
type RetiredRun struct {
	RunID    string
	WorkerID string
}

// ScheduleRecord is a schedule, its counters and cursor included, with
// the fires it keeps, newest first.
type ScheduleRecord struct {
	Schedule
	Fires []Fire
}

// RecordCounts counts records by kind.
type RecordCounts struct {
	Workers, Groups, Jobs, Schedules, Fires int
}

// add counts r.
func (c *RecordCounts) add(r Record) {
	switch {
	case r.Worker != nil:
		c.Workers++
	case r.Group != nil:
		c.Groups++
	case r.Job != nil:
		c.Jobs++
	case r.Schedule != nil:
		c.Schedules++
		c.Fires += len(r.Schedule.Fires)
	}
}

// Empty reports whether c counts nothing.
func (c RecordCounts) Empty() bool { return c == RecordCounts{} }

// ExportSQLite calls fn with every record of the SQLite store at path, in
// an order Import accepts: workers, groups, jobs oldest first, schedules.
// It returns what it yielded, counted.
//
// It does not open the file as a store: it takes no term, so it fences
// nobody, and it writes nothing. It holds the file locked while it reads,
// so that no scheduler opens it meanwhile, and fails with ErrInUse when
// another connection (a running scheduler) has it open. A file last
// written by an older scheduler must be opened once by this version's
// scheduler first, which brings its schema up to date.
func ExportSQLite(ctx context.Context, path string, fn func(Record) error) (RecordCounts, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return RecordCounts{}, fmt.Errorf("export store: %w", err)
	}
	if _, err := os.Stat(abs); err != nil {
		return RecordCounts{}, fmt.Errorf("export store: %w", err)
	}
	q := url.Values{}
	// An exclusive lock cannot be had while any other connection has the
	// file open: in WAL mode each keeps a shared lock on it until it
	// closes (https://sqlite.org/wal.html#noshm). Held from the first
	// read, it keeps a scheduler from opening the file meanwhile.
	q.Add("_pragma", "locking_mode(EXCLUSIVE)")
	q.Add("_pragma", "busy_timeout(1000)")
	q.Set("_txlock", "exclusive")
	// rw: never create the file.
	q.Set("mode", "rw")
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), OmitHost: true, RawQuery: q.Encode()}
	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return RecordCounts{}, fmt.Errorf("export store: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		if inUse(err) {
			return RecordCounts{}, fmt.Errorf("export store: %w: stop the scheduler that has it open first", ErrInUse)
		}
		return RecordCounts{}, fmt.Errorf("export store: %w", err)
	}
	// Nothing is written; in EXCLUSIVE mode the lock lasts until the
	// connection closes.
	defer tx.Rollback()
	x := exporter{tx: tx, ctx: ctx, fn: fn}
	if err := x.run(); err != nil {
		if x.fnErr != nil {
			return x.counts, x.fnErr
		}
		if inUse(err) {
			err = fmt.Errorf("%w: stop the scheduler that has it open first", ErrInUse)
		}
		return x.counts, fmt.Errorf("export store: %w", err)
	}
	return x.counts, nil
}

// inUse reports whether err is SQLite's for a lock another connection
// holds.
func inUse(err error) bool {
	code := sqliteCode(err) & 0xff
	return code == sqlite3.SQLITE_BUSY || code == sqlite3.SQLITE_LOCKED
}

// exporter reads one SQLite file in one transaction.
type exporter struct {
	tx     *sql.Tx
	ctx    context.Context
	fn     func(Record) error
	counts RecordCounts
	// fnErr is fn's error, returned as it is.
	fnErr error
}

func (x *exporter) yield(r Record) error {
	if err := x.fn(r); err != nil {
		x.fnErr = err
		return err
	}
	x.counts.add(r)
	return nil
}

func (x *exporter) run() error {
	var version int
	if err := x.tx.QueryRowContext(x.ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&version); err != nil {
		return fmt.Errorf("read schema version (is this a Baton scheduler's database?): %w", err)
	}
	switch {
	case version > len(migrations):
		return fmt.Errorf("%w: the file is at schema version %d and this baton knows versions up to %d; use the newer baton", ErrSchemaTooNew, version, len(migrations))
	case version < len(migrations):
		return fmt.Errorf("the file is at schema version %d, older than this baton's %d: start this version's scheduler on it once, stop it, and export again", version, len(migrations))
	}
	for _, step := range []func() error{x.workers, x.groups, x.jobs, x.schedules} {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

func (x *exporter) workers() error {
	rows, err := x.tx.QueryContext(x.ctx, `SELECT `+workerColumns+` FROM workers ORDER BY name, worker_id`)
	if err != nil {
		return fmt.Errorf("read workers: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		w, err := scanWorker(rows)
		if err != nil {
			return fmt.Errorf("read workers: %w", err)
		}
		if err := x.yield(Record{Worker: &w}); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (x *exporter) groups() error {
	rows, err := x.tx.QueryContext(x.ctx, `SELECT group_id, owner, created_at, idempotency_key FROM groups ORDER BY created_at, group_id`)
	if err != nil {
		return fmt.Errorf("read groups: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			g       Group
			created int64
			key     sql.NullString
		)
		if err := rows.Scan(&g.ID, &g.Owner, &created, &key); err != nil {
			return fmt.Errorf("read groups: %w", err)
		}
		g.CreatedAt, g.IdempotencyKey = fromUnixNano(created), key.String
		if err := x.yield(Record{Group: &g}); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (x *exporter) jobs() error {
	retired := make(map[string][]RetiredRun)
	rows, err := x.tx.QueryContext(x.ctx, `SELECT run_id, job_id, worker_id FROM retired_runs ORDER BY job_id, rowid`)
	if err != nil {
		return fmt.Errorf("read retired attempts: %w", err)
	}
	for rows.Next() {
		var r RetiredRun
		var job string
		if err := rows.Scan(&r.RunID, &job, &r.WorkerID); err != nil {
			rows.Close()
			return fmt.Errorf("read retired attempts: %w", err)
		}
		retired[job] = append(retired[job], r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read retired attempts: %w", err)
	}

	rows, err = x.tx.QueryContext(x.ctx, `SELECT `+prefixed("jobs.", jobColumns)+`, jobs.run_id,
	queue.worker_id, queue.priority, queue.round, queue.seq, queue.deadline, scripts.content
FROM jobs LEFT JOIN queue USING (job_id) LEFT JOIN scripts USING (job_id)
ORDER BY jobs.created_at, jobs.job_id`)
	if err != nil {
		return fmt.Errorf("read jobs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			run, qWorker               sql.NullString
			priority, round, seq, dead sql.NullInt64
			script                     []byte
		)
		j, err := scanJob(rows, &run, &qWorker, &priority, &round, &seq, &dead, &script)
		if err != nil {
			return fmt.Errorf("read jobs: %w", err)
		}
		if qWorker.Valid {
			j.Queue = &QueuePlace{WorkerID: qWorker.String, Priority: int32(priority.Int64), Round: round.Int64, Seq: seq.Int64, Deadline: fromUnixNano(dead.Int64)}
		}
		if len(script) > 0 {
			j.Script = script
		}
		rec := &JobRecord{Job: j, RunID: run.String, Retired: retired[j.ID]}
		if err := x.yield(Record{Job: rec}); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (x *exporter) schedules() error {
	rows, err := x.tx.QueryContext(x.ctx, `SELECT `+scheduleColumns+` FROM schedules ORDER BY owner, name`)
	if err != nil {
		return fmt.Errorf("read schedules: %w", err)
	}
	var all []Schedule
	for rows.Next() {
		sc, err := scanSchedule(rows)
		if err != nil {
			rows.Close()
			return fmt.Errorf("read schedules: %w", err)
		}
		all = append(all, sc)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read schedules: %w", err)
	}
	for _, sc := range all {
		fires, err := x.fires(sc.ID)
		if err != nil {
			return err
		}
		if err := x.yield(Record{Schedule: &ScheduleRecord{Schedule: sc, Fires: fires}}); err != nil {
			return err
		}
	}
	return nil
}

// fires reads the fires of schedule id, newest first, in the order
// ScheduleFires returns them.
func (x *exporter) fires(id string) ([]Fire, error) {
	rows, err := x.tx.QueryContext(x.ctx, `SELECT fire_time, manual, outcome, job_id, group_id, reason FROM schedule_fires
WHERE schedule_id = ? ORDER BY fire_time DESC, manual`, id)
	if err != nil {
		return nil, fmt.Errorf("read fires of schedule %s: %w", id, err)
	}
	defer rows.Close()
	var out []Fire
	for rows.Next() {
		var (
			f               Fire
			at, manual, res int64
		)
		if err := rows.Scan(&at, &manual, &res, &f.JobID, &f.GroupID, &f.Reason); err != nil {
			return nil, fmt.Errorf("read fires of schedule %s: %w", id, err)
		}
		f.Time, f.Manual, f.Outcome = fromUnixNano(at), manual != 0, batonv1.FireOutcome(res)
		out = append(out, f)
	}
	return out, rows.Err()
}
