package store

import (
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// Retries are decided where an end is recorded, in the same transaction:
// an attempt whose end the job's retry policy counts, with attempts left,
// does not end the job. The job goes back to the queue, QUEUED, for its
// next attempt, which waits for its backoff (not_before) and then for a
// slot, and runs under an id of its own (run_id) on whichever worker it is
// placed on. Nobody ever sees the job end in between, so a caller following
// it, or a job waiting for it, sees only its real end.

// maxBackoff bounds any wait between attempts.
const maxBackoff = 24 * time.Hour

// retryOf returns the status that records ended, an end of job j's current
// attempt, and queues its next attempt; false when the end is final: no
// retry policy, no attempt left, or an end the policy does not count.
func retryOf(j Job, ended *batonv1.JobStatus, now time.Time) (*batonv1.JobStatus, bool) {
	old := j.Status
	policy := old.GetSpec().GetRetry()
	attempt := max(old.GetAttempt(), 1)
	// A stop asked for while the attempt ended stops the job, whatever
	// the attempt's end.
	if policy == nil || attempt >= policy.GetAttempts() || !counts(policy, ended) || j.StopRequestedBy != "" {
		return nil, false
	}
	run, err := uuid.NewV7()
	if err != nil {
		return nil, false
	}
	wait := backoff(policy, attempt)
	next := &batonv1.JobStatus{
		JobId: j.ID, Owner: j.Owner, GroupId: j.GroupID, Spec: old.GetSpec(),
		CreatedAt: old.GetCreatedAt(),
		WorkerId:  old.GetSpec().GetWorker(),
		State:     batonv1.JobState_JOB_STATE_QUEUED,
		Attempt:   attempt + 1,
		Attempts: append(slices.Clone(old.GetAttempts()), &batonv1.Attempt{
			Number: attempt, RunId: runIDOf(j), WorkerId: j.WorkerID,
			State: ended.GetState(), ExitCode: ended.ExitCode, Signal: ended.GetSignal(), Reason: ended.GetReason(),
			StartedAt: ended.GetStartedAt(), EndedAt: ended.GetEndedAt(), Usage: ended.GetUsage(),
			StdoutBytes: ended.GetStdoutBytes(), StderrBytes: ended.GetStderrBytes(),
		}),
		RunId:     run.String(),
		NotBefore: timestamppb.New(now.Add(wait)),
		Reason: clip(fmt.Sprintf("attempt %d of %d ended %s (%s); attempt %d waits %s, then for a slot",
			attempt, policy.GetAttempts(), StateWord(ended.GetState()), ended.GetReason(), attempt+1, wait.Round(time.Millisecond)), maxReportText),
	}
	if next.Attempts[len(next.Attempts)-1].EndedAt == nil {
		next.Attempts[len(next.Attempts)-1].EndedAt = timestamppb.New(now)
	}
	return next, true
}

// runIDOf is the id job j's current attempt runs under on its worker.
func runIDOf(j Job) string {
	if r := j.Status.GetRunId(); r != "" {
		return r
	}
	return j.ID
}

// counts reports whether policy retries an attempt that ended as st:
// STOPPED never (somebody asked for it), TIMED_OUT and LOST when the
// policy says so, FAILED with an exit code in exit_codes (any non-zero one
// when empty), and FAILED without one (a signal, a limit) only when
// exit_codes is empty.
func counts(policy *batonv1.RetryPolicy, st *batonv1.JobStatus) bool {
	switch st.GetState() {
	case batonv1.JobState_JOB_STATE_TIMED_OUT:
		return policy.GetTimedOut()
	case batonv1.JobState_JOB_STATE_LOST:
		return policy.GetLost()
	case batonv1.JobState_JOB_STATE_FAILED:
		if len(policy.GetExitCodes()) == 0 {
			return true
		}
		return st.ExitCode != nil && slices.Contains(policy.GetExitCodes(), st.GetExitCode())
	}
	return false
}

// backoff is the wait before the attempt after attempt (from 1):
// initial_backoff × factor^(attempt-1), at most max_backoff, less up to
// jitter of it.
func backoff(p *batonv1.RetryPolicy, attempt int32) time.Duration {
	d := float64(p.GetInitialBackoff().AsDuration())
	factor := p.GetFactor()
	if factor == 0 {
		factor = 2
	}
	limit := maxBackoff
	if m := p.GetMaxBackoff().AsDuration(); m > 0 {
		limit = min(m, maxBackoff)
	}
	for range attempt - 1 {
		d *= factor
		if d >= float64(limit) {
			break
		}
	}
	d = min(d, float64(limit))
	if j := p.GetJitter(); j > 0 {
		d -= d * j * rand.Float64()
	}
	return time.Duration(d)
}

// writeRetry records status retry, made by retryOf, for job j: the job
// leaves its worker and waits in the queue, behind the jobs waiting now
// at its priority.
func writeRetry(tx *writer, j Job, retry *batonv1.JobStatus) error {
	blob, err := proto.Marshal(retry)
	if err != nil {
		return err
	}
	if _, err := tx.exec(`UPDATE jobs SET worker_id = ?, run_id = ?, state = ?, ended_at = NULL, stop_requested_by = NULL, status = ?, rev = ?
WHERE job_id = ?`, retry.GetWorkerId(), retry.GetRunId(), int32(retry.GetState()), blob, tx.nextRev(), j.ID); err != nil {
		return err
	}
	if _, err := tx.exec(`INSERT OR IGNORE INTO retired_runs (run_id, job_id, worker_id) VALUES (?, ?, ?)`, runIDOf(j), j.ID, j.WorkerID); err != nil {
		return err
	}
	priority := retry.GetSpec().GetPriority()
	_, err = tx.exec(`INSERT OR REPLACE INTO queue (job_id, worker_id, priority, round, seq, deadline)
VALUES (?1, ?2, ?3,
	(SELECT coalesce(max(round), 1) FROM queue WHERE priority = ?3),
	(SELECT coalesce(max(seq), 0) + 1 FROM queue), 0)`, j.ID, retry.GetWorkerId(), priority)
	return err
}

// StateWord is a job state as a word: "FAILED".
func StateWord(st batonv1.JobState) string {
	return strings.TrimPrefix(st.String(), "JOB_STATE_")
}

// retiredRun is the error for a worker's report about run id, which no
// job runs under now: ErrRetiredRun when it was an attempt of a job
// retried since that ran on worker, else ErrNotFound.
func retiredRun(tx *writer, id, worker string) error {
	row, err := tx.queryRow(`SELECT job_id FROM retired_runs WHERE run_id = ? AND worker_id = ?`, id, worker)
	if err != nil {
		return err
	}
	var job string
	switch err := row.Scan(&job); {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("job %s: %w", id, ErrNotFound)
	case err != nil:
		return err
	}
	return fmt.Errorf("run %s of job %s: %w", id, job, ErrRetiredRun)
}
