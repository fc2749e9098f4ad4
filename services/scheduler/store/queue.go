package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// The queue's rows live beside the jobs they order: CreateJob adds one for
// a QUEUED job, updateJobStatus removes it once the job runs or ends, and
// the two methods below move a job between QUEUED and PENDING. Which job
// goes next is the scheduler's business; the store only keeps the places.

// ListQueued implements [Store].
func (s *SQLite) ListQueued(ctx context.Context) ([]Job, error) {
	rows, err := s.query(ctx, `SELECT `+prefixed("j.", jobColumns)+`, q.worker_id, q.priority, q.round, q.seq, q.deadline
FROM queue q JOIN jobs j ON j.job_id = q.job_id ORDER BY q.priority DESC, q.round, q.seq`)
	if err != nil {
		return nil, fmt.Errorf("list queued jobs: %w", err)
	}
	defer rows.Close()
	var jobs []Job
	for rows.Next() {
		var (
			q        QueuePlace
			deadline int64
		)
		j, err := scanJob(rows, &q.WorkerID, &q.Priority, &q.Round, &q.Seq, &deadline)
		if err != nil {
			return nil, fmt.Errorf("list queued jobs: %w", err)
		}
		if deadline != 0 {
			q.Deadline = fromUnixNano(deadline)
		}
		j.Queue = &q
		jobs = append(jobs, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list queued jobs: %w", err)
	}
	return jobs, nil
}

// AssignJob implements [Store].
func (s *SQLite) AssignJob(ctx context.Context, id, workerID string) (Job, error) {
	var out Job
	err := s.write(ctx, func(tx *writer) error {
		j, pinned, err := queuedJob(tx, id)
		if err != nil {
			return err
		}
		if st := j.Status.GetState(); st != batonv1.JobState_JOB_STATE_QUEUED {
			return fmt.Errorf("job %s is %s, not queued: %w", id, st, ErrConflict)
		}
		if pinned != "" && pinned != workerID {
			return fmt.Errorf("job %s is queued for worker %q, not %q: %w", id, pinned, workerID, ErrConflict)
		}
		j.WorkerID = workerID
		j.Status.WorkerId = workerID
		j.Status.State = batonv1.JobState_JOB_STATE_PENDING
		j.Status.Reason = ""
		if err := setPlacement(tx, j); err != nil {
			return err
		}
		if j.Script, err = queuedScript(tx, id); err != nil {
			return err
		}
		out = j
		return nil
	})
	if err != nil {
		return Job{}, queueError("assign job "+id, err)
	}
	return out, nil
}

// RequeueJob implements [Store].
func (s *SQLite) RequeueJob(ctx context.Context, id string) (Job, error) {
	var out Job
	err := s.write(ctx, func(tx *writer) error {
		j, pinned, err := queuedJob(tx, id)
		if err != nil {
			return err
		}
		if st := j.Status.GetState(); st != batonv1.JobState_JOB_STATE_PENDING {
			return fmt.Errorf("job %s is %s, not being started: %w", id, st, ErrConflict)
		}
		j.WorkerID = pinned
		j.Status.WorkerId = pinned
		j.Status.State = batonv1.JobState_JOB_STATE_QUEUED
		if err := setPlacement(tx, j); err != nil {
			return err
		}
		out = j
		return nil
	})
	if err != nil {
		return Job{}, queueError("requeue job "+id, err)
	}
	return out, nil
}

// GetQueuedJob implements [Store].
func (s *SQLite) GetQueuedJob(ctx context.Context, id string) (Job, error) {
	row, err := s.queryRow(ctx, queuedJobQuery, id)
	if err != nil {
		return Job{}, fmt.Errorf("get queued job %s: %w", id, err)
	}
	j, _, err := scanQueuedJob(row, id)
	if err != nil {
		return Job{}, queueError("get queued job "+id, err)
	}
	return j, nil
}

var queuedJobQuery = `SELECT ` + prefixed("j.", jobColumns) + `, q.worker_id, q.priority, q.round, q.seq, q.deadline
FROM jobs j LEFT JOIN queue q ON q.job_id = j.job_id WHERE j.job_id = ?`

// queuedJob reads job id, with its place in the queue, and the worker it
// was queued for; ErrConflict when it has no place in the queue.
func queuedJob(tx *writer, id string) (Job, string, error) {
	row, err := tx.queryRow(queuedJobQuery, id)
	if err != nil {
		return Job{}, "", err
	}
	return scanQueuedJob(row, id)
}

func scanQueuedJob(row scanner, id string) (Job, string, error) {
	var (
		pinned                         sql.NullString
		priority, round, seq, deadline sql.NullInt64
	)
	j, err := scanJob(row, &pinned, &priority, &round, &seq, &deadline)
	if errors.Is(err, sql.ErrNoRows) {
		return Job{}, "", fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Job{}, "", err
	}
	if !pinned.Valid {
		return Job{}, "", fmt.Errorf("job %s has no place in the queue: %w", id, ErrConflict)
	}
	j.Queue = &QueuePlace{WorkerID: pinned.String, Priority: int32(priority.Int64), Round: round.Int64, Seq: seq.Int64}
	if deadline.Int64 != 0 {
		j.Queue.Deadline = fromUnixNano(deadline.Int64)
	}
	return j, pinned.String, nil
}

// queuedScript reads the script sent with queued job id, nil for none.
// JobScript implements [Store].
func (s *SQLite) JobScript(ctx context.Context, id string) ([]byte, error) {
	row, err := s.queryRow(ctx, `SELECT content FROM scripts WHERE job_id = ?`, id)
	if err != nil {
		return nil, fmt.Errorf("script of job %s: %w", id, err)
	}
	var script []byte
	if err := row.Scan(&script); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("script of job %s: %w", id, unavailable(err))
	}
	return script, nil
}

func queuedScript(tx *writer, id string) ([]byte, error) {
	row, err := tx.queryRow(`SELECT content FROM scripts WHERE job_id = ?`, id)
	if err != nil {
		return nil, err
	}
	var script []byte
	if err := row.Scan(&script); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	return script, nil
}

// setPlacement writes j's worker, state and status.
func setPlacement(tx *writer, j Job) error {
	blob, err := proto.Marshal(j.Status)
	if err != nil {
		return err
	}
	_, err = tx.exec(`UPDATE jobs SET worker_id = ?, state = ?, status = ?, rev = ? WHERE job_id = ?`,
		j.WorkerID, int32(j.Status.GetState()), blob, tx.nextRev(), j.ID)
	return err
}

func queueError(what string, err error) error {
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
		return err
	}
	return fmt.Errorf("%s: %w", what, err)
}

// prefixed qualifies each of a comma-separated column list with prefix.
func prefixed(prefix, columns string) string {
	cols := strings.Split(columns, ", ")
	for i, c := range cols {
		cols[i] = prefix + c
	}
	return strings.Join(cols, ", ")
}
