// Package store owns the scheduler's persistent state: the worker roster,
// jobs and fan-out groups.
//
// The state lives behind the [Store] interface, with two implementations
// that pass one contract suite: [SQLite], a single SQLite file in the
// scheduler's data directory (the single-node default), and [Etcd], keys in
// an etcd cluster shared by replicated schedulers. Both fence their writers:
// a write of a writer whose term has passed fails with ErrFenced. No SQL or
// etcd key exists outside this package.
//
// Errors are the sentinels below, wrapped with detail; compare them with
// [errors.Is]. Any other error is an internal failure of the store.
package store

import (
	"context"
	"errors"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

var (
	// ErrNotFound reports that no worker, job or group has the given id (or
	// owner and idempotency key).
	ErrNotFound = errors.New("not found")
	// ErrConflict reports that a job or group id, or a job's (owner,
	// idempotency key) pair, is already taken.
	ErrConflict = errors.New("already exists")
	// ErrInvalidPageToken reports a page token this store did not issue, or
	// one issued for a different filter.
	ErrInvalidPageToken = errors.New("invalid page token")
	// ErrNotOnWorker reports a worker's report about a job the scheduler
	// placed on another worker.
	ErrNotOnWorker = errors.New("job placed on another worker")
	// ErrUnavailable reports a store that cannot be written or read right
	// now (disk full, I/O error, read-only or locked file): trying again
	// later may succeed.
	ErrUnavailable = errors.New("store unavailable")
	// ErrRetiredRun reports a worker's report about an attempt of a job
	// that has been retried since: the worker should stop it.
	ErrRetiredRun = errors.New("the attempt was retried")
	// ErrSchemaTooNew reports a database written by a newer version of the
	// scheduler than this one; opening it could corrupt it.
	ErrSchemaTooNew = errors.New("the database was written by a newer scheduler")
	// ErrFenced reports a write refused because the writer's term is
	// stale: another scheduler has opened the store (or taken office)
	// since, and only its writes count. Nothing of the write was applied.
	ErrFenced = errors.New("fenced: a newer term has begun")
	// ErrTooLarge reports a write larger than the store takes at once
	// (etcd's limits on one transaction's size and operations): trying
	// again writes the same and fails the same. Nothing of it was applied.
	ErrTooLarge = errors.New("too large for one store transaction")
	// ErrCompacted reports a change feed resumed from a position whose
	// later changes are no longer all kept: the reader should list the
	// jobs afresh and follow the feed from [Feed.JobsRev].
	ErrCompacted = errors.New("the changes after that position are no longer kept")
)

// Page sizes of [Store.ListJobs].
const (
	// DefaultPageSize is used when [JobFilter.PageSize] is zero or negative.
	DefaultPageSize = 100
	// MaxPageSize caps [JobFilter.PageSize]; larger values are lowered to it.
	MaxPageSize = 1000
)

// Store is the scheduler's persistent state. Store is safe for concurrent use.
//
// Values passed in are not retained, and values returned are not shared with
// the store: callers may modify both freely.
type Store interface {
	// UpsertWorker stores w, replacing any worker with the same ID.
	UpsertWorker(ctx context.Context, w Worker) error
	// GetWorker returns the worker with the given id, or ErrNotFound.
	GetWorker(ctx context.Context, id string) (Worker, error)
	// DeleteWorker removes worker id from the roster, or returns
	// ErrNotFound. Its jobs stay: they are history.
	DeleteWorker(ctx context.Context, id string) error
	// ListWorkers returns every worker, ordered by name.
	ListWorkers(ctx context.Context) ([]Worker, error)

	// CreateJob stores a new job. It returns an error wrapping ErrConflict
	// when the job's ID exists, or when j.IdempotencyKey is not empty and the
	// owner already has a job with that key; in the latter case
	// GetJobByIdempotencyKey returns the existing job. It returns an error
	// wrapping ErrNotFound when j.GroupID names no group.
	//
	// The identity fields of j (ID, WorkerID, Owner, GroupID, CreatedAt) and
	// of j.Status (job_id, worker_id, owner, group_id, created_at) describe
	// the same job: an empty one on either side is filled from the other,
	// and where both are set, j's fields win.
	CreateJob(ctx context.Context, j Job) error
	// GetJob returns the job with the given id, or ErrNotFound.
	GetJob(ctx context.Context, id string) (Job, error)
	// GetJobByIdempotencyKey returns the owner's job created with key, or
	// ErrNotFound (always, for an empty key).
	GetJobByIdempotencyKey(ctx context.Context, owner, key string) (Job, error)
	// UpdateJobStatus replaces the status of job id with st, or returns
	// ErrNotFound. A job never leaves a terminal state: when the stored state
	// is terminal, st is discarded and the result is nil.
	//
	// The job's identity (job_id, worker_id, owner, group_id, created_at) is
	// fixed at creation and kept whatever st says; st's spec, when nil, is
	// kept from the stored status. A terminal st without ended_at is given
	// the current time.
	UpdateJobStatus(ctx context.Context, id string, st *batonv1.JobStatus) error
	// ApplyWorkerReport records what worker workerID reports about job id.
	// Only what a worker knows is taken from st: state, pid, exit code,
	// signal, reason, start and end times, stopped_by, byte counts,
	// containment, run_as and usage (dropped if it does not make sense:
	// a negative figure, an unknown source). The job's identity, owner, spec and group stay the
	// scheduler's. The job's life only moves forward (PENDING, RUNNING, an
	// end) and an end is final, except JOB_STATE_LOST: LOST only records
	// that the scheduler stopped hearing about the job, and its worker's
	// report of its real state replaces it. A report that would move the
	// job backward or change an end is ignored (nil).
	//
	// It returns ErrNotFound for a job the store does not have, and
	// ErrNotOnWorker for a job placed on another worker: a worker reports
	// only on its own jobs.
	ApplyWorkerReport(ctx context.Context, workerID, id string, st *batonv1.JobStatus) error
	// DeleteJob removes job id, or returns ErrNotFound. It is for a job
	// whose worker refused to start it: such a job never existed.
	DeleteJob(ctx context.Context, id string) error
	// ListJobs returns one page of the jobs matching f, newest first, and
	// the token of the next page, empty after the last page. A token is
	// only valid with the filter it was issued for (PageSize aside);
	// otherwise, or if it is malformed, the error wraps ErrInvalidPageToken.
	ListJobs(ctx context.Context, f JobFilter) (jobs []Job, nextToken string, err error)
	// JobsOnWorker returns the worker's jobs, newest first; with
	// nonTerminalOnly, only those not yet in a terminal state.
	JobsOnWorker(ctx context.Context, workerID string, nonTerminalOnly bool) ([]Job, error)
	// MarkWorkerJobsLost moves every non-terminal job of the worker to
	// JOB_STATE_LOST with the given reason and end time, and returns how
	// many it moved.
	MarkWorkerJobsLost(ctx context.Context, workerID, reason string, at time.Time) (int, error)

	// CreateGroup stores a new fan-out group, or returns an error wrapping
	// ErrConflict if its ID exists, or if g.IdempotencyKey is not empty and
	// the owner already has a group with that key. g.JobIDs is ignored: a group's jobs
	// are those created with its ID as their GroupID.
	CreateGroup(ctx context.Context, g Group) error
	// GetGroup returns the group with the given id and the ids of its jobs,
	// oldest first, or ErrNotFound.
	GetGroup(ctx context.Context, id string) (Group, error)
	// GroupProgress counts the jobs of group id by how far they are, or
	// returns ErrNotFound for an unknown group.
	GroupProgress(ctx context.Context, id string) (GroupProgress, error)
	// GetGroupByIdempotencyKey returns the owner's group created with key,
	// like GetGroup, or ErrNotFound (always, for an empty key).
	GetGroupByIdempotencyKey(ctx context.Context, owner, key string) (Group, error)

	// RequestStop records that by asked to stop job id, unless the job has
	// already ended (LOST does not count as ended: its worker may still run
	// it). The request stays until a report of the job's real end clears
	// it. It returns ErrNotFound for an unknown job.
	RequestStop(ctx context.Context, id, by string) error
	// ClearStop forgets a waiting stop of job id: its worker no longer has
	// the job, so there is nothing left to stop.
	ClearStop(ctx context.Context, id string) error
	// PendingStops returns the worker's jobs with a stop not yet carried out.
	PendingStops(ctx context.Context, workerID string) ([]Job, error)

	// ListQueued returns every job with a place in the queue, with Queue
	// set: those QUEUED, and those PENDING on the worker AssignJob handed
	// them to, until their start is settled.
	ListQueued(ctx context.Context) ([]Job, error)
	// GetQueuedJob returns job id with Queue set, or ErrNotFound, or
	// ErrConflict for a job with no place in the queue.
	GetQueuedJob(ctx context.Context, id string) (Job, error)
	// JobScript returns the content of the script sent with job id, which
	// the store keeps until the job ends; nil when it keeps none for it.
	JobScript(ctx context.Context, id string) ([]byte, error)
	// AssignJob hands QUEUED job id to worker workerID: the job becomes
	// PENDING on that worker and keeps its place in the queue until a
	// report of its start (or end) arrives, or RequeueJob puts it back. It
	// returns the job as it now is; ErrNotFound for an unknown job, and
	// ErrConflict for one that is not QUEUED or was queued for another
	// worker.
	AssignJob(ctx context.Context, id, workerID string) (Job, error)
	// RequeueJob puts a job AssignJob handed out, and whose worker did not
	// take it, back in the queue at its place: QUEUED again, on the worker
	// it was queued for (or none). ErrConflict when the job is not PENDING
	// with a place in the queue. It returns the job as it now is, with
	// Queue set.
	RequeueJob(ctx context.Context, id string) (Job, error)

	// PruneJobs deletes the jobs that reached a terminal state before
	// endedBefore, then the groups created before endedBefore that are left
	// without jobs, and returns how many jobs it deleted.
	PruneJobs(ctx context.Context, endedBefore time.Time) (int, error)

	// Schedules keeps schedules and their fires (schedules.go).
	Schedules

	// Feed reports the changes to jobs as they happen.
	Feed

	// Close releases the store. Calls after Close fail.
	Close() error
}

// Feed is the change feed of jobs: a reader follows every job write
// (creation, status update, worker report, assignment and requeue, stop
// request and clear, lost marking, delete, prune) and, after a
// disconnect, resumes where it stopped.
//
// The feed reports a job's state, not each of its writes: a reader that
// resumes late may see only the latest state of a job written several
// times since, but it never misses that a job changed or was deleted, and
// never sees changes out of order. Changes written by one write may share
// a Rev (etcd: a transaction that wrote several jobs); resuming from a Rev
// skips all of them, so a reader records as its position the Rev of the
// last change it handled once it has seen a change with a higher one, or
// handled the whole write.
type Feed interface {
	// JobsRev returns the position of the latest job change:
	// Changes(ctx, rev) with it reports what comes after now.
	JobsRev(ctx context.Context) (int64, error)
	// Changes calls fn with the changes to jobs after position after (0:
	// every change the store keeps), in Rev order, and then with each
	// later one as it happens, until ctx ends (ctx's error is returned)
	// or fn returns an error (returned as it is). fn runs on the calling
	// goroutine and is not called concurrently.
	//
	// When the changes after `after` are no longer all kept (etcd
	// compacted its history, SQLite pruned the record of deletes), it
	// returns an error wrapping ErrCompacted: list the jobs and resume
	// from JobsRev taken before listing.
	Changes(ctx context.Context, after int64, fn func(Change) error) error
}

// Change is one job write as [Feed.Changes] reports it.
type Change struct {
	// Rev orders changes; Changes(ctx, Rev) resumes after this one.
	Rev   int64
	JobID string
	// Deleted reports that the job was deleted (DeleteJob, PruneJobs).
	Deleted bool
	// Job is the job as written, as GetJob would return it; the zero Job
	// when Deleted.
	Job Job
}

// JobEndObserver is implemented by stores that report jobs reaching a
// terminal state, for the scheduler's jobs-finished metric. The store knows
// exactly when a job's state changes: its callers see the same end several
// times (from StopJob, QueryJob and the worker's heartbeat).
type JobEndObserver interface {
	// ObserveJobEnds makes the store call fn with the job and its new
	// state after every write that moved a job into a terminal state: from
	// a non-terminal state, or from LOST to the end its worker reported. fn
	// replaces any earlier one; it is called with no lock held and must
	// return quickly.
	ObserveJobEnds(fn func(JobEnd))
}

// JobEnd is a job that reached a terminal state, as [JobEndObserver]
// reports it.
type JobEnd struct {
	ID      string
	GroupID string
	State   batonv1.JobState
	// Retried is set when the end was an attempt's, and the job is QUEUED
	// again for its next attempt (see JobStatus.attempts): it has not ended.
	Retried bool
}

// GroupProgress counts a group's jobs by how far they are: for a waiter
// on the group, it has ended when Open is zero.
type GroupProgress struct {
	// Open counts the jobs not yet in a terminal state.
	Open int
	// Succeeded and Unsucceeded count the ended jobs that ended
	// SUCCEEDED, and in any other terminal state.
	Succeeded, Unsucceeded int
}

// Worker is one roster entry.
type Worker struct {
	ID      string
	Name    string
	Address string
	State   batonv1.WorkerState
	Labels  map[string]string
	// Capacity is the most jobs the worker runs at once; zero means unlimited.
	Capacity      int32
	RunningJobs   int32
	LastHeartbeat time.Time
	RegisteredAt  time.Time
}

// Job is one job and its latest known status.
type Job struct {
	ID       string
	WorkerID string
	Owner    string
	// GroupID links the jobs of one fan-out; empty for a single job.
	GroupID string
	// IdempotencyKey is unique per Owner when not empty.
	IdempotencyKey string
	CreatedAt      time.Time
	Status         *batonv1.JobStatus
	// StopRequestedBy names who asked for a stop that the job's worker has
	// not carried out yet; empty when none is waiting.
	StopRequestedBy string
	// Queue is the job's place in the queue. CreateJob requires it for a
	// QUEUED job; ListQueued fills it. Other reads leave it nil.
	Queue *QueuePlace
	// Script is the content of a script sent with the job, which its
	// worker needs when the queue hands the job out (its first attempt,
	// or a retry). CreateJob stores it beside the job until the job ends;
	// AssignJob returns it, and other reads leave it nil.
	Script []byte
}

// QueuePlace is where a job waits in the scheduler's queue. Jobs are
// handed out by Priority (higher first), then Round (owners at one
// priority take turns), then Seq (submission order).
type QueuePlace struct {
	// WorkerID is the worker the job was asked to run on; empty for any
	// worker matching its selector.
	WorkerID string
	Priority int32
	Round    int64
	Seq      int64
	// Deadline is when the job stops waiting; zero for no limit.
	Deadline time.Time
}

// Group is the set of jobs started by one fan-out StartJob.
type Group struct {
	ID    string
	Owner string
	// IdempotencyKey is unique per Owner when not empty: one fan-out
	// request, however often it is sent, makes one group.
	IdempotencyKey string
	CreatedAt      time.Time
	// JobIDs lists the group's jobs, oldest first. It is filled by
	// [Store.GetGroup] and ignored by [Store.CreateGroup].
	JobIDs []string
}

// JobFilter selects jobs for [Store.ListJobs]. Empty fields match every job;
// set fields must all match.
type JobFilter struct {
	WorkerID string
	Owner    string
	GroupID  string
	// States matches jobs in any of the listed states.
	States []batonv1.JobState
	// PageSize is the most jobs per page: DefaultPageSize when zero or
	// negative, at most MaxPageSize.
	PageSize int
	// PageToken continues a listing from the nextToken of the previous page.
	PageToken string
}

// inQueue reports whether a job in state s may hold a place in the queue:
// waiting, or handed to a worker that has not answered yet.
func inQueue(s batonv1.JobState) bool {
	return s == batonv1.JobState_JOB_STATE_QUEUED || s == batonv1.JobState_JOB_STATE_PENDING
}

// isTerminal reports whether a job in state s has ended for good.
func isTerminal(s batonv1.JobState) bool {
	switch s {
	case batonv1.JobState_JOB_STATE_SUCCEEDED,
		batonv1.JobState_JOB_STATE_FAILED,
		batonv1.JobState_JOB_STATE_STOPPED,
		batonv1.JobState_JOB_STATE_TIMED_OUT,
		batonv1.JobState_JOB_STATE_LOST:
		return true
	}
	return false
}
