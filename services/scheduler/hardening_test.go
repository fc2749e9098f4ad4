package scheduler_test

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
)

// handlerDeadline is the deadline one handler's context carried.
type handlerDeadline struct {
	deadline time.Time
	ok       bool
	// at is when the handler started: every hop's transit time to it is
	// within at minus the client's start.
	at time.Time
}

// deadlineRecorder is an innermost interceptor that records the deadline
// of every unary handler's context, by procedure. Safe for concurrent use.
type deadlineRecorder struct {
	mu   sync.Mutex
	seen map[string][]handlerDeadline
}

func (r *deadlineRecorder) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		dl, ok := ctx.Deadline()
		r.mu.Lock()
		if r.seen == nil {
			r.seen = map[string][]handlerDeadline{}
		}
		p := req.Spec().Procedure
		r.seen[p] = append(r.seen[p], handlerDeadline{deadline: dl, ok: ok, at: time.Now()})
		r.mu.Unlock()
		return next(ctx, req)
	}
}

func (r *deadlineRecorder) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (r *deadlineRecorder) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// last returns the latest deadline recorded for procedure.
func (r *deadlineRecorder) last(t *testing.T, procedure string) handlerDeadline {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.seen[procedure]
	if len(s) == 0 {
		t.Fatalf("no call of %s was handled", procedure)
	}
	return s[len(s)-1]
}

// TestDeadlinePropagation is RELIABILITY.md C8 H4 across the hop: the
// scheduler calls the worker with what is left of its client's deadline,
// so the worker's handler never has longer than the client waits (StartJob
// and QueryJob, the calls the scheduler forwards). Without a client
// deadline the scheduler's own bound on worker calls applies.
//
// Each hop sends its remaining time as a duration, which the next one
// counts from when the request arrived: the deadlines can only drift later
// by the time in transit, which is less than the time from the client's
// call to the worker's handler.
func TestDeadlinePropagation(t *testing.T) {
	t.Parallel()
	schedRec, workerRec := &deadlineRecorder{}, &deadlineRecorder{}
	s := startScheduler(t, "", func(o *scheduler.Options) {
		o.Interceptors = []connect.Interceptor{schedRec}
	})
	startWorkerWith(t, "w1", s, workerSetup{interceptors: []connect.Interceptor{workerRec}})
	waitWorkers(t, s.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")

	var jobID string
	calls := []struct {
		name      string
		scheduler string // the scheduler's procedure
		worker    string // the worker's procedure it forwards to
		call      func(ctx context.Context) error
	}{
		{
			name:      "StartJob",
			scheduler: batonv1connect.SchedulerServiceStartJobProcedure,
			worker:    batonv1connect.WorkerServiceStartJobProcedure,
			call: func(ctx context.Context) error {
				res, err := s.client.StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh"}))
				if err == nil && jobID == "" {
					jobID = res.Msg.GetJobId()
				}
				return err
			},
		},
		{
			// The job sleeps, so the scheduler asks the worker.
			name:      "QueryJob",
			scheduler: batonv1connect.SchedulerServiceQueryJobProcedure,
			worker:    batonv1connect.WorkerServiceQueryJobProcedure,
			call: func(ctx context.Context) error {
				_, err := s.client.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: jobID}))
				return err
			},
		},
	}
	// clientTimeout is far below the scheduler's bound on worker calls
	// (DefaultWorkerCallTimeout) and every cap: a worker deadline within
	// it can only come from the client.
	const clientTimeout = 10 * time.Second
	for _, c := range calls {
		t.Run(c.name+"/client deadline", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), clientTimeout)
			defer cancel()
			start := time.Now()
			clientDL, _ := ctx.Deadline()
			if err := c.call(ctx); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			for _, hop := range []struct {
				name string
				seen handlerDeadline
			}{
				{"scheduler", schedRec.last(t, c.scheduler)},
				{"worker", workerRec.last(t, c.worker)},
			} {
				if !hop.seen.ok {
					t.Errorf("the %s's handler had no deadline", hop.name)
					continue
				}
				transit := hop.seen.at.Sub(start)
				if hop.seen.deadline.After(clientDL.Add(transit)) {
					t.Errorf("the %s's handler deadline is %v after the client's (transit at most %v)",
						hop.name, hop.seen.deadline.Sub(clientDL), transit)
				}
				t.Logf("%s handler deadline: %v from the client's", hop.name, hop.seen.deadline.Sub(clientDL))
			}
		})
		t.Run(c.name+"/no client deadline", func(t *testing.T) {
			start := time.Now()
			if err := c.call(t.Context()); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			w := workerRec.last(t, c.worker)
			if !w.ok {
				t.Fatal("the worker's handler had no deadline")
			}
			// The scheduler starts its worker call before the worker's
			// handler runs, so its bound ends by w.at plus the timeout.
			if bound := w.at.Add(scheduler.DefaultWorkerCallTimeout); w.deadline.After(bound) {
				t.Errorf("the worker's handler deadline is %v after the call started, want at most the scheduler's bound %v",
					w.deadline.Sub(start), scheduler.DefaultWorkerCallTimeout)
			}
		})
	}
}

// callGate is an innermost interceptor that, once armed, holds ListWorkers
// calls until release is closed, and counts those and the output streams
// in flight.
type callGate struct {
	armed   atomic.Bool
	release chan struct{}
	unary   atomic.Int64
	streams atomic.Int64
}

func (g *callGate) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if g.armed.Load() && req.Spec().Procedure == batonv1connect.SchedulerServiceListWorkersProcedure {
			g.unary.Add(1)
			select {
			case <-g.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return next(ctx, req)
	}
}

func (g *callGate) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (g *callGate) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if conn.Spec().Procedure == batonv1connect.SchedulerServiceStreamJobOutputProcedure {
			g.streams.Add(1)
		}
		return next(ctx, conn)
	}
}

// TestGracefulShutdown is RELIABILITY.md C8 H7 in process: with 50 unary
// calls and 10 output streams in flight, the scheduler's shutdown (as
// cmd/baton does it on SIGTERM: SetNotServing, then Shutdown with a drain
// timeout) refuses new connections at once, ends the streams with
// Unavailable, and lets the unary calls finish.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	const (
		unary   = 50
		streams = 10
		drain   = 10 * time.Second
	)
	gate := &callGate{release: make(chan struct{})}
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(gate.release) }) }
	t.Cleanup(release)

	st, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "baton.db"))
	if err != nil {
		t.Fatal(err)
	}
	workerHTTP := serving.NewHTTPClient(nil)
	s, err := scheduler.New(t.Context(), scheduler.Options{Store: st, HTTPClient: workerHTTP, Interceptors: []connect.Interceptor{gate}})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	srv, err := serving.Listen("127.0.0.1:0", identity.AnonymousHandler(s.Handler()), nil, nil)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	addr := srv.Addr().String()
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve() }()
	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = s.Run(runCtx)
	}()
	clientHTTP := serving.NewHTTPClient(nil)
	t.Cleanup(func() {
		release()
		stopRun()
		<-runDone
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = srv.Shutdown(ctx) // a no-op once the test's own shutdown ran
		workerHTTP.CloseIdleConnections()
		clientHTTP.CloseIdleConnections()
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	ts := &testScheduler{Scheduler: s, url: "http://" + addr, client: batonv1connect.NewSchedulerServiceClient(clientHTTP, "http://"+addr)}
	startWorker(t, "w1", ts, nil)
	waitWorkers(t, ts.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	jobID := startJob(t, ts.client, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh"}).GetJobId()

	gate.armed.Store(true)
	streamErrs := make(chan error, streams)
	for range streams {
		go func() {
			stream, err := ts.client.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: jobID, Follow: true}))
			if err != nil {
				streamErrs <- err
				return
			}
			defer stream.Close()
			for stream.Receive() {
			}
			streamErrs <- stream.Err()
		}()
	}
	unaryErrs := make(chan error, unary)
	for range unary {
		go func() {
			_, err := ts.client.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
			unaryErrs <- err
		}()
	}
	waitFor(t, "the calls to be in flight", func() bool {
		return gate.unary.Load() == unary && gate.streams.Load() == streams
	})

	start := time.Now()
	s.SetNotServing()
	shutdownDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		shutdownDone <- srv.Shutdown(ctx)
	}()

	timeout := time.After(waitTimeout)
	for i := range streams {
		select {
		case err := <-streamErrs:
			wantCode(t, "an output stream at shutdown", err, connect.CodeUnavailable)
		case <-timeout:
			t.Fatalf("only %d of %d streams ended", i, streams)
		}
	}
	// New connections are refused while the unary calls are still held.
	waitFor(t, "the listener to refuse connections", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.Close()
		}
		return err != nil
	})
	refused := time.Since(start)
	select {
	case err := <-unaryErrs:
		t.Fatalf("a held unary call ended before it was released: %v", err)
	default:
	}

	release()
	for i := range unary {
		select {
		case err := <-unaryErrs:
			if err != nil {
				t.Errorf("in-flight ListWorkers during shutdown: %v", err)
			}
		case <-timeout:
			t.Fatalf("only %d of %d unary calls ended", i, unary)
		}
	}
	select {
	case err := <-shutdownDone:
		if err != nil {
			t.Errorf("Shutdown did not drain within %v: %v", drain, err)
		}
	case <-timeout:
		t.Fatal("Shutdown did not return")
	}
	if err := <-serveDone; err != nil {
		t.Errorf("Serve: %v", err)
	}
	t.Logf("streams ended and new connections refused %v after shutdown began; drained in %v", refused, time.Since(start))
}
