package worker

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/internal/interceptors"
	"github.com/baton-run/baton/services/jobrun"
	"github.com/baton-run/baton/services/keeper"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/serving"
)

// Options configure a Worker. Runner options are passed through to jobrun.
type Options struct {
	// Name identifies the worker; it is stable across restarts.
	Name string
	// Address is where the scheduler reaches this worker (host:port).
	Address string
	// Labels are matched by the scheduler's selectors.
	Labels map[string]string
	// Runner configures the job runtime. Its Capacity is also reported to
	// the scheduler; its OnChange is set by the Worker.
	Runner jobrun.Options
	// KeeperExecutable, if set, keeps the jobs in a keeper process started
	// from this executable (the baton binary), so that they outlive the
	// worker process: see package keeper. Empty runs them in this process,
	// and they end with it.
	KeeperExecutable string
	// Scheduler, if set, is the client the worker registers and heartbeats
	// with. Nil runs the worker on its own.
	Scheduler batonv1connect.SchedulerServiceClient
	// MaxCallDuration caps unary calls without a (reasonable) deadline.
	// Default 5m: StopJob may rightly wait a whole grace period.
	MaxCallDuration time.Duration
	// Logger receives the access log and diagnostics. Default: discard.
	Logger *slog.Logger
	// Audit receives one line per StartJob and StopJob and per denied
	// call; nil records nothing.
	Audit *identity.AuditLog
	// Interceptors run innermost, after authorization and validation,
	// just around the handler (tests).
	Interceptors []connect.Interceptor
	// Metrics, if set, records the worker's metrics; serve its Handler at
	// /metrics. Nil records nothing. One Metrics serves one Worker.
	Metrics *metrics.Worker
}

// Worker is one worker process's service: the job runtime, the
// WorkerService handler and the registration loop. It refuses calls from a
// leader older than the newest it has seen, which it keeps in the file
// "epoch" of Runner.DataDir. Its methods are safe for concurrent use.
type Worker struct {
	opts    Options
	runner  Jobs
	local   *jobrun.Runner  // the runtime when it is in this process
	ending  <-chan struct{} // closed when the keeper decommissions
	handler http.Handler
	health  *grpchealth.StaticChecker
	changes *changeSet
	logger  *slog.Logger
	// stopping ends every output stream when the worker shuts down:
	// following streams would otherwise hold the listener's drain open.
	stopping    context.Context
	stopStreams context.CancelFunc
}

// New opens the job runtime (recovering the job table from its data
// directory) and prepares the HTTP handler.
func New(opts Options) (*Worker, error) {
	if opts.Name == "" {
		return nil, errors.New("worker: Options.Name is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxCallDuration <= 0 {
		opts.MaxCallDuration = 5 * time.Minute
	}
	w := &Worker{opts: opts, changes: newChangeSet(), logger: opts.Logger}
	w.stopping, w.stopStreams = context.WithCancel(context.Background())
	ropts := opts.Runner
	ropts.Logger = opts.Logger
	ropts.OnChange = w.jobChanged
	if opts.KeeperExecutable != "" {
		kc, err := keeper.Open(context.Background(), keeper.Config{
			Options: ropts, Executable: opts.KeeperExecutable, OnChange: w.jobChanged, Logger: opts.Logger,
		})
		if err != nil {
			return nil, err
		}
		w.runner, w.ending = kc, kc.Ending()
	} else {
		runner, err := jobrun.New(ropts)
		if err != nil {
			return nil, err
		}
		w.runner, w.local = local{runner}, runner
	}
	runner := w.runner
	fence, err := openFence(filepath.Join(opts.Runner.DataDir, epochFile))
	if err != nil {
		_ = runner.Close(context.Background())
		return nil, err
	}

	// The fence comes first, so that a deposed leader's call does nothing.
	// A stop once received is carried out even if the scheduler hangs up.
	inner := append([]connect.Interceptor{fence, interceptors.NewDetach(batonv1connect.WorkerServiceStopJobProcedure)}, opts.Interceptors...)
	hopts := serving.HandlerOptions("the worker", opts.Logger, opts.MaxCallDuration,
		identity.NewAuthorizer(Policy(), opts.Audit, opts.Logger), inner...)
	if m := opts.Metrics; m != nil {
		if err := m.ObserveRunning(runner.Running); err != nil {
			_ = runner.Close(context.Background())
			return nil, err
		}
		// First, so that it also times the calls validation rejects.
		hopts = append([]connect.HandlerOption{connect.WithInterceptors(m.Interceptor())}, hopts...)
	}
	mux, health := serving.Mux(batonv1connect.WorkerServiceName)
	path, h := batonv1connect.NewWorkerServiceHandler(
		&handler{runner: runner, name: opts.Name, stopping: w.stopping, metrics: opts.Metrics, logger: opts.Logger},
		hopts...,
	)
	mux.Handle(path, h)
	w.handler = mux
	w.health = health
	return w, nil
}

// jobChanged queues a job's change for the next heartbeat and counts job
// starts and ends. jobrun reports RUNNING once per job, when its process
// started, and its terminal state once.
func (w *Worker) jobChanged(st jobrun.Status) {
	w.changes.add(st)
	switch {
	case st.State == jobrun.StateRunning:
		w.opts.Metrics.JobStarted()
	case st.State.Terminal():
		w.opts.Metrics.JobFinished(jobStates[st.State])
		if u := st.Usage; u.Source != "" {
			w.opts.Metrics.JobUsage(u.CPUUser+u.CPUSystem, u.PeakMemory, u.Source)
		}
	}
}

// Handler serves WorkerService, gRPC health and reflection. It expects the
// request context to carry the caller, as set by an
// identity.Authenticator's middleware; without one every call is
// Unauthenticated.
func (w *Worker) Handler() http.Handler { return w.handler }

// Runner is the worker's job runtime when it runs in this process; nil
// when a keeper holds the jobs.
func (w *Worker) Runner() *jobrun.Runner { return w.local }

// Ending is closed when the keeper ends with every job (a decommission,
// see keeper.Decommission): the worker should leave too. Nil without a
// keeper.
func (w *Worker) Ending() <-chan struct{} { return w.ending }

// SetNotServing is the first step of a graceful shutdown: the health
// endpoint reports NOT_SERVING and every output stream ends with
// Unavailable, so that the listener can drain the unary calls.
func (w *Worker) SetNotServing() {
	w.health.SetStatus(batonv1connect.WorkerServiceName, grpchealth.StatusNotServing)
	w.stopStreams()
}

// Close stops serving (as SetNotServing) and releases the job runtime:
// without a keeper it stops every running job (SIGTERM, grace, SIGKILL),
// waiting for them within ctx; a keeper's jobs run on.
func (w *Worker) Close(ctx context.Context) error {
	w.SetNotServing()
	return w.runner.Close(ctx)
}
