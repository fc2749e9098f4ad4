package store

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// What a write does to a job's status is decided here, in plain Go, once
// for every backend: each backend reads the job, asks these functions, and
// writes what they decided in its own transaction.

// newJobStatus reconciles j's identity fields with those of its status (see
// Store.CreateJob) and returns the status to store, a copy.
func newJobStatus(j *Job) *batonv1.JobStatus {
	var st *batonv1.JobStatus
	if j.Status != nil {
		st = proto.CloneOf(j.Status)
	} else {
		st = &batonv1.JobStatus{}
	}
	fill := func(field *string, fromStatus string) {
		if *field == "" {
			*field = fromStatus
		}
	}
	fill(&j.ID, st.GetJobId())
	fill(&j.WorkerID, st.GetWorkerId())
	fill(&j.Owner, st.GetOwner())
	fill(&j.GroupID, st.GetGroupId())
	if j.CreatedAt.IsZero() && st.GetCreatedAt() != nil {
		j.CreatedAt = st.GetCreatedAt().AsTime()
	}
	if j.CreatedAt.IsZero() {
		j.CreatedAt = time.Now()
	}
	if st.GetState() == batonv1.JobState_JOB_STATE_UNSPECIFIED {
		st.State = batonv1.JobState_JOB_STATE_PENDING
	}
	st.JobId, st.WorkerId, st.Owner, st.GroupId = j.ID, j.WorkerID, j.Owner, j.GroupID
	st.CreatedAt = timestamppb.New(j.CreatedAt)
	if isTerminal(st.GetState()) && st.GetEndedAt() == nil {
		st.EndedAt = timestamppb.Now()
	}
	return st
}

// nextFunc returns the status to write over old's, nil to leave the job
// as it is, or an error that refuses the write.
type nextFunc func(old Job) (*batonv1.JobStatus, error)

// schedulerUpdate is the change [Store.UpdateJobStatus] makes with st.
func schedulerUpdate(st *batonv1.JobStatus) nextFunc {
	return func(old Job) (*batonv1.JobStatus, error) {
		if isTerminal(old.Status.GetState()) {
			return nil, nil
		}
		next := proto.CloneOf(st)
		if next.Spec == nil {
			next.Spec = old.Status.GetSpec()
		}
		return next, nil
	}
}

// workerReport is the change [Store.ApplyWorkerReport] makes with the
// report st of worker workerID about job id.
func workerReport(workerID, id string, st *batonv1.JobStatus) nextFunc {
	return func(old Job) (*batonv1.JobStatus, error) {
		if old.WorkerID != workerID {
			return nil, fmt.Errorf("job %s is on worker %q, not %q: %w", id, old.WorkerID, workerID, ErrNotOnWorker)
		}
		was, now := old.Status.GetState(), st.GetState()
		switch {
		case was == batonv1.JobState_JOB_STATE_QUEUED:
			// No worker has been asked to run it: nothing a worker says
			// about it is true.
			return nil, nil
		case was == batonv1.JobState_JOB_STATE_LOST:
			// The worker's real state replaces LOST, even RUNNING; a job
			// the worker ran is never PENDING or unset again.
			if lifeStage(now) < lifeStage(batonv1.JobState_JOB_STATE_RUNNING) {
				return nil, nil
			}
		case isTerminal(was), lifeStage(now) < lifeStage(was):
			return nil, nil
		}
		next := proto.CloneOf(old.Status)
		next.State = now
		next.Pid = st.GetPid()
		next.ExitCode = st.ExitCode
		next.Signal = clip(st.GetSignal(), maxReportWord)
		next.Reason = clip(st.GetReason(), maxReportText)
		next.StartedAt = st.GetStartedAt()
		next.EndedAt = st.GetEndedAt()
		next.StoppedBy = clip(st.GetStoppedBy(), maxReportWord)
		next.StdoutBytes = st.GetStdoutBytes()
		next.StderrBytes = st.GetStderrBytes()
		next.Containment = clip(st.GetContainment(), maxReportWord)
		next.RunAs = clip(st.GetRunAs(), maxReportWord)
		next.Usage = reportedUsage(st.GetUsage())
		return next, nil
	}
}

// reportedUsage keeps what a worker says a job cost if it makes sense: no
// negative or unset durations (the API's own bounds), a known source. A
// usage that does not is dropped whole rather than stored in part.
func reportedUsage(u *batonv1.JobUsage) *batonv1.JobUsage {
	if u == nil {
		return nil
	}
	ok := func(d *durationpb.Duration) bool {
		return d == nil || (d.IsValid() && d.AsDuration() >= 0)
	}
	switch {
	case !ok(u.GetCpuUser()), !ok(u.GetCpuSystem()), !ok(u.GetWall()), u.GetPeakMemoryBytes() < 0,
		u.GetSource() != "" && u.GetSource() != "cgroup" && u.GetSource() != "rusage":
		return nil
	}
	dur := func(d *durationpb.Duration) *durationpb.Duration {
		if d == nil {
			return nil
		}
		return durationpb.New(d.AsDuration())
	}
	return &batonv1.JobUsage{
		CpuUser: dur(u.GetCpuUser()), CpuSystem: dur(u.GetCpuSystem()), PeakMemoryBytes: u.GetPeakMemoryBytes(),
		Wall: dur(u.GetWall()), Source: u.GetSource(),
	}
}

// A worker's words are kept to these sizes, so that no worker can fill
// the store, or every listing, with one job's reason.
const (
	maxReportText = 1024 // reason
	maxReportWord = 128  // signal, stopped_by, containment, run_as
)

// clip cuts s to at most n bytes, on a character boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// lifeStage orders a job's states along its life: a report may only move a
// job to the same stage or a later one.
func lifeStage(s batonv1.JobState) int {
	switch {
	case s == batonv1.JobState_JOB_STATE_QUEUED:
		return 1
	case s == batonv1.JobState_JOB_STATE_PENDING:
		return 2
	case s == batonv1.JobState_JOB_STATE_RUNNING:
		return 3
	case isTerminal(s):
		return 4
	}
	return 0
}

// statusChange is what a status write decided for a job: write Status
// (or queue the next attempt, Retry), or nothing.
type statusChange struct {
	// None is set when the job stays as it is.
	None bool
	// Retry, when set, is the status of the job's next attempt (see
	// retryOf); the other fields below are then unset.
	Retry *batonv1.JobStatus
	// Status is the job's new status, identity fixed.
	Status *batonv1.JobStatus
	// SameState and SameEnd report that the state, and the end time,
	// stay what they were.
	SameState, SameEnd bool
	// ClearStop is set when a stop still waiting is carried out or moot.
	ClearStop bool
	// LeavesQueue is set when the job's place in the queue goes: its
	// start is settled.
	LeavesQueue bool
	// DropScript is set when the job ended: its script goes.
	DropScript bool
	// Ended reports the end to the observer, when set.
	Ended *JobEnd
}

// decideStatus settles the write of upd, which next returned, over job
// old: a retried attempt, a repeated report, or the new status and what
// goes with it. fromWorker is set for a worker's report, whose end may be
// retried.
func decideStatus(old Job, upd *batonv1.JobStatus, fromWorker bool, now time.Time) statusChange {
	if fromWorker {
		if retry, ok := retryOf(old, upd, now); ok {
			return statusChange{Retry: retry, Ended: &JobEnd{ID: old.ID, GroupID: old.GroupID, State: upd.GetState(), Retried: true}}
		}
	}
	upd.JobId, upd.WorkerId, upd.Owner, upd.GroupId = old.ID, old.WorkerID, old.Owner, old.GroupID
	upd.CreatedAt = timestamppb.New(old.CreatedAt)
	if isTerminal(upd.GetState()) && upd.GetEndedAt() == nil {
		upd.EndedAt = timestamppb.Now()
	}
	if !isTerminal(upd.GetState()) {
		upd.EndedAt = nil
	}
	was := old.Status.GetState()
	c := statusChange{Status: upd}
	// A real end carries out, or makes moot, any stop still waiting.
	c.ClearStop = old.StopRequestedBy != "" && isTerminal(upd.GetState()) && upd.GetState() != batonv1.JobState_JOB_STATE_LOST
	c.SameState = upd.GetState() == was
	newEnded, hasEnded := endedAtNano(upd)
	oldEnded, hadEnded := endedAtNano(old.Status)
	c.SameEnd = hasEnded == hadEnded && newEnded == oldEnded
	if c.SameState && c.SameEnd && !c.ClearStop && proto.Equal(upd, old.Status) {
		return statusChange{None: true} // a repeated report
	}
	// A job leaves the queue once it runs or ends: its start is settled.
	c.LeavesQueue = inQueue(was) && !inQueue(upd.GetState())
	// A script sent with the job is kept until the job ends: each of its
	// attempts is sent it.
	c.DropScript = isTerminal(upd.GetState()) && !isTerminal(was)
	// A LOST job its worker reports with its true end has ended again; a
	// repeated LOST has not.
	if isTerminal(upd.GetState()) && !c.SameState {
		c.Ended = &JobEnd{ID: old.ID, GroupID: old.GroupID, State: upd.GetState()}
	}
	return c
}

// lostStatus is the status of job j once [Store.MarkWorkerJobsLost] has
// given it up, or the status of its next attempt (retried) when its
// policy retries a LOST attempt.
func lostStatus(j Job, reason string, at time.Time) (st *batonv1.JobStatus, retried bool) {
	st = proto.CloneOf(j.Status)
	st.State = batonv1.JobState_JOB_STATE_LOST
	st.Reason = reason
	st.EndedAt = timestamppb.New(at)
	if retry, ok := retryOf(j, st, at); ok {
		return retry, true
	}
	return st, false
}

// endedAtNano is st's end as stored: unix nanoseconds, and whether st is
// terminal at all.
func endedAtNano(st *batonv1.JobStatus) (int64, bool) {
	if !isTerminal(st.GetState()) {
		return 0, false
	}
	return unixNano(st.GetEndedAt().AsTime()), true
}

// lookupError wraps err for a status write of job id, keeping the
// sentinels a caller acts on as they are.
func lookupError(id string, err error) error {
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrNotOnWorker) || errors.Is(err, ErrRetiredRun) || errors.Is(err, ErrFenced) {
		return err
	}
	return fmt.Errorf("update job %s: %w", id, err)
}
