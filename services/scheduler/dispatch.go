package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/scheduler/store"
)

// The path of a queued job: StartJob records it QUEUED with its place
// (enqueue) when it may wait and no slot is free; the dispatcher hands it
// to a worker the moment a slot that fits it frees (a job ends, a worker
// registers), records it PENDING there (store.AssignJob) and starts it.
// A worker that will not take it puts it back at its place, after a pause
// that grows with each try; one that cannot say whether it did is asked
// until it answers.

// DefaultPriority is the priority of a StartJob that sets none.
const DefaultPriority = 50

// Pauses before a job its worker did not take is handed out again: the
// worker's heartbeat will correct the count that made it look free, or
// the worker's trouble (a full disk, say) may pass.
const (
	retryPause    = 100 * time.Millisecond
	maxRetryPause = 30 * time.Second
)

// waits reports whether a StartJob may wait in the queue.
func waits(req *batonv1.StartJobRequest) bool {
	return req.GetQueueTimeout().AsDuration() != 0
}

// priorityOf is the request's priority, DefaultPriority when unset.
func priorityOf(req *batonv1.StartJobRequest) int32 {
	if req.Priority == nil {
		return DefaultPriority
	}
	return req.GetPriority()
}

// checkPriority refuses a priority above MaxUserPriority from a caller
// who is not an admin: going ahead of everyone is the operator's call. A
// job that asks for none has the default, whatever the maximum.
func (s *Scheduler) checkPriority(ctx context.Context, req *batonv1.StartJobRequest) error {
	if req.Priority == nil {
		return nil
	}
	p := req.GetPriority()
	if p <= s.opts.MaxUserPriority || caller(ctx).Role == identity.RoleAdmin {
		return nil
	}
	return newError(errPriority, "priority %d is above %d, the most users may ask for (scheduler.max_user_priority); an admin may set more", p, s.opts.MaxUserPriority)
}

// queueable reports whether a placement error is one a job may wait out:
// every matching worker full or none ready, or the named worker not ready.
func queueable(err error) bool {
	var we *workerError
	if errors.As(err, &we) {
		return connect.CodeOf(we.err) == connect.CodeResourceExhausted
	}
	return errors.Is(err, errNoCapacity) || errors.Is(err, errNoMatch) ||
		errors.Is(err, errNoWorkers) || errors.Is(err, errWorkerUnavailable)
}

// enqueue records a new QUEUED job for req and puts it in the queue;
// worker names the worker it must run on, or is empty. It returns the
// job's status as a caller sees it.
func (s *Scheduler) enqueue(ctx context.Context, req *batonv1.StartJobRequest, owner, group, key, worker string) (*batonv1.JobStatus, *waiting, error) {
	return s.enqueueSpec(ctx, req, specOf(req), owner, group, key, worker)
}

// enqueueSpec is enqueue with the job's spec given. A job that waits for
// other jobs, or for its array's turn, is held (holds.go).
func (s *Scheduler) enqueueSpec(ctx context.Context, req *batonv1.StartJobRequest, spec *batonv1.JobSpec, owner, group, key, worker string) (*batonv1.JobStatus, *waiting, error) {
	if err := s.reg.checkNamed(worker); err != nil {
		return nil, nil, err
	}
	uid, err := uuid.NewV7()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	var deadline time.Time
	if d := req.GetQueueTimeout().AsDuration(); d > 0 {
		deadline = now.Add(d)
	}
	place, err := s.q.place(owner, worker, req.GetSelector(), priorityOf(req), deadline)
	if err != nil {
		return nil, nil, err
	}
	job := store.Job{
		ID: uid.String(), WorkerID: worker, Owner: owner, GroupID: group, IdempotencyKey: key, CreatedAt: now,
		Queue: &place, Script: req.GetScript(),
		Status: &batonv1.JobStatus{
			State:  batonv1.JobState_JOB_STATE_QUEUED,
			Spec:   spec,
			Reason: s.reg.waitReason(worker, req.GetSelector()),
		},
	}
	// Not cut short by the caller's hang-up (see recordPending): a job
	// recorded QUEUED must reach the queue.
	if err := s.store.CreateJob(context.WithoutCancel(ctx), job); err != nil {
		return nil, nil, err
	}
	s.opts.Metrics.JobQueued(place.Priority)
	if !isHeld(job) {
		w := s.q.add(job, now)
		return s.queuedStatus(job), w, nil
	}
	w := s.q.hold(job, now)
	s.settleHolds(ctx, w)
	if cur, err := s.store.GetJob(ctx, job.ID); err == nil {
		job = cur
	}
	return s.queuedStatus(job), w, nil
}

// queuedStatus is a job's status with its identity and, while it is
// QUEUED, its position and what it waits for now.
func (s *Scheduler) queuedStatus(j store.Job) *batonv1.JobStatus {
	st := withIdentity(j, proto.CloneOf(j.Status))
	if st.GetState() != batonv1.JobState_JOB_STATE_QUEUED {
		return st
	}
	if nb := st.GetNotBefore(); nb != nil && time.Now().Before(nb.AsTime()) {
		return st // its reason says which attempt ended, and how long it waits
	}
	if held := s.q.heldReason(j.ID); held != "" {
		st.Reason = held
		return st
	}
	st.QueuePosition = s.q.position(j.ID)
	st.Reason = s.reg.waitReason(st.GetWorkerId(), st.GetSpec().GetSelector())
	return st
}

// runQueue hands queued jobs to workers as slots free, and ends the jobs
// whose queue timeout passed, until ctx ends; then it waits for the starts
// it began. A start cut short by ctx has an unknown outcome: its job stays
// PENDING with its place, for the next registration of its worker to
// settle.
func (s *Scheduler) runQueue(ctx context.Context) {
	var starts sync.WaitGroup
	defer starts.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := s.expireQueued(ctx)
		for !s.q.empty() {
			open := s.reg.openWorkers()
			if len(open) == 0 {
				break
			}
			w, slot := s.q.next(func(worker string, selector map[string]string) *reservation {
				return s.reg.reserveAmong(open, worker, selector)
			})
			if w == nil {
				break
			}
			starts.Go(func() { s.dispatch(ctx, w, slot) })
		}
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case <-s.q.wake:
		case <-s.reg.freed:
		case <-timer.C:
		}
	}
}

// dispatch starts job w on the worker slot reserved for it.
func (s *Scheduler) dispatch(runCtx context.Context, w *waiting, slot *reservation) {
	defer slot.release()
	// Records are written whatever happens to runCtx; only the calls to
	// the worker end with it.
	ctx := context.WithoutCancel(runCtx)
	t := slot.target
	// Marked as being started before it is PENDING on the worker, so that
	// a registration of the worker meanwhile leaves it to this start.
	s.starting.Store(w.id, struct{}{})
	defer s.starting.Delete(w.id)
	job, err := s.store.AssignJob(ctx, w.id, t.id)
	switch {
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
		// The store no longer has it waiting: it is settled there.
		s.leaveQueue(w, metrics.QueuePlaced)
		return
	case err != nil:
		s.logger.ErrorContext(ctx, "handing a queued job to a worker failed", "job_id", w.id, "worker_id", t.id, "error", err)
		s.retryLater(w)
		return
	}
	cctx, cancel := context.WithTimeout(runCtx, s.opts.WorkerCallTimeout)
	res, err := t.client.StartJob(cctx, connect.NewRequest(workerStartOf(job)))
	cancel()
	switch code := connect.CodeOf(err); {
	case err == nil:
		s.started(ctx, slot, job, res.Msg.GetStatus())
		s.leaveQueue(w, metrics.QueuePlaced)
	case code == connect.CodeResourceExhausted:
		s.requeue(runCtx, w, job.ID)
	case code == connect.CodeInvalidArgument, code == connect.CodeNotFound, code == connect.CodePermissionDenied,
		code == connect.CodeFailedPrecondition:
		s.refused(ctx, w, job, t.id, err)
	case runCtx.Err() != nil:
		// Shutting down: the next registration of the worker settles it.
	default:
		// Timed out, connection lost, the worker failed, or the job
		// exists already: the worker may have started it.
		s.settleHanded(runCtx, w, job, slot)
	}
}

// retryLater puts a handed job back in the queue after a pause that grows
// with each try.
func (s *Scheduler) retryLater(w *waiting) {
	pause := min(retryPause<<min(w.tries, 10), maxRetryPause)
	w.tries++
	s.q.pause(w)
	time.AfterFunc(pause, func() { s.q.putBack(w) })
}

// requeue puts a handed job its worker did not take back at its place in
// the store, then in the queue after a pause. A job the store no longer
// has as being started (a report of it came) leaves the queue.
func (s *Scheduler) requeue(runCtx context.Context, w *waiting, id string) {
	ctx := context.WithoutCancel(runCtx)
	pause := retryPause
	for {
		_, err := s.store.RequeueJob(ctx, id)
		switch {
		case err == nil:
			s.retryLater(w)
			return
		case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
			s.leaveQueue(w, metrics.QueuePlaced)
			return
		}
		s.logger.ErrorContext(ctx, "putting a job back in the queue failed", "job_id", id, "error", err)
		select {
		case <-time.After(pause):
		case <-runCtx.Done():
			return // the next registration of its worker settles it
		}
		pause = min(2*pause, maxRetryPause)
	}
}

// refused ends a handed job its worker refused to start for a reason
// another try would not change (a script it does not have, say).
func (s *Scheduler) refused(ctx context.Context, w *waiting, job store.Job, worker string, callErr error) {
	msg := callErr.Error()
	if ce := new(connect.Error); errors.As(callErr, &ce) {
		msg = ce.Message()
	}
	st := proto.CloneOf(job.Status)
	st.State = batonv1.JobState_JOB_STATE_FAILED
	st.Reason = clip(fmt.Sprintf("worker %q refused to start it: %s", worker, msg), 1024)
	st.EndedAt = timestamppb.Now()
	if err := s.store.UpdateJobStatus(ctx, job.ID, st); err != nil {
		s.logger.ErrorContext(ctx, "recording a refused start failed", "job_id", job.ID, "error", err)
	}
	s.leaveQueue(w, metrics.QueueRefused)
}

// settleHanded finds out whether the worker started a handed job whose
// start call failed: it asks the worker until it answers, and meanwhile
// watches the store, where a report of the job (or its worker's DOWN)
// may settle it first.
func (s *Scheduler) settleHanded(runCtx context.Context, w *waiting, job store.Job, slot *reservation) {
	ctx := context.WithoutCancel(runCtx)
	t := slot.target
	pause := 500 * time.Millisecond
	for {
		cur, err := s.store.GetJob(ctx, job.ID)
		switch {
		case err != nil && !errors.Is(err, store.ErrUnavailable):
			s.leaveQueue(w, metrics.QueuePlaced)
			return
		case err == nil && cur.Status.GetState() == batonv1.JobState_JOB_STATE_QUEUED:
			s.retryLater(w)
			return
		case err == nil && cur.Status.GetState() != batonv1.JobState_JOB_STATE_PENDING:
			s.leaveQueue(w, metrics.QueuePlaced)
			return
		}
		qctx, cancel := context.WithTimeout(runCtx, s.opts.WorkerCallTimeout)
		res, qerr := t.client.QueryJob(qctx, connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: runID(job)}))
		cancel()
		switch {
		case qerr == nil && res.Msg.GetStatus() != nil:
			s.started(ctx, slot, job, res.Msg.GetStatus())
			s.leaveQueue(w, metrics.QueuePlaced)
			return
		case connect.CodeOf(qerr) == connect.CodeNotFound:
			s.requeue(runCtx, w, job.ID)
			return
		}
		select {
		case <-time.After(pause):
		case <-runCtx.Done():
			return
		}
		pause = min(2*pause, maxRetryPause)
	}
}

// leaveQueue takes a handed job out of the queue for good.
func (s *Scheduler) leaveQueue(w *waiting, outcome string) {
	s.q.finish(w)
	s.opts.Metrics.JobLeftQueue(w.place.Priority, outcome, time.Since(w.queuedAt))
}

// expireQueued ends the jobs whose queue timeout passed and returns the
// next deadline (zero for none).
func (s *Scheduler) expireQueued(ctx context.Context) time.Time {
	ctx = context.WithoutCancel(ctx)
	expired, next := s.q.expired(time.Now())
	for _, w := range expired {
		reason := fmt.Sprintf("queued %s without a free slot; it never ran", w.queueTimeout)
		if err := s.endQueued(ctx, w, batonv1.JobState_JOB_STATE_TIMED_OUT, "", reason); err != nil {
			s.logger.ErrorContext(ctx, "ending a job whose queue timeout passed failed", "job_id", w.id, "error", err)
			s.q.restore(w, time.Now().Add(time.Second))
			continue
		}
		s.opts.Metrics.JobLeftQueue(w.place.Priority, metrics.QueueTimedOut, time.Since(w.queuedAt))
	}
	return next
}

// endQueued records the end of a job taken out of the queue, which never
// ran, and closes its done channel.
func (s *Scheduler) endQueued(ctx context.Context, w *waiting, state batonv1.JobState, by, reason string) error {
	j, err := s.store.GetJob(ctx, w.id)
	if err != nil {
		return err
	}
	st := proto.CloneOf(j.Status)
	st.State = state
	st.StoppedBy = by
	st.Reason = reason
	st.EndedAt = timestamppb.Now()
	if err := s.store.UpdateJobStatus(ctx, w.id, st); err != nil {
		return err
	}
	close(w.done)
	return nil
}

// inQueue reports whether a job in state st may be in the queue: waiting,
// or being handed to a worker.
func inQueue(st batonv1.JobState) bool {
	return st == batonv1.JobState_JOB_STATE_QUEUED || st == batonv1.JobState_JOB_STATE_PENDING
}

// stopQueued cancels job j if it waits in the queue: it ends STOPPED
// without having run. A job being handed to a worker is waited for, up to
// WorkerCallTimeout: it is either back in the queue, and cancelled there,
// or on its worker. It reports false when j is not waiting (any more):
// the caller stops it as a started job, with j read again.
func (s *Scheduler) stopQueued(ctx context.Context, j store.Job, by string) (*batonv1.JobStatus, store.Job, bool, error) {
	deadline := time.Now().Add(s.opts.WorkerCallTimeout)
	for {
		w, handed := s.q.take(j.ID)
		if w != nil {
			if err := s.endQueued(ctx, w, batonv1.JobState_JOB_STATE_STOPPED, by, "stopped while queued; it never ran"); err != nil {
				s.q.restore(w, time.Time{})
				return nil, j, true, err
			}
			s.opts.Metrics.JobLeftQueue(w.place.Priority, metrics.QueueStopped, time.Since(w.queuedAt))
			cur, err := s.store.GetJob(ctx, j.ID)
			if err != nil {
				return nil, j, true, err
			}
			return withIdentity(cur, cur.Status), cur, true, nil
		}
		if !handed {
			cur, err := s.store.GetJob(ctx, j.ID)
			if err != nil {
				return nil, j, true, err
			}
			j = cur
			if j.Status.GetState() != batonv1.JobState_JOB_STATE_QUEUED {
				return nil, j, false, nil
			}
			// Recorded QUEUED, but not in the queue yet: its StartJob is
			// adding it.
		}
		if time.Now().After(deadline) {
			return nil, j, true, newError(errWorkerUnavailable, "job %s is being handed to a worker; stop it again", j.ID)
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return nil, j, true, ctx.Err()
		}
	}
}

// workerStartOf is the WorkerService call that starts a recorded job.
func workerStartOf(j store.Job) *batonv1.WorkerServiceStartJobRequest {
	spec := j.Status.GetSpec()
	return &batonv1.WorkerServiceStartJobRequest{
		JobId:            runID(j),
		Command:          spec.GetCommand(),
		Path:             spec.GetPath(),
		Args:             spec.GetArgs(),
		Env:              spec.GetEnv(),
		WorkingDir:       spec.GetWorkingDir(),
		Timeout:          spec.GetTimeout(),
		OutputLimit:      spec.GetOutputLimit(),
		MemoryLimitBytes: spec.GetMemoryLimitBytes(),
		CpuLimit:         spec.GetCpuLimit(),
		Labels:           spec.GetLabels(),
		Owner:            j.Owner,
		GroupId:          j.GroupID,
		Script:           j.Script,
		ScriptName:       spec.GetScriptName(),
	}
}

// clip cuts s to at most n bytes, on a character boundary: a protobuf
// string must be valid UTF-8, or the record carrying it cannot be written.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}
