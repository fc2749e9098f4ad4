package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	sqlite3 "modernc.org/sqlite/lib"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// A schedule's fires and their jobs are written together: RecordFire
// records the fire, moves the schedule's cursor past it and creates the
// fire's jobs in one transaction, so that a crash leaves either all of it
// or none, and a fire time at or before the cursor is refused. Which
// times are due, and what a fire starts, is the scheduler's business.

// ErrLimit reports that an owner has as many schedules as the scheduler
// allows.
var ErrLimit = errors.New("limit reached")

// Schedules is the part of [Store] that keeps schedules. Its methods are
// safe for concurrent use.
type Schedules interface {
	// CreateSchedule stores a new schedule. It returns ErrConflict when
	// the owner has a schedule of that name (or its id is taken), and
	// ErrLimit when limit is positive and the owner has that many.
	CreateSchedule(ctx context.Context, sc Schedule, limit int) error
	// UpdateSchedule replaces the definition of the owner's schedule of
	// that name and moves its cursor to now, if it was before: the new
	// definition is due from now on. ErrNotFound when there is none.
	UpdateSchedule(ctx context.Context, owner, name string, def *batonv1.Schedule, now time.Time) (Schedule, error)
	// GetSchedule returns the owner's schedule of that name, or ErrNotFound.
	GetSchedule(ctx context.Context, owner, name string) (Schedule, error)
	// ListSchedules returns one page of schedules by owner and name, and
	// the token of the next page (empty after the last).
	ListSchedules(ctx context.Context, f ScheduleFilter) ([]Schedule, string, error)
	// AllSchedules returns every schedule, for the scheduler's start.
	AllSchedules(ctx context.Context) ([]Schedule, error)
	// DeleteSchedule removes a schedule and its fires, and returns what
	// it was; its jobs stay. ErrNotFound when there is none.
	DeleteSchedule(ctx context.Context, owner, name string) (Schedule, error)
	// PauseSchedule pauses or resumes a schedule. Resuming moves the
	// cursor to now: times that passed while it was paused are neither
	// fired nor counted as missed. ErrNotFound when there is none.
	PauseSchedule(ctx context.Context, owner, name string, paused bool, now time.Time) (Schedule, error)
	// RecordFire records one fire of schedule r.ScheduleID with its jobs
	// (see FireRecord) and returns the schedule as it now is. It returns
	// ErrNotFound when the schedule is gone, and ErrConflict when the
	// fire is not due any more: a scheduled fire at or before the
	// schedule's cursor, or of a paused schedule, or a fire or job key
	// already recorded. Nothing is written then.
	RecordFire(ctx context.Context, r FireRecord) (Schedule, error)
	// ScheduleFires returns the schedule's latest fires, newest first.
	ScheduleFires(ctx context.Context, scheduleID string, limit int) ([]Fire, error)
}

// Schedule is a stored schedule.
type Schedule struct {
	// ID is the schedule's own id, new when a schedule is made again
	// under a name that was deleted.
	ID    string
	Owner string
	Name  string
	// Definition holds the fields a caller sets (cron, time zone,
	// overlap, catch-up, history limit, job); the others are below.
	Definition *batonv1.Schedule
	Paused     bool
	CreatedAt  time.Time
	UpdatedAt  time.Time
	// Cursor is the latest fire time dealt with (or the time the schedule
	// was made, updated or resumed): the next fire time comes after it.
	Cursor time.Time
	// LastFire is the latest fire time recorded, manual ones included.
	LastFire time.Time
	// LastJobID and LastGroupID are the job (or fan-out group) of the
	// latest fire that started one.
	LastJobID   string
	LastGroupID string
	Fires       int64
	Misses      int64
	Skips       int64
}

// Fire is one fire of a schedule and what became of it.
type Fire struct {
	Time    time.Time
	Manual  bool
	Outcome batonv1.FireOutcome
	JobID   string
	GroupID string
	Reason  string
}

// FireRecord is what [Schedules.RecordFire] writes.
type FireRecord struct {
	ScheduleID string
	// Fire is the fire itself. A scheduled one (not Manual) must come
	// after the schedule's cursor, which moves to it.
	Fire Fire
	// Missed are the fire times before Fire.Time that were missed, oldest
	// first, of which the latest MaxMissRecords are recorded; MissedCount
	// is how many there were in all (at least len(Missed)). With a zero
	// Fire.Outcome only the misses are recorded, and the cursor moves to
	// Fire.Time.
	Missed      []time.Time
	MissedCount int64
	// Group, when set, is created with the fire: a fan-out's jobs are in it.
	Group *Group
	// Jobs are created with the fire, each QUEUED with its place.
	Jobs []Job
	// HistoryLimit is how many fires the schedule keeps; older ones go.
	HistoryLimit int
}

// MaxMissRecords bounds the missed fires one RecordFire writes: a
// schedule that missed thousands of times counts them all, and keeps a
// record of the latest few.
const MaxMissRecords = 100

// ScheduleFilter selects schedules for [Schedules.ListSchedules].
type ScheduleFilter struct {
	// Owner keeps only that owner's schedules; empty keeps all.
	Owner     string
	PageSize  int
	PageToken string
}

const scheduleColumns = `schedule_id, owner, name, definition, paused, created_at, updated_at, cursor, last_fire, last_job_id, last_group_id, fires, misses, skips`

func scanSchedule(r scanner) (Schedule, error) {
	var (
		sc                             Schedule
		def                            []byte
		paused                         int64
		created, updated, cursor, last int64
	)
	if err := r.Scan(&sc.ID, &sc.Owner, &sc.Name, &def, &paused, &created, &updated, &cursor, &last,
		&sc.LastJobID, &sc.LastGroupID, &sc.Fires, &sc.Misses, &sc.Skips); err != nil {
		return Schedule{}, err
	}
	sc.Definition = &batonv1.Schedule{}
	if err := proto.Unmarshal(def, sc.Definition); err != nil {
		return Schedule{}, fmt.Errorf("schedule %s: decode definition: %w", sc.ID, err)
	}
	sc.Paused = paused != 0
	sc.CreatedAt, sc.UpdatedAt = fromUnixNano(created), fromUnixNano(updated)
	sc.Cursor, sc.LastFire = fromUnixNano(cursor), fromUnixNano(last)
	return sc, nil
}

// CreateSchedule implements [Schedules].
func (s *SQLite) CreateSchedule(ctx context.Context, sc Schedule, limit int) error {
	if sc.ID == "" || sc.Owner == "" || sc.Name == "" {
		return errors.New("create schedule: empty id, owner or name")
	}
	def, err := proto.Marshal(sc.Definition)
	if err != nil {
		return fmt.Errorf("create schedule %s: %w", sc.Name, err)
	}
	err = s.write(ctx, func(tx *writer) error {
		if limit > 0 {
			row, err := tx.queryRow(`SELECT COUNT(*) FROM schedules WHERE owner = ?`, sc.Owner)
			if err != nil {
				return err
			}
			var n int
			if err := row.Scan(&n); err != nil {
				return err
			}
			if n >= limit {
				return fmt.Errorf("%s has %d schedules: %w", sc.Owner, n, ErrLimit)
			}
		}
		_, err := tx.exec(`INSERT INTO schedules (`+scheduleColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', '', 0, 0, 0)`,
			sc.ID, sc.Owner, sc.Name, def, boolInt(sc.Paused), unixNano(sc.CreatedAt), unixNano(sc.UpdatedAt), unixNano(sc.Cursor), 0)
		return err
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrLimit):
		return err
	case sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT_UNIQUE:
		return fmt.Errorf("schedule %q of %s: %w", sc.Name, sc.Owner, ErrConflict)
	default:
		return fmt.Errorf("create schedule %s: %w", sc.Name, err)
	}
}

// changeSchedule reads the owner's schedule of that name in a write
// transaction, lets change modify it, and writes it back.
func (s *SQLite) changeSchedule(ctx context.Context, owner, name string, change func(sc *Schedule)) (Schedule, error) {
	var out Schedule
	err := s.write(ctx, func(tx *writer) error {
		row, err := tx.queryRow(`SELECT `+scheduleColumns+` FROM schedules WHERE owner = ? AND name = ?`, owner, name)
		if err != nil {
			return err
		}
		sc, err := scanSchedule(row)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("schedule %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return err
		}
		change(&sc)
		def, err := proto.Marshal(sc.Definition)
		if err != nil {
			return err
		}
		_, err = tx.exec(`UPDATE schedules SET definition = ?, paused = ?, updated_at = ?, cursor = ? WHERE schedule_id = ?`,
			def, boolInt(sc.Paused), unixNano(sc.UpdatedAt), unixNano(sc.Cursor), sc.ID)
		out = sc
		return err
	})
	if err != nil {
		return Schedule{}, queueError("change schedule "+name, err)
	}
	return out, nil
}

// UpdateSchedule implements [Schedules].
func (s *SQLite) UpdateSchedule(ctx context.Context, owner, name string, def *batonv1.Schedule, now time.Time) (Schedule, error) {
	return s.changeSchedule(ctx, owner, name, redefine(def, now))
}

// PauseSchedule implements [Schedules].
func (s *SQLite) PauseSchedule(ctx context.Context, owner, name string, paused bool, now time.Time) (Schedule, error) {
	return s.changeSchedule(ctx, owner, name, pause(paused, now))
}

// GetSchedule implements [Schedules].
func (s *SQLite) GetSchedule(ctx context.Context, owner, name string) (Schedule, error) {
	row, err := s.queryRow(ctx, `SELECT `+scheduleColumns+` FROM schedules WHERE owner = ? AND name = ?`, owner, name)
	if err != nil {
		return Schedule{}, fmt.Errorf("get schedule: %w", err)
	}
	sc, err := scanSchedule(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Schedule{}, fmt.Errorf("schedule %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Schedule{}, fmt.Errorf("get schedule: %w", err)
	}
	return sc, nil
}

// ListSchedules implements [Schedules]. Its page token is the (owner,
// name) of the last schedule of the previous page.
func (s *SQLite) ListSchedules(ctx context.Context, f ScheduleFilter) ([]Schedule, string, error) {
	size := f.PageSize
	if size <= 0 {
		size = DefaultPageSize
	}
	size = min(size, MaxPageSize)
	var afterOwner, afterName string
	if f.PageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(f.PageToken)
		o, n, ok := strings.Cut(string(b), "\x00")
		if err != nil || !ok || (f.Owner != "" && o != f.Owner) {
			return nil, "", fmt.Errorf("page token %q: %w", truncate(f.PageToken), ErrInvalidPageToken)
		}
		afterOwner, afterName = o, n
	}
	rows, err := s.query(ctx, `SELECT `+scheduleColumns+` FROM schedules
WHERE (? = '' OR owner = ?) AND (owner, name) > (?, ?) ORDER BY owner, name LIMIT ?`,
		f.Owner, f.Owner, afterOwner, afterName, size+1)
	if err != nil {
		return nil, "", fmt.Errorf("list schedules: %w", err)
	}
	defer rows.Close()
	var out []Schedule
	for rows.Next() {
		sc, err := scanSchedule(rows)
		if err != nil {
			return nil, "", fmt.Errorf("list schedules: %w", err)
		}
		out = append(out, sc)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list schedules: %w", err)
	}
	next := ""
	if len(out) > size {
		out = out[:size]
		last := out[size-1]
		next = base64.RawURLEncoding.EncodeToString([]byte(last.Owner + "\x00" + last.Name))
	}
	return out, next, nil
}

// AllSchedules implements [Schedules].
func (s *SQLite) AllSchedules(ctx context.Context) ([]Schedule, error) {
	rows, err := s.query(ctx, `SELECT `+scheduleColumns+` FROM schedules ORDER BY owner, name`)
	if err != nil {
		return nil, fmt.Errorf("list schedules: %w", err)
	}
	defer rows.Close()
	var out []Schedule
	for rows.Next() {
		sc, err := scanSchedule(rows)
		if err != nil {
			return nil, fmt.Errorf("list schedules: %w", err)
		}
		out = append(out, sc)
	}
	return out, rows.Err()
}

// DeleteSchedule implements [Schedules].
func (s *SQLite) DeleteSchedule(ctx context.Context, owner, name string) (Schedule, error) {
	var out Schedule
	err := s.write(ctx, func(tx *writer) error {
		row, err := tx.queryRow(`SELECT `+scheduleColumns+` FROM schedules WHERE owner = ? AND name = ?`, owner, name)
		if err != nil {
			return err
		}
		sc, err := scanSchedule(row)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("schedule %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return err
		}
		out = sc
		_, err = tx.exec(`DELETE FROM schedules WHERE schedule_id = ?`, sc.ID)
		return err
	})
	if err != nil {
		return Schedule{}, queueError("delete schedule "+name, err)
	}
	return out, nil
}

// RecordFire implements [Schedules].
func (s *SQLite) RecordFire(ctx context.Context, r FireRecord) (Schedule, error) {
	type prepared struct {
		j    Job
		st   *batonv1.JobStatus
		blob []byte
	}
	jobs := make([]prepared, 0, len(r.Jobs))
	for _, j := range r.Jobs {
		st := newJobStatus(&j)
		if (st.GetState() == batonv1.JobState_JOB_STATE_QUEUED) != (j.Queue != nil) {
			return Schedule{}, fmt.Errorf("record fire: job %s: a job has a place in the queue if and only if it is QUEUED", j.ID)
		}
		blob, err := proto.Marshal(st)
		if err != nil {
			return Schedule{}, fmt.Errorf("record fire: job %s: %w", j.ID, err)
		}
		jobs = append(jobs, prepared{j, st, blob})
	}
	f := r.Fire
	var out Schedule
	err := s.write(ctx, func(tx *writer) error {
		row, err := tx.queryRow(`SELECT `+scheduleColumns+` FROM schedules WHERE schedule_id = ?`, r.ScheduleID)
		if err != nil {
			return err
		}
		sc, err := scanSchedule(row)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("schedule %s: %w", r.ScheduleID, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if !f.Manual {
			switch {
			case sc.Paused:
				return fmt.Errorf("schedule %s is paused: %w", sc.Name, ErrConflict)
			case !f.Time.After(sc.Cursor):
				return fmt.Errorf("schedule %s: fire time %s is not after %s, the latest dealt with: %w", sc.Name, f.Time.Format(time.RFC3339Nano), sc.Cursor.Format(time.RFC3339Nano), ErrConflict)
			}
			sc.Cursor = f.Time
		}
		missed := r.Missed
		if len(missed) > MaxMissRecords {
			missed = missed[len(missed)-MaxMissRecords:]
		}
		for _, t := range missed {
			if f.Outcome != batonv1.FireOutcome_FIRE_OUTCOME_UNSPECIFIED && !t.Before(f.Time) {
				return fmt.Errorf("schedule %s: missed time %s is not before the fire: %w", sc.Name, t, ErrConflict)
			}
			if _, err := tx.exec(`INSERT INTO schedule_fires (schedule_id, fire_time, manual, outcome, job_id, group_id, reason) VALUES (?, ?, 0, ?, '', '', ?)`,
				sc.ID, unixNano(t), int32(batonv1.FireOutcome_FIRE_OUTCOME_MISSED), "the scheduler was not running within the catch-up deadline"); err != nil {
				return err
			}
		}
		sc.Misses += max(r.MissedCount, int64(len(r.Missed)))
		if f.Outcome != batonv1.FireOutcome_FIRE_OUTCOME_UNSPECIFIED {
			if _, err := tx.exec(`INSERT INTO schedule_fires (schedule_id, fire_time, manual, outcome, job_id, group_id, reason) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				sc.ID, unixNano(f.Time), boolInt(f.Manual), int32(f.Outcome), f.JobID, f.GroupID, f.Reason); err != nil {
				return err
			}
			if f.Time.After(sc.LastFire) {
				sc.LastFire = f.Time
			}
			switch f.Outcome {
			case batonv1.FireOutcome_FIRE_OUTCOME_STARTED:
				sc.Fires++
				sc.LastJobID, sc.LastGroupID = f.JobID, f.GroupID
			case batonv1.FireOutcome_FIRE_OUTCOME_SKIPPED:
				sc.Skips++
			case batonv1.FireOutcome_FIRE_OUTCOME_MISSED:
				sc.Misses++
			}
		}
		if g := r.Group; g != nil {
			if _, err := tx.exec(`INSERT INTO groups (group_id, owner, created_at, idempotency_key) VALUES (?, ?, ?, ?)`,
				g.ID, g.Owner, unixNano(g.CreatedAt), nullString(g.IdempotencyKey)); err != nil {
				return err
			}
		}
		for _, p := range jobs {
			if err := insertJob(tx, p.j, p.st, p.blob); err != nil {
				return err
			}
		}
		if _, err := tx.exec(`UPDATE schedules SET cursor = ?, last_fire = ?, last_job_id = ?, last_group_id = ?, fires = ?, misses = ?, skips = ? WHERE schedule_id = ?`,
			unixNano(sc.Cursor), unixNano(sc.LastFire), sc.LastJobID, sc.LastGroupID, sc.Fires, sc.Misses, sc.Skips, sc.ID); err != nil {
			return err
		}
		if r.HistoryLimit > 0 {
			if _, err := tx.exec(`DELETE FROM schedule_fires WHERE schedule_id = ? AND (fire_time, manual) NOT IN (
	SELECT fire_time, manual FROM schedule_fires WHERE schedule_id = ? ORDER BY fire_time DESC LIMIT ?)`, sc.ID, sc.ID, r.HistoryLimit); err != nil {
				return err
			}
		}
		out = sc
		return nil
	})
	switch code := sqliteCode(err); {
	case err == nil:
		return out, nil
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrConflict):
		return Schedule{}, err
	case code == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, code == sqlite3.SQLITE_CONSTRAINT_UNIQUE:
		return Schedule{}, fmt.Errorf("fire of schedule %s at %s is recorded already: %w", r.ScheduleID, f.Time.Format(time.RFC3339Nano), ErrConflict)
	default:
		return Schedule{}, fmt.Errorf("record fire of schedule %s: %w", r.ScheduleID, err)
	}
}

// ScheduleFires implements [Schedules].
func (s *SQLite) ScheduleFires(ctx context.Context, scheduleID string, limit int) ([]Fire, error) {
	rows, err := s.query(ctx, `SELECT fire_time, manual, outcome, job_id, group_id, reason FROM schedule_fires
WHERE schedule_id = ? ORDER BY fire_time DESC LIMIT ?`, scheduleID, limit)
	if err != nil {
		return nil, fmt.Errorf("list fires: %w", err)
	}
	defer rows.Close()
	var out []Fire
	for rows.Next() {
		var (
			f               Fire
			at, manual, res int64
		)
		if err := rows.Scan(&at, &manual, &res, &f.JobID, &f.GroupID, &f.Reason); err != nil {
			return nil, fmt.Errorf("list fires: %w", err)
		}
		f.Time, f.Manual, f.Outcome = fromUnixNano(at), manual != 0, batonv1.FireOutcome(res)
		out = append(out, f)
	}
	return out, rows.Err()
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// redefine gives a schedule a new definition, due from now on.
func redefine(def *batonv1.Schedule, now time.Time) func(sc *Schedule) {
	def = proto.CloneOf(def)
	return func(sc *Schedule) {
		sc.Definition = def
		sc.UpdatedAt = now
		if sc.Cursor.Before(now) {
			sc.Cursor = now
		}
	}
}

// pause pauses or resumes a schedule; resumed, it is due from now on:
// times that passed while it was paused are neither fired nor missed.
func pause(paused bool, now time.Time) func(sc *Schedule) {
	return func(sc *Schedule) {
		if sc.Paused == paused {
			return
		}
		sc.Paused = paused
		sc.UpdatedAt = now
		if !paused && sc.Cursor.Before(now) {
			sc.Cursor = now
		}
	}
}
