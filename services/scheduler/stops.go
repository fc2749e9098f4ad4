package scheduler

import (
	"context"
	"errors"
	"sync"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// A stop is what its caller wants, kept until the job's worker carries it
// out: it is recorded before the worker is called, and a stop the worker
// could not be reached for is delivered when it registers again. Nothing a
// caller was told about is dropped by either side restarting.

// errStopKept answers a stop recorded for a worker that cannot take it now.
var errStopKept = errors.New("stop kept for delivery")

// stopOne stops one job. A job that already ended keeps its final status:
// Stop is idempotent. A LOST job is stopped too: LOST only says the
// scheduler stopped hearing about it, and its process may still run.
func (s *Scheduler) stopOne(ctx context.Context, j store.Job) (*batonv1.JobStatus, error) {
	return s.stopAs(ctx, j, ownerName(caller(ctx)))
}

// stopAs stops one job as stopOne does, recording by as who stopped it.
func (s *Scheduler) stopAs(ctx context.Context, j store.Job, by string) (*batonv1.JobStatus, error) {
	if state := j.Status.GetState(); terminal(state) && state != batonv1.JobState_JOB_STATE_LOST {
		return j.Status, nil
	}
	if inQueue(j.Status.GetState()) {
		st, cur, done, err := s.stopQueued(ctx, j, by)
		if done {
			return st, err
		}
		j = cur
		if state := j.Status.GetState(); terminal(state) && state != batonv1.JobState_JOB_STATE_LOST {
			return j.Status, nil
		}
	}
	if err := s.store.RequestStop(ctx, j.ID, by); err != nil {
		return nil, err
	}
	t, ok := s.reg.target(j.WorkerID)
	if !ok || !active(t.state) {
		state := batonv1.WorkerState_WORKER_STATE_UNSPECIFIED
		if ok {
			state = t.state
		}
		return nil, newError(errStopKept, "worker %q is %s: the stop of job %s is kept and carried out when the worker registers again", j.WorkerID, stateWord(state), j.ID)
	}
	return s.deliverStop(ctx, t, j, by)
}

// deliverStop asks worker t to stop job j and records the answer. A worker
// that no longer knows the job has nothing to stop: the job keeps its
// stored status and the stop is dropped.
func (s *Scheduler) deliverStop(ctx context.Context, t target, j store.Job, by string) (*batonv1.JobStatus, error) {
	res, err := t.client.StopJob(ctx, connect.NewRequest(&batonv1.WorkerServiceStopJobRequest{JobId: runID(j), StoppedBy: by}))
	if connect.CodeOf(err) == connect.CodeNotFound && j.Status.GetState() == batonv1.JobState_JOB_STATE_LOST {
		if err := s.store.ClearStop(ctx, j.ID); err != nil {
			s.logger.ErrorContext(ctx, "dropping a stop failed", "job_id", j.ID, "error", err)
		}
		return j.Status, nil
	}
	if err != nil {
		return nil, &workerError{worker: t.id, addr: t.addr, err: err}
	}
	st := withIdentity(j, res.Msg.GetStatus())
	if err := s.store.ApplyWorkerReport(ctx, j.WorkerID, runID(j), st); err != nil {
		s.logger.ErrorContext(ctx, "recording a stopped job failed", "job_id", j.ID, "error", err)
	}
	return st, nil
}

// deliverStops carries out the stops kept for a worker that has just
// registered. It runs apart from the registration (a stop may take the
// worker's whole grace period); a stop that fails again stays kept.
func (s *Scheduler) deliverStops(workerID string) {
	ctx, cancel := context.WithTimeout(context.Background(), maxCallDuration)
	defer cancel()
	defer context.AfterFunc(s.stopping, cancel)()
	jobs, err := s.store.PendingStops(ctx, workerID)
	if err != nil {
		s.logger.ErrorContext(ctx, "listing kept stops failed", "worker_id", workerID, "error", err)
		return
	}
	if len(jobs) == 0 {
		return // and the worker's client is not made for nothing
	}
	t, ok := s.reg.target(workerID)
	if !ok {
		return
	}
	limit := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, j := range jobs {
		limit <- struct{}{}
		wg.Go(func() {
			defer func() { <-limit }()
			if _, err := s.deliverStop(ctx, t, j, j.StopRequestedBy); err != nil {
				s.logger.WarnContext(ctx, "a kept stop could not be delivered; it stays kept", "worker_id", workerID, "job_id", j.ID, "error", err)
				return
			}
			s.logger.InfoContext(ctx, "delivered a kept stop", "worker_id", workerID, "job_id", j.ID, "stopped_by", j.StopRequestedBy)
		})
	}
	wg.Wait()
}
