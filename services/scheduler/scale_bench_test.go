package scheduler_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
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

// Shape of BenchmarkScale10kWorkers.
const (
	scaleWorkers       = 10000
	scaleHeartbeat     = 5 * time.Second
	scaleClients       = 8  // HTTP clients (connections) the fakes share
	scaleRegistrations = 64 // registrations in flight at once
	scaleProbeRate     = 20 // ListWorkers and StartJob calls per second, each
	// scaleWindowEnv sets the length of each measured window (a Go
	// duration); default scaleWindow. The run takes about 3 windows plus
	// the registrations.
	scaleWindowEnv = "BATON_SCALE_WINDOW"
	scaleWindow    = 10 * time.Second
)

// BenchmarkScale10kWorkers measures the scheduler with 10,000 simulated
// workers: in-process fakes that register and heartbeat over the real
// protocol (h2c on loopback, the generated client) every 5 s, staggered.
// Every fake advertises one address, served by a fake WorkerService that
// answers StartJob and QueryJob at once.
//
// Three windows are measured, in this order:
//
//   - noop: the fakes heartbeat against a SchedulerService that only
//     answers; its CPU is the fakes' own (client) cost plus the HTTP and
//     Connect serving cost;
//   - hb: the fakes heartbeat against the real scheduler;
//   - full: as hb, plus ListWorkers and StartJob at 20 calls/s each.
//
// CPU is the process's (getrusage user+sys) over the window's wall time, in
// cores. The fakes run in the same process, so sched-cores-hb (hb - noop)
// is the estimate of the scheduler's own cost of heartbeats; the full
// window also includes decoding ListWorkers responses of 10,000 workers on
// the client side.
func BenchmarkScale10kWorkers(b *testing.B) {
	if testing.Short() {
		b.Skip("10k-worker scale run skipped in -short mode")
	}
	window := scaleWindow
	if v := os.Getenv(scaleWindowEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			b.Fatalf("%s=%q: want a positive duration like 20s", scaleWindowEnv, v)
		}
		window = d
	}
	ctx := context.Background()

	// The fake WorkerService every fake worker advertises.
	fakeWorkerAddr := serveScale(b, fakeWorkerHandler())

	// The scheduler under test.
	st, err := store.Open(ctx, filepath.Join(b.TempDir(), "baton.db"))
	if err != nil {
		b.Fatal(err)
	}
	timed := &timedStore{Store: st}
	workerHTTP := serving.NewHTTPClient(nil)
	sched, err := scheduler.New(ctx, scheduler.Options{Store: timed, HTTPClient: workerHTTP, HeartbeatInterval: scaleHeartbeat})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = sched.Run(runCtx)
	}()
	// Cleanups run last first: the store closes after Run and the server.
	b.Cleanup(func() {
		workerHTTP.CloseIdleConnections()
		if err := st.Close(); err != nil {
			b.Errorf("close store: %v", err)
		}
	})
	b.Cleanup(func() { stopRun(); <-runDone })
	schedAddr := serveScale(b, identity.AnonymousHandler(sched.Handler()))

	// A SchedulerService that answers heartbeats and nothing else.
	noopPath, noopH := batonv1connect.NewSchedulerServiceHandler(noopScheduler{})
	noopMux := http.NewServeMux()
	noopMux.Handle(noopPath, noopH)
	noopAddr := serveScale(b, noopMux)

	httpClients := make([]*http.Client, scaleClients)
	real := make([]batonv1connect.SchedulerServiceClient, scaleClients)
	noop := make([]batonv1connect.SchedulerServiceClient, scaleClients)
	for i := range httpClients {
		httpClients[i] = serving.NewHTTPClient(nil)
		real[i] = batonv1connect.NewSchedulerServiceClient(httpClients[i], serving.BaseURL(schedAddr, false))
		noop[i] = batonv1connect.NewSchedulerServiceClient(httpClients[i], serving.BaseURL(noopAddr, false))
	}
	b.Cleanup(func() {
		for _, c := range httpClients {
			c.CloseIdleConnections()
		}
	})

	fleet := &scaleFleet{addr: fakeWorkerAddr, real: real, noop: noop, registered: make([]atomic.Bool, scaleWorkers)}
	fleet.toNoop.Store(true)
	hbCtx, stopHB := context.WithCancel(ctx)
	var hbWG sync.WaitGroup
	b.Cleanup(func() { stopHB(); hbWG.Wait() })
	start := time.Now()
	for i := range scaleWorkers {
		hbWG.Go(func() {
			// Spread the fakes uniformly over one interval.
			offset := time.Duration(int64(scaleHeartbeat) * int64(i) / scaleWorkers)
			fleet.heartbeatLoop(hbCtx, i, time.Until(start.Add(offset)))
		})
	}

	b.ResetTimer()
	noopWin := fleet.measure(window, nil)

	// Register every fake with the real scheduler; each heartbeats to it
	// once registered.
	fleet.toNoop.Store(false)
	regStart := time.Now()
	var regErrs atomic.Int64
	sem := make(chan struct{}, scaleRegistrations)
	var regWG sync.WaitGroup
	for i := range scaleWorkers {
		sem <- struct{}{}
		regWG.Go(func() {
			defer func() { <-sem }()
			if err := fleet.register(ctx, real[i%scaleClients], i); err != nil {
				regErrs.Add(1)
			}
		})
	}
	regWG.Wait()
	regTime := time.Since(regStart)
	if n := regErrs.Load(); n > 0 {
		b.Fatalf("%d of %d registrations failed", n, scaleWorkers)
	}
	// Let one interval of heartbeats reach the real scheduler before
	// measuring.
	time.Sleep(scaleHeartbeat)
	timed.start()
	hbWin := fleet.measure(window, nil)
	upserts := timed.stop()

	var listLat, startLat latencies
	fullWin := fleet.measure(window, func(ctx context.Context, wg *sync.WaitGroup) {
		probe(ctx, wg, scaleProbeRate, &listLat, func(ctx context.Context, n int) error {
			res, err := real[n%scaleClients].ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
			if err == nil && len(res.Msg.GetWorkers()) != scaleWorkers {
				return fmt.Errorf("ListWorkers: %d workers, want %d", len(res.Msg.GetWorkers()), scaleWorkers)
			}
			return err
		})
		probe(ctx, wg, scaleProbeRate, &startLat, func(ctx context.Context, n int) error {
			_, err := real[n%scaleClients].StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{Command: "true"}))
			return err
		})
	})
	b.StopTimer()

	states := map[batonv1.WorkerState]int{}
	res, err := real[0].ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
	if err != nil {
		b.Fatal(err)
	}
	for _, w := range res.Msg.GetWorkers() {
		states[w.GetState()]++
	}

	b.ReportMetric(float64(scaleWorkers)/regTime.Seconds(), "registrations/s")
	b.ReportMetric(noopWin.cores, "noop-cores")
	b.ReportMetric(hbWin.cores, "hb-cores")
	b.ReportMetric(fullWin.cores, "full-cores")
	b.ReportMetric(hbWin.cores-noopWin.cores, "sched-cores-hb")
	b.ReportMetric(fullWin.cores-noopWin.cores, "sched-cores-full")
	b.ReportMetric(hbWin.rate, "hb/s")
	b.ReportMetric(fullWin.rate, "hb/s-full")
	b.ReportMetric(hbWin.lat.percentileMs(0.99), "hb-p99-ms")
	b.ReportMetric(fullWin.lat.percentileMs(0.99), "hb-p99-ms-full")
	b.ReportMetric(float64(hbWin.errs+fullWin.errs), "hb-errors")
	b.ReportMetric(listLat.percentileMs(0.50), "list-p50-ms")
	b.ReportMetric(listLat.percentileMs(0.99), "list-p99-ms")
	b.ReportMetric(float64(listLat.errs), "list-errors")
	b.ReportMetric(startLat.percentileMs(0.50), "start-p50-ms")
	b.ReportMetric(startLat.percentileMs(0.99), "start-p99-ms")
	b.ReportMetric(float64(startLat.errs), "start-errors")
	b.ReportMetric(float64(fleet.reregistered.Load()), "reregistrations")
	b.ReportMetric(float64(len(upserts.d))/hbWin.wall.Seconds(), "upserts/s-hb")
	b.ReportMetric(upserts.percentileMs(0.50), "upsert-p50-ms")
	b.ReportMetric(upserts.percentileMs(0.99), "upsert-p99-ms")
	b.ReportMetric(upserts.busy().Seconds()/hbWin.wall.Seconds(), "upsert-busy")
	b.Logf("window %s; %d workers registered in %s; calls: ListWorkers %d, StartJob %d; roster after: %v",
		window, scaleWorkers, regTime.Round(time.Millisecond), len(listLat.d), len(startLat.d), states)
	if listLat.firstErr != nil || startLat.firstErr != nil || fleet.firstErr() != nil {
		b.Logf("first errors: ListWorkers %v; StartJob %v; heartbeat %v", listLat.firstErr, startLat.firstErr, fleet.firstErr())
	}
}

// scaleFleet is the set of fake workers.
type scaleFleet struct {
	addr string
	// real and noop are the clients the fakes share, to the scheduler and
	// to the no-op service; toNoop sends every heartbeat to the latter,
	// else only registered fakes heartbeat, to the scheduler.
	real, noop []batonv1connect.SchedulerServiceClient
	toNoop     atomic.Bool
	registered []atomic.Bool

	mu  sync.Mutex
	lat *latencies // of the current window; nil between windows
	// reregistered counts fakes told NotFound that registered again.
	reregistered atomic.Int64
	errMu        sync.Mutex
	err          error
}

func scaleName(i int) string { return fmt.Sprintf("fake-%05d", i) }

func (f *scaleFleet) register(ctx context.Context, c batonv1connect.SchedulerServiceClient, i int) error {
	_, err := c.RegisterWorker(ctx, connect.NewRequest(&batonv1.RegisterWorkerRequest{
		Name: scaleName(i), Address: f.addr, Capacity: 64,
	}))
	if err == nil {
		f.registered[i].Store(true)
	}
	return err
}

// heartbeatLoop heartbeats as fake i every interval, first after delay.
func (f *scaleFleet) heartbeatLoop(ctx context.Context, i int, delay time.Duration) {
	t := time.NewTimer(max(delay, 0))
	defer t.Stop()
	req := &batonv1.HeartbeatRequest{WorkerId: scaleName(i)}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(scaleHeartbeat)
		c := f.noop[i%scaleClients]
		if !f.toNoop.Load() {
			if !f.registered[i].Load() {
				continue
			}
			c = f.real[i%scaleClients]
		}
		t0 := time.Now()
		_, err := c.Heartbeat(ctx, connect.NewRequest(req))
		d := time.Since(t0)
		if ctx.Err() != nil {
			return
		}
		if connect.CodeOf(err) == connect.CodeNotFound {
			if f.register(ctx, c, i) == nil {
				f.reregistered.Add(1)
			}
		}
		f.mu.Lock()
		if f.lat != nil {
			f.lat.add(d, err)
		}
		f.mu.Unlock()
		if err != nil {
			f.errMu.Lock()
			if f.err == nil {
				f.err = err
			}
			f.errMu.Unlock()
		}
	}
}

func (f *scaleFleet) firstErr() error {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	return f.err
}

// scaleWindowResult is one measured window.
type scaleWindowResult struct {
	cores float64 // process CPU time over wall time
	rate  float64 // heartbeats answered per second
	errs  int
	lat   *latencies
	wall  time.Duration
}

// measure runs extra (if any) for d and returns the window's figures.
// extra starts its goroutines on wg and stops when its context ends.
func (f *scaleFleet) measure(d time.Duration, extra func(context.Context, *sync.WaitGroup)) scaleWindowResult {
	lat := &latencies{}
	f.mu.Lock()
	f.lat = lat
	f.mu.Unlock()
	cpu0, t0 := cpuTime(), time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	var wg sync.WaitGroup
	if extra != nil {
		extra(ctx, &wg)
	}
	<-ctx.Done()
	cancel()
	wg.Wait()
	f.mu.Lock()
	f.lat = nil
	f.mu.Unlock()
	wall := time.Since(t0)
	return scaleWindowResult{
		cores: (cpuTime() - cpu0).Seconds() / wall.Seconds(),
		rate:  float64(len(lat.d)) / wall.Seconds(),
		errs:  lat.errs,
		lat:   lat,
		wall:  wall,
	}
}

// probe calls fn rate times a second, open loop (a slow call does not delay
// the next), until ctx ends, and waits for the calls in flight. Each call
// may take 10 s.
func probe(ctx context.Context, wg *sync.WaitGroup, rate int, lat *latencies, fn func(context.Context, int) error) {
	wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		var calls sync.WaitGroup
		defer calls.Wait()
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			calls.Go(func() {
				cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				t0 := time.Now()
				err := fn(cctx, n)
				lat.addLocked(time.Since(t0), err)
			})
		}
	})
}

// latencies collects call durations (of successful calls) and errors.
type latencies struct {
	mu       sync.Mutex
	d        []time.Duration
	errs     int
	firstErr error
}

// add records a call; the caller serialises calls.
func (l *latencies) add(d time.Duration, err error) {
	if err != nil {
		l.errs++
		if l.firstErr == nil {
			l.firstErr = err
		}
		return
	}
	l.d = append(l.d, d)
}

func (l *latencies) addLocked(d time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.add(d, err)
}

// percentileMs is the nearest-rank percentile, in milliseconds.
func (l *latencies) percentileMs(p float64) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	i := min(max(int(float64(len(s))*p+0.999999)-1, 0), len(s)-1)
	return float64(s[i]) / float64(time.Millisecond)
}

// busy is the sum of the durations.
func (l *latencies) busy() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var sum time.Duration
	for _, d := range l.d {
		sum += d
	}
	return sum
}

// timedStore times UpsertWorker, the store write every registration and
// heartbeat makes, between start and stop. The time includes waiting for
// the store's single writer.
type timedStore struct {
	store.Store
	mu  sync.Mutex
	lat *latencies
}

func (s *timedStore) start() {
	s.mu.Lock()
	s.lat = &latencies{}
	s.mu.Unlock()
}

func (s *timedStore) stop() *latencies {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lat
	s.lat = nil
	return l
}

func (s *timedStore) UpsertWorker(ctx context.Context, w store.Worker) error {
	t0 := time.Now()
	err := s.Store.UpsertWorker(ctx, w)
	d := time.Since(t0)
	s.mu.Lock()
	if s.lat != nil {
		s.lat.addLocked(d, err)
	}
	s.mu.Unlock()
	return err
}

// cpuTime is the process's user plus system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// serveScale serves h over h2c on a loopback port until the benchmark ends.
func serveScale(b *testing.B, h http.Handler) string {
	b.Helper()
	srv, err := serving.Listen("127.0.0.1:0", h, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve()
	}()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	return srv.Addr().String()
}

// fakeWorker answers StartJob (RUNNING) and QueryJob (SUCCEEDED) at once.
type fakeWorker struct {
	batonv1connect.UnimplementedWorkerServiceHandler
}

func fakeWorkerHandler() http.Handler {
	path, h := batonv1connect.NewWorkerServiceHandler(fakeWorker{})
	mux := http.NewServeMux()
	mux.Handle(path, h)
	return mux
}

func (fakeWorker) StartJob(_ context.Context, req *connect.Request[batonv1.WorkerServiceStartJobRequest]) (*connect.Response[batonv1.WorkerServiceStartJobResponse], error) {
	id := req.Msg.GetJobId()
	return connect.NewResponse(&batonv1.WorkerServiceStartJobResponse{
		JobId:  id,
		Status: &batonv1.JobStatus{JobId: id, State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 1},
	}), nil
}

func (fakeWorker) QueryJob(_ context.Context, req *connect.Request[batonv1.WorkerServiceQueryJobRequest]) (*connect.Response[batonv1.WorkerServiceQueryJobResponse], error) {
	return connect.NewResponse(&batonv1.WorkerServiceQueryJobResponse{
		Done:   true,
		Status: &batonv1.JobStatus{JobId: req.Msg.GetJobId(), State: batonv1.JobState_JOB_STATE_SUCCEEDED},
	}), nil
}

// noopScheduler answers heartbeats and does nothing else.
type noopScheduler struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
}

func (noopScheduler) Heartbeat(context.Context, *connect.Request[batonv1.HeartbeatRequest]) (*connect.Response[batonv1.HeartbeatResponse], error) {
	return connect.NewResponse(&batonv1.HeartbeatResponse{State: batonv1.WorkerState_WORKER_STATE_READY}), nil
}
