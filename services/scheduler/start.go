package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// The path of a StartJob: a key used before answers with what it made;
// placement reserves a slot on each chosen worker; each job is recorded
// PENDING, then started on its worker, then recorded as the worker
// answered, and its slot confirmed. A fan-out does the same for every
// worker under one group, which owns the key.

func (s *Scheduler) startJob(ctx context.Context, req *batonv1.StartJobRequest, owner string) (*batonv1.StartJobResponse, error) {
	if err := checkScript(req); err != nil {
		return nil, err
	}
	if err := checkKey(req); err != nil {
		return nil, err
	}
	if err := s.checkPriority(ctx, req); err != nil {
		return nil, err
	}
	key := req.GetIdempotencyKey()
	if key != "" {
		res, err := s.byKey(ctx, owner, key)
		if res != nil || err != nil {
			return res, err
		}
	}
	if err := s.checkAfter(ctx, req, owner); err != nil {
		return nil, err
	}
	if req.GetArray() != nil {
		return s.startArray(ctx, req, owner, key)
	}
	if req.GetAll() {
		return s.startGroup(ctx, req, owner, key)
	}
	st, err := s.startSingle(ctx, req, owner, key)
	if errors.Is(err, store.ErrConflict) && key != "" {
		// A concurrent call with the same key won.
		j, gerr := s.store.GetJobByIdempotencyKey(ctx, owner, key)
		if gerr != nil {
			return nil, gerr
		}
		return s.existing(ctx, j)
	}
	if err != nil {
		return nil, err
	}
	return &batonv1.StartJobResponse{JobId: st.GetJobId(), Jobs: []*batonv1.JobStatus{st}}, nil
}

// startSingle starts one job at once when a slot is free, or queues it
// when it may wait: behind the jobs already waiting, or because no slot
// fits it now.
func (s *Scheduler) startSingle(ctx context.Context, req *batonv1.StartJobRequest, owner, key string) (*batonv1.JobStatus, error) {
	if len(req.GetAfter()) > 0 || waits(req) && !s.q.empty() {
		st, _, err := s.enqueue(ctx, req, owner, "", key, req.GetWorkerId())
		return st, err
	}
	slots, err := s.reg.place(req)
	if err == nil {
		// Every slot no start confirmed goes back, whatever path returns.
		defer releaseAll(slots)
		var st *batonv1.JobStatus
		if st, err = s.startOne(ctx, slots[0], req, owner, "", key); err == nil {
			return st, nil
		}
	}
	if waits(req) && queueable(err) {
		st, _, err := s.enqueue(ctx, req, owner, "", key, req.GetWorkerId())
		return st, err
	}
	return nil, err
}

// startGroup starts a fan-out: a job on every matching worker, under one
// group that owns the key. A request that may wait queues the job of each
// worker that is full on that worker.
func (s *Scheduler) startGroup(ctx context.Context, req *batonv1.StartJobRequest, owner, key string) (*batonv1.StartJobResponse, error) {
	slots, full, err := s.reg.placeAll(req.GetSelector(), waits(req))
	if err != nil {
		return nil, err
	}
	defer releaseAll(slots)

	group, existing, err := s.newGroup(ctx, owner, key)
	if existing != nil || err != nil {
		return existing, err
	}
	workers := make([]string, 0, len(slots)+len(full))
	for _, slot := range slots {
		workers = append(workers, slot.id)
	}
	workers = append(workers, full...)
	results := make([]*batonv1.JobStatus, len(workers))
	errs := make([]error, len(workers))
	var wg sync.WaitGroup
	for i, slot := range slots {
		wg.Go(func() {
			results[i], errs[i] = s.startOne(ctx, slot, req, owner, group, "")
			if errs[i] != nil && waits(req) && queueable(errs[i]) {
				results[i], _, errs[i] = s.enqueue(ctx, req, owner, group, "", slot.id)
			}
		})
	}
	for i, worker := range full {
		i += len(slots)
		wg.Go(func() { results[i], _, errs[i] = s.enqueue(ctx, req, owner, group, "", worker) })
	}
	wg.Wait()
	res := &batonv1.StartJobResponse{GroupId: group}
	var firstErr error
	for i, st := range results {
		if errs[i] != nil {
			firstErr = cmpErr(firstErr, errs[i])
			s.logger.WarnContext(ctx, "fan-out job not started", "worker_id", workers[i], "group_id", group, "error", errs[i])
			continue
		}
		res.Jobs = append(res.Jobs, st)
	}
	// The jobs in worker order, as they were before some could queue.
	slices.SortFunc(res.Jobs, func(a, b *batonv1.JobStatus) int { return cmp.Compare(a.GetWorkerId(), b.GetWorkerId()) })
	if len(res.Jobs) == 0 {
		return nil, firstErr
	}
	res.JobId = res.Jobs[0].GetJobId()
	return res, nil
}

// newGroup records a new group of owner's that owns key. The key belongs
// to the group: of concurrent requests with one key, one creates the group
// and starts its jobs; the others get what it started (existing).
func (s *Scheduler) newGroup(ctx context.Context, owner, key string) (group string, existing *batonv1.StartJobResponse, err error) {
	gid, err := uuid.NewV7()
	if err != nil {
		return "", nil, err
	}
	group = gid.String()
	err = s.store.CreateGroup(ctx, store.Group{ID: group, Owner: owner, IdempotencyKey: key, CreatedAt: time.Now()})
	if errors.Is(err, store.ErrConflict) && key != "" {
		g, gerr := s.store.GetGroupByIdempotencyKey(ctx, owner, key)
		if gerr != nil {
			return "", nil, gerr
		}
		existing, err = s.existingGroup(ctx, g)
		return "", existing, err
	}
	return group, nil, err
}

// checkKey refuses the idempotency keys schedules give their fires' jobs:
// a caller's key must never stand for a fire.
func checkKey(req *batonv1.StartJobRequest) error {
	key := req.GetIdempotencyKey()
	if strings.HasPrefix(key, "schedule/") || strings.HasPrefix(key, "schedule-manual/") {
		return newError(errBadSchedule, "idempotency_key: keys beginning schedule/ are the scheduler's, for its schedules' fires")
	}
	return nil
}

func cmpErr(first, next error) error {
	if first != nil {
		return first
	}
	return next
}

// byKey answers a StartJob whose key the owner used before with the job
// or group the first call created, or nil when the key is new.
func (s *Scheduler) byKey(ctx context.Context, owner, key string) (*batonv1.StartJobResponse, error) {
	j, err := s.store.GetJobByIdempotencyKey(ctx, owner, key)
	if err == nil {
		return s.existing(ctx, j)
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	g, err := s.store.GetGroupByIdempotencyKey(ctx, owner, key)
	if err == nil {
		return s.existingGroup(ctx, g)
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	return nil, nil
}

// existing answers a retried StartJob with the job the first call created.
func (s *Scheduler) existing(ctx context.Context, j store.Job) (*batonv1.StartJobResponse, error) {
	if j.GroupID != "" {
		g, err := s.store.GetGroup(ctx, j.GroupID)
		if err != nil {
			return nil, err
		}
		return s.existingGroup(ctx, g)
	}
	return &batonv1.StartJobResponse{JobId: j.ID, Jobs: []*batonv1.JobStatus{s.queuedStatus(j)}}, nil
}

// existingGroup answers a retried fan-out with the group the first call
// created and the jobs it has so far (a call that lost the race for the
// key may see the group before all of its jobs are recorded).
func (s *Scheduler) existingGroup(ctx context.Context, g store.Group) (*batonv1.StartJobResponse, error) {
	jobs, _, err := s.store.ListJobs(ctx, store.JobFilter{GroupID: g.ID, PageSize: store.MaxPageSize})
	if err != nil {
		return nil, err
	}
	res := &batonv1.StartJobResponse{GroupId: g.ID}
	for i := len(jobs) - 1; i >= 0; i-- { // oldest first, as the first answer had them
		res.Jobs = append(res.Jobs, jobs[i].Status)
	}
	if len(res.Jobs) > 0 {
		res.JobId = res.Jobs[0].GetJobId()
	}
	return res, nil
}

// startOne records a PENDING job and asks the slot's worker to start it.
// The record comes first so that a job never runs unknown to the store; if
// the worker refuses, the record is deleted again. The slot is confirmed
// when the job started; otherwise the caller's deferred release gives it
// back.
func (s *Scheduler) startOne(ctx context.Context, slot *reservation, req *batonv1.StartJobRequest, owner, group, key string) (*batonv1.JobStatus, error) {
	t := slot.target
	job, forget, err := s.recordPending(ctx, t, req, owner, group, key)
	if err != nil {
		return nil, err
	}
	defer forget()
	cctx, cancel := context.WithTimeout(ctx, s.opts.WorkerCallTimeout)
	res, err := t.client.StartJob(cctx, connect.NewRequest(workerStartRequest(req, job.ID, owner, group)))
	cancel()
	var st *batonv1.JobStatus
	if err == nil {
		st = res.Msg.GetStatus()
	} else if st, err = s.settleStart(ctx, t, job, err); err != nil {
		return nil, err
	}
	return s.started(ctx, slot, job, st), nil
}

// recordPending records a new PENDING job for worker t. Until forget is
// called the job counts as being started, so that a registration of t in
// the meantime leaves it to this start (see settleUnreported).
func (s *Scheduler) recordPending(ctx context.Context, t target, req *batonv1.StartJobRequest, owner, group, key string) (job store.Job, forget func(), err error) {
	uid, err := uuid.NewV7()
	if err != nil {
		return store.Job{}, nil, err
	}
	id := uid.String()
	s.starting.Store(id, struct{}{})
	forget = func() { s.starting.Delete(id) }
	job = store.Job{
		ID: id, WorkerID: t.id, Owner: owner, GroupID: group, IdempotencyKey: key, CreatedAt: time.Now(),
		Status: &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_PENDING, Spec: specOf(req)},
	}
	// Kept until the job ends: for its later attempts, which the queue
	// starts, and for a start that a crash or a change of leader cuts
	// short before the worker got it (see startOrphan).
	job.Script = req.GetScript()
	// The caller's hang-up must not cut the write short: etcd may apply
	// it all the same, and a job recorded while its start gave up would
	// stay PENDING with nobody to carry it through. The store bounds its
	// own calls.
	if err := s.store.CreateJob(context.WithoutCancel(ctx), job); err != nil {
		forget()
		return store.Job{}, nil, err
	}
	return job, forget, nil
}

// started records what the worker answered for a job it started (or was
// found to have started), confirms the job's slot and returns the status
// with the scheduler's identity fields.
func (s *Scheduler) started(ctx context.Context, slot *reservation, job store.Job, st *batonv1.JobStatus) *batonv1.JobStatus {
	if st == nil {
		st = &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING}
	}
	slot.confirm(runID(job))
	st = withIdentity(job, st)
	if err := s.store.ApplyWorkerReport(context.WithoutCancel(ctx), slot.target.id, runID(job), st); err != nil {
		s.logger.ErrorContext(ctx, "recording a started job failed", "job_id", job.ID, "error", err)
	}
	s.opts.Metrics.JobStarted()
	return st
}

// settleStart decides what a failed StartJob call to a worker left behind.
// A refusal (bad spec, full, …) started nothing: the record goes. Otherwise
// (timeout, connection lost) the worker may have started the job, so it is
// asked; if it cannot answer, the record stays as LOST, which the worker's
// next report revives, and the idempotency key keeps pointing at it: a
// retried StartJob never starts a second process.
func (s *Scheduler) settleStart(ctx context.Context, t target, job store.Job, callErr error) (*batonv1.JobStatus, error) {
	ctx = context.WithoutCancel(ctx)
	refused := false
	switch connect.CodeOf(callErr) {
	case connect.CodeInvalidArgument, connect.CodeNotFound, connect.CodePermissionDenied,
		connect.CodeFailedPrecondition, connect.CodeResourceExhausted, connect.CodeAlreadyExists:
		refused = true
	default:
		qctx, cancel := context.WithTimeout(ctx, s.opts.WorkerCallTimeout)
		res, qerr := t.client.QueryJob(qctx, connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: runID(job)}))
		cancel()
		switch {
		case qerr == nil && res.Msg.GetStatus() != nil:
			return res.Msg.GetStatus(), nil
		case connect.CodeOf(qerr) == connect.CodeNotFound:
			refused = true
		}
	}
	if refused {
		if err := s.store.DeleteJob(ctx, job.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.logger.ErrorContext(ctx, "deleting a job the worker did not start failed", "job_id", job.ID, "error", err)
		}
		return nil, &workerError{worker: t.id, addr: t.addr, err: callErr}
	}
	lost := proto.CloneOf(job.Status)
	lost.JobId, lost.WorkerId, lost.Owner, lost.GroupId = job.ID, t.id, job.Owner, job.GroupID
	lost.State = batonv1.JobState_JOB_STATE_LOST
	lost.Reason = fmt.Sprintf("start outcome unknown: worker %q at %s did not answer (%s); it is asked again at its next heartbeat", t.id, t.addr, connect.CodeOf(callErr))
	if err := s.store.UpdateJobStatus(ctx, job.ID, lost); err != nil {
		s.logger.ErrorContext(ctx, "recording a job with an unknown start failed", "job_id", job.ID, "error", err)
	}
	s.unsettled.Store(job.ID, t.id)
	return nil, &workerError{worker: t.id, addr: t.addr, err: callErr}
}
