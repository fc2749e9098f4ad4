package scheduler

import (
	"context"
	"errors"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler/store"
)

// handler implements SchedulerService on a Scheduler.
type handler struct {
	s *Scheduler
}

var _ batonv1connect.SchedulerServiceHandler = (*handler)(nil)

// ttl is how long a worker may stay silent after a heartbeat.
func (s *Scheduler) ttl() time.Duration { return s.opts.HeartbeatInterval + s.opts.HeartbeatGrace }

// RegisterWorker admits a worker (again) and reconciles its jobs.
func (h *handler) RegisterWorker(ctx context.Context, req *connect.Request[batonv1.RegisterWorkerRequest]) (*connect.Response[batonv1.RegisterWorkerResponse], error) {
	s := h.s
	msg := req.Msg
	id := msg.GetName()
	var running int32
	for _, st := range msg.GetJobs() {
		if !terminal(st.GetState()) {
			running++
		}
	}
	m := s.reg.getOrCreate(id)
	defer s.reg.beginReport(m, s.ttl())()
	m.opMu.Lock()
	s.reg.register(m, msg, running, time.Now().Add(s.ttl()))
	reported, err := s.recordRegistration(ctx, id, msg.GetJobs())
	if err == nil {
		s.persist(ctx, m)
	}
	m.opMu.Unlock()
	// Asking the worker after the jobs it left out means calls to it: they
	// are made without m.opMu, so that a slow worker holds up neither a
	// DrainWorker of it nor its DOWN transition.
	if err == nil {
		err = s.settleUnreported(ctx, id, reported)
	}
	if err != nil {
		// Not admitted after all: its next heartbeat is told to register
		// again, and the reconciliation is tried again then.
		m.opMu.Lock()
		s.reg.unadmit(m)
		m.opMu.Unlock()
		return nil, err
	}
	go s.deliverStops(id)
	s.settleUnknownStarts(id)
	s.logger.InfoContext(ctx, "worker registered", "worker_id", id, "address", msg.GetAddress(), "jobs", len(msg.GetJobs()))
	return connect.NewResponse(&batonv1.RegisterWorkerResponse{
		WorkerId:          id,
		HeartbeatInterval: durationpb.New(s.opts.HeartbeatInterval),
		JobsWaiting:       !s.q.empty(),
	}), nil
}

// recordRegistration records the jobs a registering worker reports and
// returns their ids.
func (s *Scheduler) recordRegistration(ctx context.Context, id string, jobs []*batonv1.JobStatus) (map[string]bool, error) {
	reported := make(map[string]bool, len(jobs))
	for _, st := range jobs {
		reported[st.GetJobId()] = true // the attempt's run id
		if err := s.recordReport(ctx, id, st); err != nil {
			return nil, err
		}
	}
	return reported, nil
}

// DeregisterWorker marks a worker LEFT, or RESTARTING when it says it is
// restarting. Either way its jobs keep their last reported state: a
// leaving worker reported their ends in its final heartbeat, and a
// restarting one leaves them running until it is back, or RestartGrace
// has passed.
func (h *handler) DeregisterWorker(ctx context.Context, req *connect.Request[batonv1.DeregisterWorkerRequest]) (*connect.Response[batonv1.DeregisterWorkerResponse], error) {
	s := h.s
	id := req.Msg.GetWorkerId()
	m := s.reg.get(id)
	if m == nil {
		return nil, mapError(errWorkerNotFound(id))
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	restarting := req.Msg.GetRestarting()
	var ok bool
	if restarting {
		_, ok = s.reg.restart(id, s.opts.RestartGrace)
	} else {
		_, ok = s.reg.leave(id)
	}
	if !ok {
		return nil, mapError(errWorkerNotFound(id))
	}
	s.persist(ctx, m)
	if restarting {
		s.logger.InfoContext(ctx, "worker restarting", "worker_id", id, "restart_grace", s.opts.RestartGrace)
	} else {
		s.logger.InfoContext(ctx, "worker left", "worker_id", id)
	}
	return connect.NewResponse(&batonv1.DeregisterWorkerResponse{}), nil
}

// Heartbeat keeps a registered worker alive and records its job changes.
// A worker this process has not admitted (unknown, DOWN, LEFT, RESTARTING,
// or known only from the store after a restart) is told NotFound, so that
// it registers again with its whole job table.
func (h *handler) Heartbeat(ctx context.Context, req *connect.Request[batonv1.HeartbeatRequest]) (*connect.Response[batonv1.HeartbeatResponse], error) {
	s := h.s
	s.opts.Metrics.HeartbeatReceived()
	id := req.Msg.GetWorkerId()
	m := s.reg.get(id)
	if m == nil {
		return nil, mapError(newError(errNotRegistered, "worker %q is not registered; register again", id))
	}
	defer s.reg.beginReport(m, s.ttl())()
	m.opMu.Lock()
	defer m.opMu.Unlock()
	changed := make([]string, 0, len(req.Msg.GetChanges()))
	for _, st := range req.Msg.GetChanges() {
		changed = append(changed, st.GetJobId())
	}
	state, ok := s.reg.heartbeat(m, req.Msg.GetRunningJobs(), changed, time.Now().Add(s.ttl()))
	if !ok {
		return nil, mapError(newError(errNotRegistered, "worker %q is not registered; register again", id))
	}
	for _, st := range req.Msg.GetChanges() {
		if err := s.recordReport(ctx, id, st); err != nil {
			return nil, err
		}
		// Settled by its own worker's word only.
		s.unsettled.CompareAndDelete(st.GetJobId(), id)
	}
	s.settleUnknownStarts(id)
	// The roster entry is not written back: a heartbeat changes only the
	// last-heartbeat time and the running count, which live in memory (10k
	// workers every 5 s would be 2,000 store writes a second). State
	// changes are persisted where they happen: register, drain, leave,
	// restart, DOWN.
	return connect.NewResponse(&batonv1.HeartbeatResponse{
		HeartbeatInterval: durationpb.New(s.opts.HeartbeatInterval),
		State:             state,
		JobsWaiting:       !s.q.empty(),
	}), nil
}

// StartJob places and starts a job, or a group of jobs for a fan-out.
func (h *handler) StartJob(ctx context.Context, req *connect.Request[batonv1.StartJobRequest]) (*connect.Response[batonv1.StartJobResponse], error) {
	res, err := h.s.startJob(ctx, req.Msg, ownerName(caller(ctx)))
	if err != nil {
		return nil, mapError(err)
	}
	return connect.NewResponse(res), nil
}

// StopJob stops a job, or every job of a group, through its worker.
//
// A stop once received is carried out even if the caller hangs up (a CLI
// detaching on a second Ctrl-C closes its connection right after the
// request is written): the Detach interceptor gives this handler a context
// the caller's cancellation does not reach, from the first store read to
// the worker's answer. Stopping may rightly take the worker's whole grace
// period, so its bound is the longest call the scheduler serves.
func (h *handler) StopJob(ctx context.Context, req *connect.Request[batonv1.StopJobRequest]) (*connect.Response[batonv1.StopJobResponse], error) {
	s := h.s
	if gid := req.Msg.GetGroupId(); gid != "" {
		jobs, err := s.groupJobs(ctx, gid)
		if err != nil {
			return nil, mapError(err)
		}
		out, err := each(jobs, func(j store.Job) (*batonv1.JobStatus, error) { return s.stopOne(ctx, j) })
		if err != nil {
			return nil, mapError(err)
		}
		res := &batonv1.StopJobResponse{Jobs: out}
		if len(out) > 0 {
			res.Status = out[0]
		}
		return connect.NewResponse(res), nil
	}
	j, err := s.jobFor(ctx, req.Msg.GetJobId(), req.Msg.GetWorkerId())
	if err != nil {
		return nil, mapError(err)
	}
	st, err := s.stopOne(ctx, j)
	if err != nil {
		return nil, mapError(err)
	}
	return connect.NewResponse(&batonv1.StopJobResponse{Status: st, Jobs: []*batonv1.JobStatus{st}}), nil
}

// jobFor returns job id, checking that it runs on worker when one is given.
func (s *Scheduler) jobFor(ctx context.Context, id, worker string) (store.Job, error) {
	j, err := s.store.GetJob(ctx, id)
	if err != nil {
		return store.Job{}, err
	}
	if !sees(caller(ctx), j.Owner) {
		return store.Job{}, hidden("job", id)
	}
	if worker != "" && worker != j.WorkerID {
		return store.Job{}, newError(errWrongWorker, "job %s is not on worker %q", id, worker)
	}
	return j, nil
}

// groupJobs returns a group's jobs, oldest first.
func (s *Scheduler) groupJobs(ctx context.Context, id string) ([]store.Job, error) {
	g, err := s.store.GetGroup(ctx, id)
	if err != nil {
		return nil, err
	}
	if !sees(caller(ctx), g.Owner) {
		return nil, hidden("group", id)
	}
	jobs := make([]store.Job, 0, len(g.JobIDs))
	for _, jid := range g.JobIDs {
		j, err := s.store.GetJob(ctx, jid)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, j)
	}
	return jobs, nil
}

// each runs fn on every job concurrently and returns the results in order,
// or the first error.
func each(jobs []store.Job, fn func(store.Job) (*batonv1.JobStatus, error)) ([]*batonv1.JobStatus, error) {
	out := make([]*batonv1.JobStatus, len(jobs))
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Go(func() { out[i], errs[i] = fn(j) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// QueryJob reports a job's status, fresh from its worker when it can be
// reached, or a group's aggregate.
func (h *handler) QueryJob(ctx context.Context, req *connect.Request[batonv1.QueryJobRequest]) (*connect.Response[batonv1.QueryJobResponse], error) {
	s := h.s
	if gid := req.Msg.GetGroupId(); gid != "" {
		jobs, err := s.groupJobs(ctx, gid)
		if err != nil {
			return nil, mapError(err)
		}
		out, _ := each(jobs, func(j store.Job) (*batonv1.JobStatus, error) {
			return redacted(caller(ctx), s.currentStatus(ctx, j)), nil
		})
		res := &batonv1.QueryJobResponse{Jobs: out}
		res.Done, res.Error, res.ErrorText = groupSummary(out)
		if len(out) > 0 {
			res.Status = out[0]
		}
		return connect.NewResponse(res), nil
	}
	j, err := s.jobFor(ctx, req.Msg.GetJobId(), req.Msg.GetWorkerId())
	if err != nil {
		return nil, mapError(err)
	}
	st := redacted(caller(ctx), s.currentStatus(ctx, j))
	res := &batonv1.QueryJobResponse{Status: st}
	res.Done, res.Error, res.ErrorText = summary(st)
	return connect.NewResponse(res), nil
}

// currentStatus asks the job's worker for its status when the worker is
// READY or DRAINING, and falls back to the stored status otherwise.
func (s *Scheduler) currentStatus(ctx context.Context, j store.Job) *batonv1.JobStatus {
	st := j.Status
	if terminal(st.GetState()) && st.GetState() != batonv1.JobState_JOB_STATE_LOST {
		return st
	}
	if st.GetState() == batonv1.JobState_JOB_STATE_QUEUED {
		return s.queuedStatus(j)
	}
	t, ok := s.reg.target(j.WorkerID)
	if ok && t.state == batonv1.WorkerState_WORKER_STATE_DOWN && !terminal(st.GetState()) {
		// The roster turns DOWN just before the store marks the worker's
		// jobs LOST: never report such a job as still running meanwhile.
		lost := proto.CloneOf(st)
		lost.State = batonv1.JobState_JOB_STATE_LOST
		lost.Reason = "worker down: no heartbeat"
		return lost
	}
	if !ok || !active(t.state) {
		return st
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.WorkerCallTimeout)
	defer cancel()
	res, err := t.client.QueryJob(cctx, connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: runID(j)}))
	if err != nil || res.Msg.GetStatus() == nil {
		s.logger.DebugContext(ctx, "worker did not report a job; using the stored status", "worker_id", t.id, "job_id", j.ID, "code", connect.CodeOf(err).String())
		return st
	}
	fresh := withIdentity(j, res.Msg.GetStatus())
	if err := s.store.ApplyWorkerReport(context.WithoutCancel(ctx), j.WorkerID, runID(j), fresh); err != nil {
		s.logger.ErrorContext(ctx, "recording a job's status failed", "job_id", j.ID, "error", err)
	}
	if terminal(fresh.GetState()) && s.retried(ctx, j) {
		// The attempt's end was recorded as a retry: the job waits.
		if cur, err := s.store.GetJob(ctx, j.ID); err == nil {
			return s.queuedStatus(cur)
		}
	}
	return fresh
}

// ListJobs lists jobs from the store, newest first.
func (h *handler) ListJobs(ctx context.Context, req *connect.Request[batonv1.ListJobsRequest]) (*connect.Response[batonv1.ListJobsResponse], error) {
	msg := req.Msg
	owner := msg.GetOwner()
	p := caller(ctx)
	if !seesAll(p) {
		if owner != "" && owner != ownerName(p) {
			// Another user's jobs: there are none this caller may see.
			return connect.NewResponse(&batonv1.ListJobsResponse{}), nil
		}
		owner = ownerName(p)
	}
	jobs, next, err := h.s.store.ListJobs(ctx, store.JobFilter{
		WorkerID:  msg.GetWorkerId(),
		Owner:     owner,
		GroupID:   msg.GetGroupId(),
		States:    msg.GetStates(),
		PageSize:  int(msg.GetPageSize()),
		PageToken: msg.GetPageToken(),
	})
	if err != nil {
		return nil, mapError(err)
	}
	res := &batonv1.ListJobsResponse{NextPageToken: next, Jobs: make([]*batonv1.JobStatus, 0, len(jobs))}
	for _, j := range jobs {
		st := j.Status
		if st.GetState() == batonv1.JobState_JOB_STATE_QUEUED {
			st = h.s.queuedStatus(j)
		}
		res.Jobs = append(res.Jobs, redacted(p, st))
	}
	return connect.NewResponse(res), nil
}

// ListWorkers lists the roster by name, from the roster view.
func (h *handler) ListWorkers(_ context.Context, req *connect.Request[batonv1.ListWorkersRequest]) (*connect.Response[batonv1.ListWorkersResponse], error) {
	q := listQuery{states: req.Msg.GetStates(), selector: req.Msg.GetSelector(), pageSize: int(req.Msg.GetPageSize())}
	if tok := req.Msg.GetPageToken(); tok != "" {
		after, err := parsePageToken(tok)
		if err != nil {
			return nil, mapError(err)
		}
		q.after = after
	}
	res := h.s.view.list(h.s.reg, q)
	if h.s.opts.Epoch > 0 {
		// The cached page is shared: the leader's name goes on a copy.
		res = proto.CloneOf(res)
		res.Leader, res.Epoch = h.s.opts.Address, h.s.opts.Epoch
	}
	return connect.NewResponse(res), nil
}

// DrainWorker stops new placements on a worker.
func (h *handler) DrainWorker(ctx context.Context, req *connect.Request[batonv1.DrainWorkerRequest]) (*connect.Response[batonv1.DrainWorkerResponse], error) {
	id := req.Msg.GetWorkerId()
	m := h.s.reg.get(id)
	if m == nil {
		return nil, mapError(errWorkerNotFound(id))
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if _, err := h.s.reg.drain(id); err != nil {
		return nil, mapError(err)
	}
	h.s.persist(ctx, m)
	return connect.NewResponse(&batonv1.DrainWorkerResponse{Worker: workerToProto(h.s.reg.snapshot(m))}), nil
}
