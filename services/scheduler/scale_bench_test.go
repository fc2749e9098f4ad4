package scheduler_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
	"github.com/baton-run/baton/services/worker"
)

// Shape of BenchmarkScale10kWorkers: scaleWorkers fakes heartbeating every
// scaleHeartbeat, unless BATON_SCALE_WORKERS and BATON_SCALE_HEARTBEAT say
// otherwise (see scaleShape).
var (
	scaleWorkers   = 10000
	scaleHeartbeat = 5 * time.Second
)

const (
	scaleWorkersEnv   = "BATON_SCALE_WORKERS"
	scaleHeartbeatEnv = "BATON_SCALE_HEARTBEAT"

	scaleClients       = 8  // HTTP clients (connections) the fakes share
	scaleRegistrations = 64 // registrations in flight at once
	scaleProbeRate     = 20 // ListWorkers and StartJob calls per second, each
	scalePageSize      = 500
	// scaleWindowEnv sets the length of each measured window (a Go
	// duration); default scaleWindow. The run takes about 2 windows plus
	// the registrations and one heartbeat interval.
	scaleWindowEnv = "BATON_SCALE_WINDOW"
	scaleWindow    = 10 * time.Second
	// scaleLoadEnv, set in the load process only, is the scheduler's
	// address; scalePIDEnv its process id and scaleOutEnv the file the
	// load process writes its figures to.
	scaleLoadEnv = "BATON_SCALE_LOAD"
	scalePIDEnv  = "BATON_SCALE_PID"
	scaleOutEnv  = "BATON_SCALE_OUT"
	// scaleLoadProfileEnv names a file for the load process's CPU profile
	// (the benchmark's own -test.cpuprofile covers the scheduler).
	scaleLoadProfileEnv = "BATON_SCALE_LOAD_PROFILE"
	// scaleProbesEnv limits the full window's calls to a comma-separated
	// subset of list, list-page and start.
	scaleProbesEnv = "BATON_SCALE_PROBES"
)

// BenchmarkScale10kWorkers measures the scheduler with 10,000 simulated
// workers: fakes that register and heartbeat over the real protocol (h2c on
// loopback, the generated client) every 5 s, staggered. Every fake
// advertises one address, served by a fake WorkerService that answers
// StartJob and QueryJob at once.
//
// The scheduler runs in this process and nothing else does: the fakes, the
// fake WorkerService and the API callers run in a second process (this test
// binary again, as TestScaleLoad), so that the scheduler's CPU is its own
// process's and its heap and collector are not the fakes'. Both processes
// share the machine's cores, as a scheduler and its clients would.
//
// Two windows are measured, in this order:
//
//   - hb: the fakes heartbeat;
//   - full: as hb, plus ListWorkers (all workers), ListWorkers (first page
//     of 500) and StartJob at 20 calls/s each, open loop.
//
// CPU is each process's user+sys time over the window's wall time, in
// cores, read by the load process from /proc/<pid>/stat for the scheduler
// and getrusage for itself. Latencies are the callers'; the inside-*
// figures time the same calls within the scheduler's process, from
// request to handler return, over the whole run.
func BenchmarkScale10kWorkers(b *testing.B) {
	if testing.Short() {
		b.Skip("10k-worker scale run skipped in -short mode")
	}
	scaleShape(b)
	window := scaleWindow
	if v := os.Getenv(scaleWindowEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			b.Fatalf("%s=%q: want a positive duration like 20s", scaleWindowEnv, v)
		}
		window = d
	}
	ctx := context.Background()

	st, err := store.Open(ctx, filepath.Join(b.TempDir(), "baton.db"))
	if err != nil {
		b.Fatal(err)
	}
	workerHTTP := serving.NewHTTPClient(nil)
	sched, err := scheduler.New(ctx, scheduler.Options{Store: st, HTTPClient: workerHTTP, HeartbeatInterval: scaleHeartbeat})
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
	// Time each call inside the scheduler's process too (from its request
	// to its handler's return, connect's decoding and encoding included),
	// to tell the scheduler's own time from the transport's and the
	// machine's.
	inside := &serverTimes{byPath: map[string]*latencies{}}
	schedAddr := serveScale(b, identity.AnonymousHandler(inside.wrap(sched.Handler())))

	out := filepath.Join(b.TempDir(), "load.json")
	args := []string{"-test.run=^TestScaleLoad$", "-test.count=1", "-test.timeout=0"}
	if p := os.Getenv(scaleLoadProfileEnv); p != "" {
		args = append(args, "-test.cpuprofile="+p)
	}
	load := exec.Command(os.Args[0], args...)
	load.Env = append(os.Environ(),
		scaleLoadEnv+"="+schedAddr,
		scalePIDEnv+"="+strconv.Itoa(os.Getpid()),
		scaleOutEnv+"="+out,
		scaleWindowEnv+"="+window.String(),
		// The load stands in for other machines; it is tuned to take as
		// little of the shared cores as it can. Each fake's goroutine
		// sleeps 5 s between calls, long enough for the collector to
		// shrink its stack, which the next call grows again; and every
		// collection scans 10,000 goroutine stacks, so fewer of them.
		"GODEBUG=gcshrinkstackoff=1,"+os.Getenv("GODEBUG"),
		"GOGC=400",
	)
	var loadOut bytes.Buffer
	load.Stdout, load.Stderr = &loadOut, &loadOut
	b.ResetTimer()
	if err := load.Run(); err != nil {
		b.Fatalf("load process: %v\n%s", err, loadOut.Bytes())
	}
	b.StopTimer()
	data, err := os.ReadFile(out)
	if err != nil {
		b.Fatalf("load process wrote no figures: %v\n%s", err, loadOut.Bytes())
	}
	var r scaleResult
	if err := json.Unmarshal(data, &r); err != nil {
		b.Fatal(err)
	}

	b.ReportMetric(r.RegistrationsPerSec, "registrations/s")
	b.ReportMetric(r.HB.SchedCores, "sched-cores-hb")
	b.ReportMetric(r.Full.SchedCores, "sched-cores-full")
	b.ReportMetric(r.HB.LoadCores, "load-cores-hb")
	b.ReportMetric(r.Full.LoadCores, "load-cores-full")
	b.ReportMetric(r.HB.Rate, "hb/s")
	b.ReportMetric(r.Full.Rate, "hb/s-full")
	b.ReportMetric(r.HB.P99Ms, "hb-p99-ms")
	b.ReportMetric(r.Full.P99Ms, "hb-p99-ms-full")
	b.ReportMetric(float64(r.HB.Errors+r.Full.Errors), "hb-errors")
	for _, p := range r.Probes {
		b.ReportMetric(p.P50Ms, p.Name+"-p50-ms")
		b.ReportMetric(p.P99Ms, p.Name+"-p99-ms")
		b.ReportMetric(p.MaxMs, p.Name+"-max-ms")
		b.ReportMetric(float64(p.Errors), p.Name+"-errors")
	}
	for name, proc := range map[string]string{
		"inside-hb":    batonv1connect.SchedulerServiceHeartbeatProcedure,
		"inside-list":  batonv1connect.SchedulerServiceListWorkersProcedure,
		"inside-start": batonv1connect.SchedulerServiceStartJobProcedure,
	} {
		if l := inside.get(proc); l != nil {
			b.ReportMetric(l.percentileMs(0.50), name+"-p50-ms")
			b.ReportMetric(l.percentileMs(0.99), name+"-p99-ms")
		}
	}
	b.ReportMetric(float64(r.Reregistered), "reregistrations")
	b.ReportMetric(r.HB.CPUPressure, "cpu-pressure-hb")
	b.ReportMetric(r.Full.CPUPressure, "cpu-pressure-full")
	b.Logf("window %s; %d workers registered in %.1fs; calls: %s; roster after: %v; load average before/after: %s / %s",
		window, scaleWorkers, float64(scaleWorkers)/r.RegistrationsPerSec, r.calls(), r.States, r.LoadAvgBefore, r.LoadAvgAfter)
	if r.FirstErrors != "" {
		b.Logf("first errors: %s", r.FirstErrors)
	}
}

// scaleShape sets the fleet's size and heartbeat interval from the
// environment, where given.
func scaleShape(tb testing.TB) {
	if v := os.Getenv(scaleWorkersEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 200000 {
			tb.Fatalf("%s=%q: want a number of workers from 1 to 200000", scaleWorkersEnv, v)
		}
		scaleWorkers = n
	}
	if v := os.Getenv(scaleHeartbeatEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 100*time.Millisecond {
			tb.Fatalf("%s=%q: want a duration of at least 100ms, like 10s", scaleHeartbeatEnv, v)
		}
		scaleHeartbeat = d
	}
}

// serverTimes times the calls an http.Handler serves, by path.
type serverTimes struct {
	mu     sync.Mutex
	byPath map[string]*latencies
}

func (s *serverTimes) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		h.ServeHTTP(w, r)
		d := time.Since(t0)
		s.mu.Lock()
		l := s.byPath[r.URL.Path]
		if l == nil {
			l = &latencies{}
			s.byPath[r.URL.Path] = l
		}
		s.mu.Unlock()
		l.addLocked(d, nil)
	})
}

func (s *serverTimes) get(path string) *latencies {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byPath[path]
}

// scaleResult is what the load process measured.
type scaleResult struct {
	RegistrationsPerSec float64
	HB, Full            scaleWindowResult
	Probes              []scaleProbe
	Reregistered        int64
	States              map[string]int
	LoadAvgBefore       string
	LoadAvgAfter        string
	FirstErrors         string
}

func (r scaleResult) calls() string {
	var parts []string
	for _, p := range r.Probes {
		parts = append(parts, fmt.Sprintf("%s %d", p.Name, p.Calls))
	}
	return strings.Join(parts, ", ")
}

// scaleWindowResult is one measured window.
type scaleWindowResult struct {
	SchedCores float64 // the scheduler process's CPU time over wall time
	LoadCores  float64 // the load process's
	Rate       float64 // heartbeats answered per second
	P99Ms      float64 // of heartbeats
	Errors     int
	// CPUPressure is the share of the window in which some runnable task
	// on the machine waited for a CPU (PSI "some", see
	// /proc/pressure/cpu): the other tenants' load and our own.
	CPUPressure float64
}

// scaleProbe is one API call's figures in the full window.
type scaleProbe struct {
	Name                string
	Calls, Errors       int
	P50Ms, P99Ms, MaxMs float64
}

// TestScaleLoad is the load process of BenchmarkScale10kWorkers; it is
// skipped unless that benchmark started it.
func TestScaleLoad(t *testing.T) {
	schedAddr := os.Getenv(scaleLoadEnv)
	if schedAddr == "" {
		t.Skip("the load process of BenchmarkScale10kWorkers")
	}
	schedPID, err := strconv.Atoi(os.Getenv(scalePIDEnv))
	if err != nil {
		t.Fatalf("%s: %v", scalePIDEnv, err)
	}
	window, err := time.ParseDuration(os.Getenv(scaleWindowEnv))
	if err != nil {
		t.Fatalf("%s: %v", scaleWindowEnv, err)
	}
	scaleShape(t) // the benchmark's environment is this process's
	ctx := context.Background()
	fakeWorkerAddr := serveScale(t, fakeWorkerHandler())

	httpClients := make([]*http.Client, scaleClients)
	clients := make([]batonv1connect.SchedulerServiceClient, scaleClients)
	for i := range httpClients {
		httpClients[i] = serving.NewHTTPClient(nil)
		clients[i] = batonv1connect.NewSchedulerServiceClient(httpClients[i], serving.BaseURL(schedAddr, false))
	}
	t.Cleanup(func() {
		for _, c := range httpClients {
			c.CloseIdleConnections()
		}
	})
	var r scaleResult
	r.LoadAvgBefore = loadAvg()

	// Register every fake, scaleRegistrations at a time; each heartbeats
	// once registered, at its place in the interval.
	fleet := &scaleFleet{addr: fakeWorkerAddr, clients: clients, schedPID: schedPID}
	regStart := time.Now()
	var regErrs atomic.Int64
	sem := make(chan struct{}, scaleRegistrations)
	var regWG sync.WaitGroup
	for i := range scaleWorkers {
		sem <- struct{}{}
		regWG.Go(func() {
			defer func() { <-sem }()
			if err := fleet.register(ctx, clients[i%scaleClients], i); err != nil {
				regErrs.Add(1)
			}
		})
	}
	regWG.Wait()
	r.RegistrationsPerSec = float64(scaleWorkers) / time.Since(regStart).Seconds()
	if n := regErrs.Load(); n > 0 {
		t.Fatalf("%d of %d registrations failed", n, scaleWorkers)
	}
	hbCtx, stopHB := context.WithCancel(ctx)
	var hbWG sync.WaitGroup
	t.Cleanup(func() { stopHB(); hbWG.Wait() })
	start := time.Now()
	for i := range scaleWorkers {
		hbWG.Go(func() {
			// Spread the fakes uniformly over one interval.
			offset := time.Duration(int64(scaleHeartbeat) * int64(i) / int64(scaleWorkers))
			fleet.heartbeatLoop(hbCtx, i, time.Until(start.Add(offset)))
		})
	}
	// Let one interval of heartbeats through before measuring.
	time.Sleep(scaleHeartbeat)
	r.HB = fleet.measure(window, nil)

	// Each kind of API call has a connection of its own, as separate
	// clients would: a 10,000-worker answer takes ~47 DATA frames, which
	// the server writes one at a time per connection, and the fakes'
	// heartbeats should not queue behind them on a connection that real
	// workers would not share.
	api := make([]batonv1connect.SchedulerServiceClient, 2)
	for i := range api {
		c := serving.NewHTTPClient(nil)
		t.Cleanup(c.CloseIdleConnections)
		api[i] = batonv1connect.NewSchedulerServiceClient(c, serving.BaseURL(schedAddr, false))
	}
	// The whole-roster caller counts the answer's workers on the wire
	// instead of building 10,000 messages: decoding is the client's cost
	// (~6 ms of CPU a call here), and on two shared cores it would be
	// charged to the scheduler's latency.
	rawHTTP := serving.NewHTTPClient(nil)
	t.Cleanup(rawHTTP.CloseIdleConnections)
	rawLister := connect.NewClient[batonv1.ListWorkersRequest, rawList](rawHTTP,
		serving.BaseURL(schedAddr, false)+batonv1connect.SchedulerServiceListWorkersProcedure,
		connect.WithCodec(rawCodec{}))
	type probeSpec struct {
		name string
		lat  *latencies
		call func(context.Context, int) error
	}
	probes := []probeSpec{
		{name: "list", lat: &latencies{}, call: func(ctx context.Context, n int) error {
			res, err := rawLister.CallUnary(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
			if err == nil && res.Msg.workers != scaleWorkers {
				return fmt.Errorf("ListWorkers: %d workers, want %d", res.Msg.workers, scaleWorkers)
			}
			return err
		}},
		{name: "list-page", lat: &latencies{}, call: func(ctx context.Context, n int) error {
			res, err := api[0].ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{PageSize: scalePageSize}))
			if err == nil && (len(res.Msg.GetWorkers()) != scalePageSize || res.Msg.GetNextPageToken() == "") {
				return fmt.Errorf("ListWorkers: a page of %d workers (next page %q), want %d and a next page",
					len(res.Msg.GetWorkers()), res.Msg.GetNextPageToken(), scalePageSize)
			}
			return err
		}},
		{name: "start", lat: &latencies{}, call: func(ctx context.Context, n int) error {
			_, err := api[1].StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{Command: "true"}))
			return err
		}},
	}
	if v := os.Getenv(scaleProbesEnv); v != "" {
		want := strings.Split(v, ",")
		probes = slices.DeleteFunc(probes, func(p probeSpec) bool { return !slices.Contains(want, p.name) })
	}
	r.Full = fleet.measure(window, func(ctx context.Context, wg *sync.WaitGroup) {
		for i := range probes {
			probe(ctx, wg, scaleProbeRate, probes[i].lat, probes[i].call)
		}
	})
	r.LoadAvgAfter = loadAvg()
	var firstErrs []string
	for i := range probes {
		p := &probes[i]
		r.Probes = append(r.Probes, scaleProbe{
			Name: p.name, Calls: len(p.lat.d), Errors: p.lat.errs,
			P50Ms: p.lat.percentileMs(0.50), P99Ms: p.lat.percentileMs(0.99), MaxMs: p.lat.percentileMs(1),
		})
		if p.lat.firstErr != nil {
			firstErrs = append(firstErrs, fmt.Sprintf("%s: %v", p.name, p.lat.firstErr))
		}
	}
	if err := fleet.firstErr(); err != nil {
		firstErrs = append(firstErrs, fmt.Sprintf("heartbeat: %v", err))
	}
	r.FirstErrors = strings.Join(firstErrs, "; ")
	r.Reregistered = fleet.reregistered.Load()

	res, err := api[0].ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	r.States = map[string]int{}
	for _, w := range res.Msg.GetWorkers() {
		r.States[w.GetState().String()]++
	}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(os.Getenv(scaleOutEnv), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// scaleFleet is the set of fake workers.
type scaleFleet struct {
	addr     string
	clients  []batonv1connect.SchedulerServiceClient // shared by the fakes
	schedPID int

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
	return err
}

// heartbeatLoop heartbeats as fake i every interval, first after delay.
func (f *scaleFleet) heartbeatLoop(ctx context.Context, i int, delay time.Duration) {
	t := time.NewTimer(max(delay, 0))
	defer t.Stop()
	req := &batonv1.HeartbeatRequest{WorkerId: scaleName(i)}
	c := f.clients[i%scaleClients]
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(scaleHeartbeat)
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

// measure runs extra (if any) for d and returns the window's figures.
// extra starts its goroutines on wg and stops when its context ends.
func (f *scaleFleet) measure(d time.Duration, extra func(context.Context, *sync.WaitGroup)) scaleWindowResult {
	lat := &latencies{}
	f.mu.Lock()
	f.lat = lat
	f.mu.Unlock()
	sched0, self0, psi0, t0 := procCPU(f.schedPID), cpuTime(), cpuPressure(), time.Now()
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
		SchedCores:  (procCPU(f.schedPID) - sched0).Seconds() / wall.Seconds(),
		LoadCores:   (cpuTime() - self0).Seconds() / wall.Seconds(),
		Rate:        float64(len(lat.d)) / wall.Seconds(),
		P99Ms:       lat.percentileMs(0.99),
		Errors:      lat.errs,
		CPUPressure: (cpuPressure() - psi0).Seconds() / wall.Seconds(),
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

// cpuTime is the process's user plus system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is process pid's user plus system CPU time so far, from
// proc(5) /proc/<pid>/stat: fields 14 and 15, in clock ticks of 1/100 s
// (USER_HZ, 100 on every Linux architecture Go runs on), counting all its
// threads. It is 0 if the file cannot be read.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; the fields after it
	// start after its closing parenthesis, with field 3.
	rest := data[bytes.LastIndexByte(data, ')')+1:]
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// cpuPressure is the machine's total CPU stall time (PSI "some") so far, 0
// where the kernel does not report it.
func cpuPressure() time.Duration {
	data, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return 0
	}
	// some avg10=1.00 avg60=2.00 avg300=3.00 total=123456 (microseconds)
	line, _, _ := strings.Cut(string(data), "\n")
	i := strings.Index(line, "total=")
	if !strings.HasPrefix(line, "some ") || i < 0 {
		return 0
	}
	us, err := strconv.ParseInt(strings.TrimSpace(line[i+len("total="):]), 10, 64)
	if err != nil {
		return 0
	}
	return time.Duration(us) * time.Microsecond
}

// loadAvg is the machine's 1, 5 and 15-minute load averages, from
// /proc/loadavg: the benchmark shares the machine.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// serveScale serves h over h2c on a loopback port until the test or
// benchmark ends.
func serveScale(b testing.TB, h http.Handler) string {
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

// fakeWorkerHandler serves fakeWorker with a real worker's handler
// options (no response compression, in particular).
func fakeWorkerHandler() http.Handler {
	logger := slog.New(slog.DiscardHandler)
	path, h := batonv1connect.NewWorkerServiceHandler(fakeWorker{},
		serving.HandlerOptions("the fake worker", logger, time.Minute, identity.NewAuthorizer(worker.Policy(), nil, logger))...)
	mux := http.NewServeMux()
	mux.Handle(path, h)
	return identity.AnonymousHandler(mux)
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

// rawList is a ListWorkersResponse left encoded: how many workers it
// holds.
type rawList struct {
	workers int
}

// rawCodec is the binary protobuf codec, except that it reads a rawList by
// counting field 1 (workers) on the wire.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(msg any) ([]byte, error) {
	pm, ok := msg.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", msg)
	}
	return proto.Marshal(pm)
}

func (rawCodec) Unmarshal(data []byte, msg any) error {
	l, ok := msg.(*rawList)
	if !ok {
		pm, ok := msg.(proto.Message)
		if !ok {
			return fmt.Errorf("%T is not a protobuf message", msg)
		}
		return proto.Unmarshal(data, pm)
	}
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		n = protowire.ConsumeFieldValue(num, typ, data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		if num == 1 {
			l.workers++
		}
	}
	return nil
}
