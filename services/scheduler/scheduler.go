// Package scheduler serves SchedulerService: it keeps the roster of workers
// from their registrations and heartbeats, marks silent workers DOWN and
// their jobs LOST, places jobs on workers, forwards job calls to the worker
// that owns the job and relays output streams. Workers are reached only
// through the generated WorkerService client.
package scheduler

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/internal/epoch"
	"github.com/baton-run/baton/services/internal/interceptors"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
)

// Defaults of Options.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultHeartbeatGrace    = 10 * time.Second
	DefaultFailoverGrace     = 5 * time.Minute
	DefaultRestartGrace      = time.Minute
	DefaultRetention         = 24 * time.Hour
	DefaultWorkerCallTimeout = 30 * time.Second
	DefaultMaxQueuedPerOwner = 100000
	DefaultMaxUserPriority   = DefaultPriority
	maxCallDuration          = 5 * time.Minute
	pruneEvery               = time.Hour
)

// Options configure a Scheduler.
type Options struct {
	// Store keeps workers and jobs; required. The caller closes it, after
	// Run has returned.
	Store store.Store
	// HeartbeatInterval is the interval workers are told to heartbeat at.
	HeartbeatInterval time.Duration
	// HeartbeatGrace is how long past an interval a worker may stay silent
	// before it is marked DOWN.
	HeartbeatGrace time.Duration
	// FailoverGrace is how long workers known from the store have to
	// register again after the scheduler starts, before any is marked DOWN.
	FailoverGrace time.Duration
	// RestartGrace is how long a worker that deregistered for a restart
	// stays RESTARTING, its jobs kept as they are, before it is marked DOWN
	// and its jobs LOST.
	RestartGrace time.Duration
	// Retention is how long ended jobs are kept.
	Retention time.Duration
	// WorkerCallTimeout bounds unary calls to a worker that have no
	// reason to wait (start, query).
	WorkerCallTimeout time.Duration
	// MaxQueuedPerOwner is the most jobs one owner may have waiting in
	// the queue; more are refused with resource_exhausted. Zero means
	// DefaultMaxQueuedPerOwner, negative no limit.
	MaxQueuedPerOwner int
	// MaxSchedulesPerOwner is the most schedules one owner may define;
	// more are refused with resource_exhausted. Zero means
	// DefaultMaxSchedulesPerOwner, negative no limit.
	MaxSchedulesPerOwner int
	// MaxUserPriority is the highest priority a caller who is not an
	// admin may give a job; higher is permission_denied. Zero means
	// DefaultMaxUserPriority; negative, 0.
	MaxUserPriority int32
	// HTTPClient dials workers over h2c; one pooled client for all of
	// them. Default: serving.NewHTTPClient(nil). Ignored with WorkerTLS.
	HTTPClient *http.Client
	// WorkerTLS, if set, dials workers over mutual TLS: each worker gets
	// its own pooled client that accepts only the identity
	// spiffe://<cluster>/worker/<its name>.
	WorkerTLS *identity.Credentials
	// Audit receives one line per mutating call and per denial; nil
	// records nothing.
	Audit *identity.AuditLog
	// Interceptors run innermost, after authorization and validation,
	// just around the handler (metrics, tests).
	Interceptors []connect.Interceptor
	// Logger receives the access log and diagnostics. Default: discard.
	Logger *slog.Logger
	// Metrics, if set, records the scheduler's metrics; serve its Handler
	// at /metrics. Nil records nothing. One Metrics serves one Scheduler.
	Metrics *metrics.Scheduler
	// Epoch, if positive, is this scheduler's term as the leader of a
	// replicated cluster: every call to a worker carries it (header
	// Baton-Epoch), and a worker that has seen a newer one refuses the
	// call. Zero is a scheduler that runs alone, unfenced.
	Epoch int64
	// Address is where workers and clients reach this scheduler; with an
	// Epoch, ListWorkers names it as the leader.
	Address string
}

// Scheduler is the scheduler's service: the roster, placement, forwarding
// and the SchedulerService handler. Its methods are safe for concurrent use.
type Scheduler struct {
	opts    Options
	store   store.Store
	reg     *registry
	logger  *slog.Logger
	handler http.Handler
	health  *grpchealth.StaticChecker
	view    rosterView
	// stopping ends every relayed output stream when the scheduler shuts
	// down: streams would otherwise hold the listener's drain open.
	stopping    context.Context
	stopStreams context.CancelFunc
	// starting holds the ids of jobs whose StartJob this process is still
	// carrying out: any other PENDING job was left by a scheduler that
	// stopped between recording it and hearing the worker's answer.
	starting sync.Map
	// q holds the jobs waiting for a slot.
	q *queue
	// unsettled maps the jobs whose start's outcome is unknown (the
	// worker did not answer) to their worker, which is asked about them
	// at its next heartbeat; settling marks a worker being asked.
	unsettled sync.Map
	settling  sync.Map
	// checks bounds the CheckWorkerAddress calls in progress.
	checks chan struct{}
	// ends carries the store's job ends to followEnds.
	ends *endFeed
	// scheds holds the schedules and their next fire times (schedules.go).
	scheds *scheduleSet
}

// New loads the roster from the store and prepares the handler. Workers the
// store holds as READY, DRAINING or RESTARTING get FailoverGrace to register
// again: a scheduler restart alone marks no worker DOWN.
func New(ctx context.Context, opts Options) (*Scheduler, error) {
	if opts.Store == nil {
		return nil, errors.New("scheduler: Options.Store is required")
	}
	if opts.Epoch < 0 {
		return nil, errors.New("scheduler: Options.Epoch must not be negative")
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if opts.HeartbeatGrace <= 0 {
		opts.HeartbeatGrace = DefaultHeartbeatGrace
	}
	if opts.FailoverGrace <= 0 {
		opts.FailoverGrace = DefaultFailoverGrace
	}
	if opts.RestartGrace <= 0 {
		opts.RestartGrace = DefaultRestartGrace
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.WorkerCallTimeout <= 0 {
		opts.WorkerCallTimeout = DefaultWorkerCallTimeout
	}
	switch {
	case opts.MaxQueuedPerOwner == 0:
		opts.MaxQueuedPerOwner = DefaultMaxQueuedPerOwner
	case opts.MaxQueuedPerOwner < 0:
		opts.MaxQueuedPerOwner = 0
	}
	switch {
	case opts.MaxSchedulesPerOwner == 0:
		opts.MaxSchedulesPerOwner = DefaultMaxSchedulesPerOwner
	case opts.MaxSchedulesPerOwner < 0:
		opts.MaxSchedulesPerOwner = 0
	}
	switch {
	case opts.MaxUserPriority == 0:
		opts.MaxUserPriority = DefaultMaxUserPriority
	case opts.MaxUserPriority < 0:
		opts.MaxUserPriority = 0
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = serving.NewHTTPClient(nil)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Scheduler{opts: opts, store: opts.Store, logger: opts.Logger, checks: make(chan struct{}, 4)}
	s.stopping, s.stopStreams = context.WithCancel(context.Background())
	s.reg = newRegistry(s.dialer())
	workers, err := opts.Store.ListWorkers(ctx)
	if err != nil {
		return nil, err
	}
	s.reg.load(workers, opts.FailoverGrace)
	s.q = newQueue(opts.MaxQueuedPerOwner)
	s.ends = newEndFeed()
	// Job ends release the jobs that wait for them, and are counted.
	if o, ok := opts.Store.(store.JobEndObserver); ok {
		o.ObserveJobEnds(s.jobEnded)
	}
	queued, err := opts.Store.ListQueued(ctx)
	if err != nil {
		return nil, err
	}
	s.q.load(queued, time.Now())
	opts.Metrics.QueueLoaded(s.q.waitingCount())
	if err := s.settleLoadedHolds(ctx); err != nil {
		return nil, err
	}

	if err := s.loadSchedules(ctx); err != nil {
		return nil, err
	}

	hopts, err := s.instrument()
	if err != nil {
		return nil, err
	}
	mux, health := serving.Mux(batonv1connect.SchedulerServiceName)
	authz := identity.NewAuthorizer(Policy(), opts.Audit, opts.Logger)
	// A stop once received is carried out even if its caller hangs up.
	inner := append([]connect.Interceptor{interceptors.NewDetach(batonv1connect.SchedulerServiceStopJobProcedure)}, opts.Interceptors...)
	path, h := batonv1connect.NewSchedulerServiceHandler(
		&handler{s: s},
		append(append(hopts, serving.HandlerOptions("the scheduler", opts.Logger, maxCallDuration, authz, inner...)...), s.view.codec())...,
	)
	mux.Handle(path, h)
	s.handler = mux
	s.health = health
	return s, nil
}

// Epoch is the epoch the scheduler sends workers: Options.Epoch.
func (s *Scheduler) Epoch() int64 { return s.opts.Epoch }

// fence is the client interceptors that give every call to a worker the
// scheduler's epoch: none without one.
func (s *Scheduler) fence() []connect.Interceptor {
	if s.opts.Epoch <= 0 {
		return nil
	}
	return []connect.Interceptor{epoch.NewClientInterceptor(s.opts.Epoch)}
}

// dialer returns how the registry makes a worker's client. Every call
// tells the worker which client the scheduler acts for, and the epoch of
// the leader making it.
func (s *Scheduler) dialer() func(name, addr string) batonv1connect.WorkerServiceClient {
	forward := connect.WithInterceptors(append([]connect.Interceptor{identity.ForwardOnBehalfOf(), trimDeadline{}}, s.fence()...)...)
	if s.opts.WorkerTLS == nil {
		return func(_, addr string) batonv1connect.WorkerServiceClient {
			return batonv1connect.NewWorkerServiceClient(s.opts.HTTPClient, serving.BaseURL(addr, false), forward)
		}
	}
	return func(name, addr string) batonv1connect.WorkerServiceClient {
		want := identity.Principal{Role: identity.RoleWorker, Name: name}
		hc := serving.NewHTTPClient(s.opts.WorkerTLS.ClientTLS(identity.Expect(want)))
		return batonv1connect.NewWorkerServiceClient(hc, serving.BaseURL(addr, true), forward)
	}
}

// deadlineMargin is taken off the deadline the scheduler passes on to a
// worker. A deadline travels as the time remaining, which the receiver
// counts from when the request arrives: without a margin each hop would
// end a little later than its caller (RELIABILITY.md H4 wants the worker
// to give up no later than the client).
const deadlineMargin = 5 * time.Millisecond

// trimDeadline is the client interceptor that takes deadlineMargin off
// unary calls to workers. Streams keep their deadline: they have no
// timeout of their own to stay within.
type trimDeadline struct{}

func (trimDeadline) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) > 2*deadlineMargin {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, dl.Add(-deadlineMargin))
			defer cancel()
		}
		return next(ctx, req)
	}
}

func (trimDeadline) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (trimDeadline) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// Handler serves SchedulerService, gRPC health and reflection. It expects
// the request context to carry the caller, as set by an
// identity.Authenticator's middleware; without one every call is
// Unauthenticated.
func (s *Scheduler) Handler() http.Handler { return s.handler }

// SetNotServing is the first step of a graceful shutdown: the health
// endpoint reports NOT_SERVING and every relayed output stream ends with
// Unavailable, so that the listeners can drain the unary calls.
func (s *Scheduler) SetNotServing() {
	s.health.SetStatus(batonv1connect.SchedulerServiceName, grpchealth.StatusNotServing)
	s.stopStreams()
}

// Run detects DOWN workers, hands queued jobs to workers as slots free,
// fires schedules and prunes old jobs until ctx ends. Call it once.
func (s *Scheduler) Run(ctx context.Context) error {
	queueDone := make(chan struct{})
	go func() {
		defer close(queueDone)
		s.runQueue(ctx)
	}()
	defer func() { <-queueDone }()
	endsDone := make(chan struct{})
	go func() {
		defer close(endsDone)
		s.followEnds(ctx)
	}()
	defer func() { <-endsDone }()
	schedulesDone := make(chan struct{})
	go func() {
		defer close(schedulesDone)
		s.runSchedules(ctx)
	}()
	defer func() { <-schedulesDone }()
	tick := time.NewTicker(max(s.opts.HeartbeatInterval/2, 10*time.Millisecond))
	defer tick.Stop()
	s.prune(ctx)
	lastPrune := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		s.sweep(ctx)
		if time.Since(lastPrune) >= min(pruneEvery, s.opts.Retention) {
			s.prune(ctx)
			lastPrune = time.Now()
		}
	}
}

// sweep marks the workers whose deadline passed DOWN and their running jobs
// LOST: silent ones, and restarting ones not back within their grace.
func (s *Scheduler) sweep(ctx context.Context) {
	for _, d := range s.reg.expire(time.Now()) {
		s.markDown(ctx, d)
	}
}

// markDown finishes the DOWN transition of one worker: its jobs become LOST
// unless it registered again meanwhile.
func (s *Scheduler) markDown(ctx context.Context, d downed) {
	m := d.m
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if !s.reg.stillDown(m, d.gen) {
		return
	}
	silent := s.opts.HeartbeatInterval + s.opts.HeartbeatGrace
	reason := "worker down: no heartbeat for " + silent.String()
	if d.restarting {
		reason = "worker restarting: not back within " + d.grace.String()
	}
	n, err := s.store.MarkWorkerJobsLost(ctx, d.id, reason, time.Now())
	if err != nil && ctx.Err() == nil {
		s.logger.ErrorContext(ctx, "marking jobs of a down worker lost failed", "worker_id", d.id, "error", err)
	}
	s.persist(ctx, m)
	if d.restarting {
		s.logger.WarnContext(ctx, "worker down: not back from its restart", "worker_id", d.id, "restart_grace", d.grace, "jobs_lost", n)
		return
	}
	s.logger.WarnContext(ctx, "worker down", "worker_id", d.id, "silent_for", silent, "jobs_lost", n)
}

// prune deletes jobs that ended more than Retention ago.
func (s *Scheduler) prune(ctx context.Context) {
	n, err := s.store.PruneJobs(ctx, time.Now().Add(-s.opts.Retention))
	if err != nil && ctx.Err() == nil {
		s.logger.ErrorContext(ctx, "pruning old jobs failed", "error", err)
		return
	}
	if n > 0 {
		s.logger.InfoContext(ctx, "pruned old jobs", "jobs", n)
	}
	for _, m := range s.reg.forget(time.Now().Add(-s.opts.Retention)) {
		s.forgetWorker(ctx, m)
	}
}

// forgetWorker deletes the roster entry of a worker forget removed, unless
// it registered again meanwhile.
func (s *Scheduler) forgetWorker(ctx context.Context, m *member) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if s.reg.get(m.w.ID) != nil {
		return
	}
	if err := s.store.DeleteWorker(ctx, m.w.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.logger.ErrorContext(ctx, "forgetting a worker failed", "worker_id", m.w.ID, "error", err)
		return
	}
	s.unsettled.Range(func(id, w any) bool {
		if w.(string) == m.w.ID {
			s.unsettled.Delete(id)
		}
		return true
	})
	s.logger.InfoContext(ctx, "forgot a worker gone for longer than the retention", "worker_id", m.w.ID)
}

// persist writes m's current roster entry to the store. The caller holds
// m.opMu, so that writes of one worker land in the order of its changes.
func (s *Scheduler) persist(ctx context.Context, m *member) {
	w := s.reg.snapshot(m)
	if err := s.store.UpsertWorker(context.WithoutCancel(ctx), w); err != nil {
		s.logger.ErrorContext(ctx, "saving worker failed", "worker_id", w.ID, "error", err)
	}
}
