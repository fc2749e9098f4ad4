package scheduler

import (
	"context"
	"errors"
	"strconv"
	"sync"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// This file is where what workers report about their jobs enters the
// scheduler: every report goes through recordReport, and the store's
// ApplyWorkerReport holds the rules of a job's life.

// settleUnreported asks the registering worker after each job the store
// holds as running or starting on it that its registration did not list.
// The registration lists only the jobs a worker runs, so such a job ended
// while the scheduler was not hearing (its end is the answer), or the
// worker no longer knows it (its data was wiped, retention removed it, or
// a scheduler stopped between recording a start and calling the worker):
// LOST, with the reason. A PENDING job whose StartJob this process is still
// carrying out is left to that call. A job whose worker does not answer
// keeps its state until the next registration.
func (s *Scheduler) settleUnreported(ctx context.Context, workerID string, reported map[string]bool) error {
	ctx = context.WithoutCancel(ctx)
	jobs, err := s.store.JobsOnWorker(ctx, workerID, true)
	if err != nil {
		s.logger.ErrorContext(ctx, "listing a worker's jobs failed", "worker_id", workerID, "error", err)
		return unavailable()
	}
	var asks []store.Job
	for _, j := range jobs {
		if reported[runID(j)] {
			continue
		}
		if _, inFlight := s.starting.Load(j.ID); inFlight {
			continue
		}
		asks = append(asks, j)
	}
	if len(asks) == 0 {
		// Nothing to ask: the worker's client is not made (see
		// targetLocked), as a registration of every worker would make
		// them all.
		return nil
	}
	t, ok := s.reg.target(workerID)
	if !ok {
		return nil
	}
	errs := make([]error, len(asks))
	limit := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, j := range asks {
		limit <- struct{}{}
		wg.Go(func() {
			defer func() { <-limit }()
			errs[i] = s.settleOne(ctx, t, j)
		})
	}
	wg.Wait()
	if errors.Join(errs...) != nil {
		return unavailable()
	}
	return nil
}

// settleOne asks worker t after job j and records the answer.
func (s *Scheduler) settleOne(ctx context.Context, t target, j store.Job) error {
	qctx, cancel := context.WithTimeout(ctx, s.opts.WorkerCallTimeout)
	res, err := t.client.QueryJob(qctx, connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: runID(j)}))
	cancel()
	switch {
	case err == nil:
		return s.recordReport(ctx, t.id, res.Msg.GetStatus())
	case connect.CodeOf(err) == connect.CodeNotFound:
		if j.Status.GetState() == batonv1.JobState_JOB_STATE_PENDING && j.StopRequestedBy != "" {
			// Never received, and stopped meanwhile: it ends as a job
			// stopped in the queue does.
			st := proto.CloneOf(j.Status)
			st.State = batonv1.JobState_JOB_STATE_STOPPED
			st.StoppedBy = j.StopRequestedBy
			st.Reason = "stopped before it ran"
			st.EndedAt = timestamppb.Now()
			if err := s.store.UpdateJobStatus(ctx, j.ID, st); err != nil {
				s.logger.ErrorContext(ctx, "ending a stopped job failed", "job_id", j.ID, "error", err)
				return unavailable()
			}
			return nil
		}
		if j.Status.GetState() == batonv1.JobState_JOB_STATE_PENDING {
			// Handed out by the queue, but never received: it waits again.
			requeued, err := s.store.RequeueJob(ctx, j.ID)
			if err == nil {
				if s.q.requeued(requeued) {
					s.opts.Metrics.JobQueued(requeued.Queue.Priority)
				}
				return nil
			}
			if !errors.Is(err, store.ErrConflict) {
				s.logger.ErrorContext(ctx, "putting a job back in the queue failed", "job_id", j.ID, "error", err)
				return unavailable()
			}
			if s.startOrphan(ctx, t, j) {
				return nil
			}
		}
		lost := proto.CloneOf(j.Status)
		lost.State = batonv1.JobState_JOB_STATE_LOST
		lost.Reason = "the worker no longer knows this job"
		if j.Status.GetState() == batonv1.JobState_JOB_STATE_PENDING {
			lost.Reason = "never started: the scheduler stopped before the worker was asked to start it"
		}
		lost.EndedAt = timestamppb.Now()
		if err := s.store.UpdateJobStatus(ctx, j.ID, lost); err != nil {
			s.logger.ErrorContext(ctx, "marking a job lost failed", "job_id", j.ID, "error", err)
			return unavailable()
		}
		return nil
	}
	s.logger.WarnContext(ctx, "could not ask a registering worker about a job", "worker_id", t.id, "job_id", j.ID, "code", connect.CodeOf(err).String())
	return nil
}

// startOrphan starts a job recorded PENDING for worker t by a scheduler
// that stopped (or lost office) before asking the worker, which has not got
// it. Its caller may have been told it started: a StartJob sent again
// with its idempotency key is answered with this job. It is started now,
// under the same id, so that no acknowledged job is lost; a start of it
// still on its way from a deposed leader is refused by the worker, which
// has just answered this leader's newer epoch, and one that arrived first
// is the same job (a worker starts a job id once). One the worker refuses
// stays LOST. It reports whether the job started.
func (s *Scheduler) startOrphan(ctx context.Context, t target, j store.Job) bool {
	if j.Status.GetSpec().GetScriptName() != "" && len(j.Script) == 0 {
		script, err := s.store.JobScript(ctx, j.ID)
		if err != nil || len(script) == 0 {
			s.logger.WarnContext(ctx, "a job a stopped scheduler left unstarted has no script kept", "job_id", j.ID, "error", err)
			return false
		}
		j.Script = script
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.WorkerCallTimeout)
	res, err := t.client.StartJob(cctx, connect.NewRequest(workerStartOf(j)))
	cancel()
	if err != nil {
		s.logger.WarnContext(ctx, "starting a job a stopped scheduler left unstarted failed", "job_id", j.ID, "worker_id", t.id, "error", err)
		return false
	}
	st := withIdentity(j, res.Msg.GetStatus())
	if err := s.store.ApplyWorkerReport(ctx, t.id, runID(j), st); err != nil {
		s.logger.ErrorContext(ctx, "recording a started job failed", "job_id", j.ID, "error", err)
	}
	s.opts.Metrics.JobStarted()
	s.logger.InfoContext(ctx, "started a job a stopped scheduler left unstarted", "job_id", j.ID, "worker_id", t.id)
	return true
}

// unavailable is the answer to a worker whose report could not be stored:
// it keeps the report and sends it again.
func unavailable() error {
	return connect.NewError(connect.CodeUnavailable, errors.New("the scheduler could not record the report; send it again"))
}

// recordReport records what worker workerID reports about one of its
// jobs (see store.ApplyWorkerReport for what a report may change). A
// worker speaks only for the jobs this scheduler placed on it: a report
// about a job placed elsewhere, or one the store does not have (never
// placed, or pruned), changes nothing and is logged. The error is for a
// report that could not be stored: the worker must keep it and send it
// again, so the call that carried it fails as unavailable.
func (s *Scheduler) recordReport(ctx context.Context, workerID string, st *batonv1.JobStatus) error {
	ctx = context.WithoutCancel(ctx)
	err := s.store.ApplyWorkerReport(ctx, workerID, st.GetJobId(), st)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrRetiredRun):
		if !terminal(st.GetState()) {
			go s.stopRetired(workerID, st.GetJobId())
		}
		return nil
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrNotOnWorker):
		s.logger.WarnContext(ctx, "ignored a worker's report about a job not placed on it", "worker_id", workerID, "job_id", st.GetJobId(), "error", err)
		return nil
	}
	s.logger.ErrorContext(ctx, "recording a job reported by its worker failed", "worker_id", workerID, "job_id", st.GetJobId(), "error", err)
	return unavailable()
}

// withIdentity gives a status a worker sent back the identity the
// scheduler's record holds: job, worker, owner, group, spec and creation
// time are the scheduler's, never the worker's word.
func withIdentity(j store.Job, st *batonv1.JobStatus) *batonv1.JobStatus {
	st.JobId, st.WorkerId, st.Owner, st.GroupId = j.ID, j.WorkerID, j.Owner, j.GroupID
	st.Spec = j.Status.GetSpec()
	st.CreatedAt = timestamppb.New(j.CreatedAt)
	// Attempts and what started the job are the scheduler's record too.
	st.Attempt, st.Attempts, st.RunId = j.Status.GetAttempt(), j.Status.GetAttempts(), j.Status.GetRunId()
	st.Schedule, st.FireTime = j.Status.GetSchedule(), j.Status.GetFireTime()
	return st
}

// settleUnknownStarts asks worker workerID about the jobs whose start had
// an unknown outcome there, once at a time per worker: it is called at
// each of its heartbeats and registrations until every one is settled. A
// job the worker has gets its real state; one it does not have never
// started, and says so.
func (s *Scheduler) settleUnknownStarts(workerID string) {
	var ids []string
	s.unsettled.Range(func(id, w any) bool {
		if w.(string) == workerID {
			ids = append(ids, id.(string))
		}
		return true
	})
	if len(ids) == 0 {
		return
	}
	if _, busy := s.settling.LoadOrStore(workerID, struct{}{}); busy {
		return
	}
	go func() {
		defer s.settling.Delete(workerID)
		ctx, cancel := context.WithTimeout(s.stopping, s.opts.WorkerCallTimeout)
		defer cancel()
		t, ok := s.reg.target(workerID)
		if !ok {
			return
		}
		for _, id := range ids {
			res, err := t.client.QueryJob(ctx, connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: id}))
			switch {
			case err == nil:
				if s.recordReport(ctx, workerID, res.Msg.GetStatus()) == nil {
					s.unsettled.Delete(id)
				}
			case connect.CodeOf(err) == connect.CodeNotFound:
				never := &batonv1.JobStatus{JobId: id, State: batonv1.JobState_JOB_STATE_LOST, EndedAt: timestamppb.Now(),
					Reason: "never started: its start had no answer, and worker " + strconv.Quote(workerID) + " does not have it"}
				if s.recordReport(ctx, workerID, never) == nil {
					s.unsettled.Delete(id)
				}
			default:
				return // still unreachable: the next heartbeat tries again
			}
		}
	}()
}

// stopRetired stops run, an attempt still running on worker workerID
// although its job was retried: the worker was cut off, not dead, when the
// attempt was taken for LOST, and the job's next attempt runs elsewhere.
// A stop that fails is tried again at the worker's next report of it.
func (s *Scheduler) stopRetired(workerID, run string) {
	t, ok := s.reg.target(workerID)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(s.stopping, maxCallDuration)
	defer cancel()
	_, err := t.client.StopJob(ctx, connect.NewRequest(&batonv1.WorkerServiceStopJobRequest{JobId: run, StoppedBy: "scheduler: retried elsewhere"}))
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		s.logger.WarnContext(ctx, "stopping an attempt that was retried failed", "worker_id", workerID, "run_id", run, "error", err)
		return
	}
	s.logger.InfoContext(ctx, "stopped an attempt that was retried elsewhere", "worker_id", workerID, "run_id", run)
}
