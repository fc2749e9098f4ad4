package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// migrations are the schema changes, oldest first; the schema version of a
// database is the number of them applied. Each runs in its own transaction
// together with its row in schema_migrations. Append only: a released
// migration is never edited, removed or reordered.
//
// Times are unix nanoseconds (UTC); 0 stands for an unknown time. Tables are
// STRICT so a wrongly typed value fails instead of being stored as text.
var migrations = []string{
	// 1: workers, groups and jobs.
	`
CREATE TABLE workers (
	worker_id      TEXT    NOT NULL PRIMARY KEY,
	name           TEXT    NOT NULL,
	address        TEXT    NOT NULL,
	state          INTEGER NOT NULL,
	labels         TEXT    NOT NULL, -- JSON object
	capacity       INTEGER NOT NULL,
	running_jobs   INTEGER NOT NULL,
	last_heartbeat INTEGER NOT NULL,
	registered_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX workers_by_name ON workers (name, worker_id);

CREATE TABLE groups (
	group_id   TEXT    NOT NULL PRIMARY KEY,
	owner      TEXT    NOT NULL,
	created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX groups_by_created ON groups (created_at);

-- status is the JobStatus in protobuf binary; the other columns copy parts of
-- it for filtering. Jobs do not reference workers: they are history and may
-- name workers the roster no longer holds.
CREATE TABLE jobs (
	job_id          TEXT    NOT NULL PRIMARY KEY,
	worker_id       TEXT    NOT NULL,
	owner           TEXT    NOT NULL,
	group_id        TEXT    REFERENCES groups (group_id), -- NULL: no group
	idempotency_key TEXT,                                 -- NULL: no key
	state           INTEGER NOT NULL,
	created_at      INTEGER NOT NULL,
	ended_at        INTEGER,                              -- NULL until terminal
	status          BLOB    NOT NULL
) STRICT;
CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (owner, idempotency_key)
	WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_by_created ON jobs (created_at, job_id);
CREATE INDEX jobs_by_worker ON jobs (worker_id, created_at, job_id);
CREATE INDEX jobs_by_owner ON jobs (owner, created_at, job_id);
CREATE INDEX jobs_by_group ON jobs (group_id, created_at, job_id) WHERE group_id IS NOT NULL;
CREATE INDEX jobs_by_state ON jobs (state, created_at, job_id);
CREATE INDEX jobs_active ON jobs (worker_id, created_at, job_id) WHERE ended_at IS NULL;
CREATE INDEX jobs_by_ended ON jobs (ended_at) WHERE ended_at IS NOT NULL;
`,
	// 2: a fan-out's idempotency key belongs to its group; a stop a caller
	// asked for is kept until the job's worker carries it out.
	`
ALTER TABLE groups ADD COLUMN idempotency_key TEXT; -- NULL: no key
CREATE UNIQUE INDEX groups_by_idempotency_key ON groups (owner, idempotency_key)
	WHERE idempotency_key IS NOT NULL;
ALTER TABLE jobs ADD COLUMN stop_requested_by TEXT; -- NULL: no stop waiting
CREATE INDEX jobs_stop_pending ON jobs (worker_id) WHERE stop_requested_by IS NOT NULL;
`,
	// 3: the queue. A job has a row from when it is queued until its start
	// is settled: while it is QUEUED, and while it is PENDING on the worker
	// it was handed to, so that a start the worker never received puts it
	// back rather than losing it.
	`
CREATE TABLE queue (
	job_id    TEXT    NOT NULL PRIMARY KEY REFERENCES jobs (job_id) ON DELETE CASCADE,
	worker_id TEXT    NOT NULL, -- the worker asked for; '' for any matching one
	priority  INTEGER NOT NULL,
	round     INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	deadline  INTEGER NOT NULL  -- 0: no limit
) STRICT, WITHOUT ROWID;
`,
	// 4: a retried job's attempts after the first run under ids of their
	// own on their workers; a worker's report names the attempt's.
	`
ALTER TABLE jobs ADD COLUMN run_id TEXT; -- NULL: the job id
CREATE UNIQUE INDEX jobs_by_run_id ON jobs (run_id) WHERE run_id IS NOT NULL;
`,
	// 5: the scripts sent with queued jobs, kept with the job, so that
	// each attempt of a retried one is sent it (a rowid table: a script
	// may be 1 MiB).
	`
CREATE TABLE scripts (
	job_id  TEXT NOT NULL PRIMARY KEY REFERENCES jobs (job_id) ON DELETE CASCADE,
	content BLOB NOT NULL
) STRICT;
`,
	// 6: schedules and their fires. A schedule's id changes when it is
	// deleted and made again under its name, so that the new one's fires
	// never meet the old one's idempotency keys. cursor is the latest
	// fire time dealt with (fired, skipped or missed): the next is
	// computed from it. A fire's row is unique per schedule and time.
	`
CREATE TABLE schedules (
	owner         TEXT    NOT NULL,
	name          TEXT    NOT NULL,
	schedule_id   TEXT    NOT NULL UNIQUE,
	definition    BLOB    NOT NULL, -- baton.v1.Schedule, the caller's fields only
	paused        INTEGER NOT NULL,
	created_at    INTEGER NOT NULL,
	updated_at    INTEGER NOT NULL,
	cursor        INTEGER NOT NULL,
	last_fire     INTEGER NOT NULL, -- 0: none yet
	last_job_id   TEXT    NOT NULL, -- the latest started fire's job or group
	last_group_id TEXT    NOT NULL,
	fires         INTEGER NOT NULL,
	misses        INTEGER NOT NULL,
	skips         INTEGER NOT NULL,
	PRIMARY KEY (owner, name)
) STRICT;

CREATE TABLE schedule_fires (
	schedule_id TEXT    NOT NULL REFERENCES schedules (schedule_id) ON DELETE CASCADE,
	fire_time   INTEGER NOT NULL,
	manual      INTEGER NOT NULL,
	outcome     INTEGER NOT NULL,
	job_id      TEXT    NOT NULL,
	group_id    TEXT    NOT NULL,
	reason      TEXT    NOT NULL,
	PRIMARY KEY (schedule_id, fire_time, manual)
) STRICT, WITHOUT ROWID;
`,
	// 7: the run ids of attempts that were retried, and their workers: a
	// worker that reports one still running (it was cut off, not dead,
	// when its attempt was LOST) is told to stop it.
	`
CREATE TABLE retired_runs (
	run_id    TEXT NOT NULL PRIMARY KEY,
	job_id    TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
	worker_id TEXT NOT NULL
) STRICT;
CREATE INDEX retired_runs_by_job ON retired_runs (job_id);
`,
	// 8: the writers' term, bumped by every Open: a store opened on the
	// file since has a newer one, and the older store's writes are fenced.
	`
CREATE TABLE term (
	id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
	term INTEGER NOT NULL
) STRICT;
INSERT INTO term (id, term) VALUES (1, 0);
`,
	// 9: the change feed of jobs. rev is the position of a job's latest
	// write, from one counter for the whole store (the writer's, see
	// writer.nextRev); the jobs there already are numbered in the order
	// they were inserted. A deleted job leaves a tombstone with the rev
	// of its delete, kept until PruneJobs trims it; compacted is the
	// highest rev trimmed, below which a reader may have missed a delete.
	`
ALTER TABLE jobs ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET rev = rowid;
CREATE INDEX jobs_by_rev ON jobs (rev);
CREATE TABLE job_tombstones (
	rev        INTEGER NOT NULL PRIMARY KEY,
	job_id     TEXT    NOT NULL,
	deleted_at INTEGER NOT NULL
) STRICT;
CREATE TABLE feed (
	id        INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
	compacted INTEGER NOT NULL
) STRICT;
INSERT INTO feed (id, compacted) VALUES (1, 0);
`,
}

// migrate brings the schema of db up to len(migrations). It fails with
// ErrSchemaTooNew, changing nothing, when db is already past that.
func migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER NOT NULL PRIMARY KEY,
	applied_at INTEGER NOT NULL
) STRICT`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	for {
		done, err := migrateOne(ctx, db)
		if err != nil || done {
			return err
		}
	}
}

// migrateOne applies the next migration, if any, and reports whether the
// schema is now current. The version is read inside the write transaction so
// that two processes opening the same file never apply a migration twice.
func migrateOne(ctx context.Context, db *sql.DB) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("begin migration: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	var version int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&version); err != nil {
		return false, fmt.Errorf("read schema version: %w", err)
	}
	switch {
	case version > len(migrations):
		return false, fmt.Errorf("%w: the file is at schema version %d and this scheduler knows versions up to %d; run the newer scheduler or restore a backup", ErrSchemaTooNew, version, len(migrations))
	case version == len(migrations):
		return true, tx.Commit()
	}
	next := version + 1
	if _, err := tx.ExecContext(ctx, migrations[version]); err != nil {
		return false, fmt.Errorf("apply schema migration %d: %w", next, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, next, time.Now().UnixNano()); err != nil {
		return false, fmt.Errorf("record schema migration %d: %w", next, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("commit schema migration %d: %w", next, err)
	}
	return next == len(migrations), nil
}
