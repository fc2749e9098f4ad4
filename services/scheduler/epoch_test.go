package scheduler_test

import (
	"context"
	"net/http"
	"path/filepath"
	"sync"
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

// epochHeader is the header's name on the wire, spelled out: the scheduler
// and the worker must agree on it, whatever a constant says.
const epochHeader = "Baton-Epoch"

// headerLog records the epoch header of every call a worker handles, by
// procedure. It is a handler interceptor, or wraps an http.Handler.
type headerLog struct {
	mu    sync.Mutex
	calls map[string][]string
}

func (l *headerLog) add(procedure string, h http.Header) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.calls == nil {
		l.calls = map[string][]string{}
	}
	l.calls[procedure] = append(l.calls[procedure], h.Get(epochHeader))
}

func (l *headerLog) snapshot() map[string][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string][]string, len(l.calls))
	for p, vs := range l.calls {
		out[p] = append([]string(nil), vs...)
	}
	return out
}

func (l *headerLog) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		l.add(req.Spec().Procedure, req.Header())
		return next(ctx, req)
	}
}

func (l *headerLog) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (l *headerLog) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		l.add(conn.Spec().Procedure, conn.RequestHeader())
		return next(ctx, conn)
	}
}

// healthStandIn serves gRPC health as a worker's listener does, recording
// the epoch header of each call, and returns its address.
func healthStandIn(t *testing.T, log *headerLog) string {
	t.Helper()
	mux, _ := serving.Mux(batonv1connect.WorkerServiceName)
	h := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		log.add(r.URL.Path, r.Header)
		mux.ServeHTTP(rw, r)
	})
	srv, err := serving.Listen("127.0.0.1:0", identity.AnonymousHandler(h), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve() })
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		wg.Wait()
	})
	return srv.Addr().String()
}

// TestWorkerCallsCarryTheEpoch: a leader's every call to a worker — a
// start, a stop, a relayed output stream, an address check — says its
// epoch, so that the worker can refuse it once a newer leader has called;
// a scheduler running alone (epoch 0) says none.
func TestWorkerCallsCarryTheEpoch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		epoch int64
		want  string
	}{
		{"alone", 0, ""},
		{"leader", 42, "42"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := startScheduler(t, "", func(o *scheduler.Options) {
				o.HeartbeatInterval = 200 * time.Millisecond
				o.Epoch = tc.epoch
			})
			if got := s.Epoch(); got != tc.epoch {
				t.Errorf("Epoch() = %d, want %d", got, tc.epoch)
			}
			var seen headerLog
			startWorkerWith(t, "w1", s, workerSetup{interceptors: []connect.Interceptor{&seen}})
			c := s.client
			waitWorkers(t, c, stateReady, "w1")

			done := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"}).GetJobId()
			waitFor(t, "job done", func() bool { return queryJob(t, c, done).GetDone() })
			stream, err := c.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: done}))
			if err != nil {
				t.Fatal(err)
			}
			for stream.Receive() {
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			_ = stream.Close()
			sleeping := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh"}).GetJobId()
			if _, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: sleeping})); err != nil {
				t.Fatal(err)
			}

			var health headerLog
			res, err := c.CheckWorkerAddress(t.Context(), connect.NewRequest(&batonv1.CheckWorkerAddressRequest{Address: healthStandIn(t, &health)}))
			if err != nil || !res.Msg.GetReachable() {
				t.Fatalf("CheckWorkerAddress: %v %v", res, err)
			}

			calls := seen.snapshot()
			for k, v := range health.snapshot() {
				calls[k] = v
			}
			for _, p := range []string{
				batonv1connect.WorkerServiceStartJobProcedure,
				batonv1connect.WorkerServiceStopJobProcedure,
				batonv1connect.WorkerServiceStreamJobOutputProcedure,
				"/grpc.health.v1.Health/Check",
			} {
				if len(calls[p]) == 0 {
					t.Errorf("no %s call reached the worker", p)
				}
			}
			for p, vs := range calls {
				for _, v := range vs {
					if v != tc.want {
						t.Errorf("%s carried %s %q, want %q", p, epochHeader, v, tc.want)
					}
				}
			}
		})
	}
}

// TestNewRefusesANegativeEpoch: an epoch is a leader's term, never negative.
func TestNewRefusesANegativeEpoch(t *testing.T) {
	t.Parallel()
	st, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "baton.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := scheduler.New(t.Context(), scheduler.Options{Store: st, Epoch: -1}); err == nil {
		t.Fatal("New with Epoch -1 succeeded")
	}
}
