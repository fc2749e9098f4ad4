package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// rpcCount returns the number of observations of the RPC histogram for
// procedure and code, or 0 when there is no such series.
func rpcCount(t *testing.T, g prometheus.Gatherer, name, procedure, code string) uint64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if label(m, "procedure") == procedure && label(m, "code") == code {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// serveEcho serves a unary and a server-streaming procedure through the
// interceptor; a request whose value is "fail" gets NotFound.
func serveEcho(t *testing.T, ic connect.Interceptor) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/test.Echo/Unary", connect.NewUnaryHandler("/test.Echo/Unary",
		func(_ context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[emptypb.Empty], error) {
			if req.Msg.GetValue() == "fail" {
				return nil, connect.NewError(connect.CodeNotFound, errors.New("no such thing"))
			}
			return connect.NewResponse(&emptypb.Empty{}), nil
		}, connect.WithInterceptors(ic)))
	mux.Handle("/test.Echo/Stream", connect.NewServerStreamHandler("/test.Echo/Stream",
		func(_ context.Context, req *connect.Request[wrapperspb.StringValue], s *connect.ServerStream[emptypb.Empty]) error {
			if err := s.Send(&emptypb.Empty{}); err != nil {
				return err
			}
			if req.Msg.GetValue() == "fail" {
				return connect.NewError(connect.CodeUnavailable, errors.New("gone"))
			}
			return nil
		}, connect.WithInterceptors(ic)))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func TestRPCInterceptorRecordsProcedureAndCode(t *testing.T) {
	t.Parallel()
	m := NewScheduler()
	srv := serveEcho(t, m.Interceptor())
	tests := []struct {
		name      string
		protocol  connect.ClientOption
		procedure string
		value     string
		stream    bool
		wantCode  string
	}{
		{name: "unary ok over connect", protocol: nil, procedure: "/test.Echo/Unary", value: "x", wantCode: "ok"},
		{name: "unary not found over grpc", protocol: connect.WithGRPC(), procedure: "/test.Echo/Unary", value: "fail", wantCode: "not_found"},
		{name: "stream ok over grpc-web", protocol: connect.WithGRPCWeb(), procedure: "/test.Echo/Stream", value: "x", stream: true, wantCode: "ok"},
		{name: "stream unavailable over connect", protocol: nil, procedure: "/test.Echo/Stream", value: "fail", stream: true, wantCode: "unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Not parallel: each case counts the observations it adds.
			before := rpcCount(t, m.Registry(), "baton_scheduler_rpc_duration_seconds", tc.procedure, tc.wantCode)
			var opts []connect.ClientOption
			if tc.protocol != nil {
				opts = append(opts, tc.protocol)
			}
			hc := srv.Client()
			req := connect.NewRequest(wrapperspb.String(tc.value))
			var err error
			if tc.stream {
				c := connect.NewClient[wrapperspb.StringValue, emptypb.Empty](hc, srv.URL+tc.procedure, opts...)
				s, serr := c.CallServerStream(t.Context(), req)
				if serr != nil {
					t.Fatal(serr)
				}
				for s.Receive() {
				}
				err = s.Err()
				s.Close()
			} else {
				c := connect.NewClient[wrapperspb.StringValue, emptypb.Empty](hc, srv.URL+tc.procedure, opts...)
				_, err = c.CallUnary(t.Context(), req)
			}
			if got := codeLabel(err); got != tc.wantCode {
				t.Fatalf("call ended with %q (%v), want %q", got, err, tc.wantCode)
			}
			after := rpcCount(t, m.Registry(), "baton_scheduler_rpc_duration_seconds", tc.procedure, tc.wantCode)
			if after != before+1 {
				t.Errorf("observations of %s code=%s: %d, then %d; want one more", tc.procedure, tc.wantCode, before, after)
			}
		})
	}
}

func TestRosterCollectorReadsStateAtScrape(t *testing.T) {
	t.Parallel()
	m := NewScheduler()
	var mu sync.Mutex
	roster := Roster{Workers: map[batonv1.WorkerState]int{batonv1.WorkerState_WORKER_STATE_READY: 2}, RunningJobs: 3}
	if err := m.ObserveRoster(func() Roster {
		mu.Lock()
		defer mu.Unlock()
		return roster
	}); err != nil {
		t.Fatal(err)
	}
	want := func(ready, draining, down, left, restarting, running int) string {
		return fmt.Sprintf(`# HELP baton_scheduler_jobs_running Jobs running or being placed on workers, as their last heartbeats reported.
# TYPE baton_scheduler_jobs_running gauge
baton_scheduler_jobs_running %d
# HELP baton_scheduler_workers Workers in the roster, by state.
# TYPE baton_scheduler_workers gauge
baton_scheduler_workers{state="down"} %d
baton_scheduler_workers{state="draining"} %d
baton_scheduler_workers{state="left"} %d
baton_scheduler_workers{state="ready"} %d
baton_scheduler_workers{state="restarting"} %d
`, running, down, draining, left, ready, restarting)
	}
	names := []string{"baton_scheduler_workers", "baton_scheduler_jobs_running"}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want(2, 0, 0, 0, 0, 3)), names...); err != nil {
		t.Error(err)
	}
	mu.Lock()
	roster = Roster{Workers: map[batonv1.WorkerState]int{
		batonv1.WorkerState_WORKER_STATE_READY:      1,
		batonv1.WorkerState_WORKER_STATE_DRAINING:   1,
		batonv1.WorkerState_WORKER_STATE_DOWN:       4,
		batonv1.WorkerState_WORKER_STATE_LEFT:       5,
		batonv1.WorkerState_WORKER_STATE_RESTARTING: 6,
	}, RunningJobs: 0}
	mu.Unlock()
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want(1, 1, 4, 5, 6, 0)), names...); err != nil {
		t.Error(err)
	}
	if err := m.ObserveRoster(func() Roster { return Roster{} }); err == nil {
		t.Error("a second ObserveRoster on the same metrics succeeded; want an error")
	}
}

func TestWorkerMetrics(t *testing.T) {
	t.Parallel()
	m := NewWorker()
	running := 0
	var mu sync.Mutex
	if err := m.ObserveRunning(func() int { mu.Lock(); defer mu.Unlock(); return running }); err != nil {
		t.Fatal(err)
	}
	if err := m.ObserveRunning(func() int { return 0 }); err == nil {
		t.Error("a second ObserveRunning on the same metrics succeeded; want an error")
	}
	mu.Lock()
	running = 2
	mu.Unlock()
	m.JobStarted()
	m.JobStarted()
	m.JobStarted()
	m.JobFinished(batonv1.JobState_JOB_STATE_SUCCEEDED)
	m.JobFinished(batonv1.JobState_JOB_STATE_TIMED_OUT)
	m.OutputStreamed(5)
	m.OutputStreamed(0)
	m.OutputStreamed(1 << 20)
	m.HeartbeatSent(nil)
	m.HeartbeatSent(nil)
	m.HeartbeatSent(errors.New("unreachable"))
	const want = `# HELP baton_worker_heartbeats_sent_total Heartbeats sent to the scheduler, by result (ok or error).
# TYPE baton_worker_heartbeats_sent_total counter
baton_worker_heartbeats_sent_total{result="error"} 1
baton_worker_heartbeats_sent_total{result="ok"} 2
# HELP baton_worker_jobs_finished_total Jobs of this worker that reached a final state, by that state.
# TYPE baton_worker_jobs_finished_total counter
baton_worker_jobs_finished_total{state="failed"} 0
baton_worker_jobs_finished_total{state="lost"} 0
baton_worker_jobs_finished_total{state="stopped"} 0
baton_worker_jobs_finished_total{state="succeeded"} 1
baton_worker_jobs_finished_total{state="timed_out"} 1
# HELP baton_worker_jobs_running Jobs starting or running on this worker.
# TYPE baton_worker_jobs_running gauge
baton_worker_jobs_running 2
# HELP baton_worker_jobs_started_total Jobs whose process this worker started.
# TYPE baton_worker_jobs_started_total counter
baton_worker_jobs_started_total 3
# HELP baton_worker_output_streamed_bytes_total Bytes of job output sent to followers by StreamJobOutput.
# TYPE baton_worker_output_streamed_bytes_total counter
baton_worker_output_streamed_bytes_total 1.048581e+06
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"baton_worker_heartbeats_sent_total", "baton_worker_jobs_finished_total", "baton_worker_jobs_running",
		"baton_worker_jobs_started_total", "baton_worker_output_streamed_bytes_total"); err != nil {
		t.Error(err)
	}
}

// TestWorkerJobUsage: each ended job's CPU and peak memory go into
// histograms labelled only by source; an unknown peak is left out, and a
// source other than the two known ones cannot add label values.
func TestWorkerJobUsage(t *testing.T) {
	t.Parallel()
	m := NewWorker()
	m.JobUsage(1200*time.Millisecond, 100<<20, "cgroup")
	m.JobUsage(5*time.Millisecond, 0, "rusage")
	m.JobUsage(time.Second, 1<<20, "job-0193a1b2")
	const want = `# HELP baton_worker_job_cpu_seconds CPU time (user + system) of each job that ended on this worker, by where it was measured (cgroup or rusage).
# TYPE baton_worker_job_cpu_seconds histogram
baton_worker_job_cpu_seconds_bucket{source="cgroup",le="0.01"} 0
baton_worker_job_cpu_seconds_bucket{source="cgroup",le="0.1"} 0
baton_worker_job_cpu_seconds_bucket{source="cgroup",le="1"} 0
baton_worker_job_cpu_seconds_bucket{source="cgroup",le="10"} 1
baton_worker_job_cpu_seconds_bucket{source="cgroup",le="60"} 1
baton_worker_job_cpu_seconds_bucket{source="cgroup",le="600"} 1
baton_worker_job_cpu_seconds_bucket{source="cgroup",le="3600"} 1
baton_worker_job_cpu_seconds_bucket{source="cgroup",le="21600"} 1
baton_worker_job_cpu_seconds_bucket{source="cgroup",le="86400"} 1
baton_worker_job_cpu_seconds_bucket{source="cgroup",le="+Inf"} 1
baton_worker_job_cpu_seconds_sum{source="cgroup"} 1.2
baton_worker_job_cpu_seconds_count{source="cgroup"} 1
baton_worker_job_cpu_seconds_bucket{source="other",le="0.01"} 0
baton_worker_job_cpu_seconds_bucket{source="other",le="0.1"} 0
baton_worker_job_cpu_seconds_bucket{source="other",le="1"} 1
baton_worker_job_cpu_seconds_bucket{source="other",le="10"} 1
baton_worker_job_cpu_seconds_bucket{source="other",le="60"} 1
baton_worker_job_cpu_seconds_bucket{source="other",le="600"} 1
baton_worker_job_cpu_seconds_bucket{source="other",le="3600"} 1
baton_worker_job_cpu_seconds_bucket{source="other",le="21600"} 1
baton_worker_job_cpu_seconds_bucket{source="other",le="86400"} 1
baton_worker_job_cpu_seconds_bucket{source="other",le="+Inf"} 1
baton_worker_job_cpu_seconds_sum{source="other"} 1
baton_worker_job_cpu_seconds_count{source="other"} 1
baton_worker_job_cpu_seconds_bucket{source="rusage",le="0.01"} 1
baton_worker_job_cpu_seconds_bucket{source="rusage",le="0.1"} 1
baton_worker_job_cpu_seconds_bucket{source="rusage",le="1"} 1
baton_worker_job_cpu_seconds_bucket{source="rusage",le="10"} 1
baton_worker_job_cpu_seconds_bucket{source="rusage",le="60"} 1
baton_worker_job_cpu_seconds_bucket{source="rusage",le="600"} 1
baton_worker_job_cpu_seconds_bucket{source="rusage",le="3600"} 1
baton_worker_job_cpu_seconds_bucket{source="rusage",le="21600"} 1
baton_worker_job_cpu_seconds_bucket{source="rusage",le="86400"} 1
baton_worker_job_cpu_seconds_bucket{source="rusage",le="+Inf"} 1
baton_worker_job_cpu_seconds_sum{source="rusage"} 0.005
baton_worker_job_cpu_seconds_count{source="rusage"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "baton_worker_job_cpu_seconds"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.jobMemory); n != 2 {
		t.Errorf("peak memory series: %d, want 2 (cgroup and other; the unknown peak is left out)", n)
	}
}

func TestQueueMetrics(t *testing.T) {
	t.Parallel()
	m := NewScheduler()
	m.JobQueued(50)
	m.JobQueued(50)
	m.JobQueued(80)
	m.JobQueued(-3)  // out of the API's range: counted as 0
	m.JobQueued(500) // and as 100
	m.JobLeftQueue(50, QueuePlaced, 20*time.Millisecond)
	m.JobLeftQueue(80, QueueTimedOut, time.Hour)
	m.JobLeftQueue(500, QueueStopped, -time.Second) // a clock step back counts as no wait
	m.JobLeftQueue(50, "vanished", time.Second)     // not observed, but no longer queued
	const want = `# HELP baton_scheduler_jobs_queued Jobs waiting in the scheduler's queue for a worker with a free slot, by priority.
# TYPE baton_scheduler_jobs_queued gauge
baton_scheduler_jobs_queued{priority="0"} 1
baton_scheduler_jobs_queued{priority="100"} 0
baton_scheduler_jobs_queued{priority="50"} 0
baton_scheduler_jobs_queued{priority="80"} 0
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "baton_scheduler_jobs_queued"); err != nil {
		t.Error(err)
	}
	waits := queueWaits(t, m.Registry())
	for _, tc := range []struct {
		outcome string
		count   uint64
		sum     float64
	}{
		{QueuePlaced, 1, 0.02},
		{QueueStopped, 1, 0},
		{QueueTimedOut, 1, 3600},
	} {
		h, ok := waits[tc.outcome]
		if !ok {
			t.Errorf("no queue wait series for outcome %q", tc.outcome)
			continue
		}
		if h.GetSampleCount() != tc.count || h.GetSampleSum() != tc.sum {
			t.Errorf("queue wait %s: %d observations summing to %vs, want %d summing to %vs",
				tc.outcome, h.GetSampleCount(), h.GetSampleSum(), tc.count, tc.sum)
		}
	}
	if len(waits) != len(queueOutcomes) {
		t.Errorf("queue wait series for %d outcomes, want %d", len(waits), len(queueOutcomes))
	}

	// A restarted scheduler's loaded queue replaces the counts, series
	// with no job included.
	m.QueueLoaded(map[int32]int{10: 2, 50: 1})
	m.JobQueued(10)
	const loaded = `# HELP baton_scheduler_jobs_queued Jobs waiting in the scheduler's queue for a worker with a free slot, by priority.
# TYPE baton_scheduler_jobs_queued gauge
baton_scheduler_jobs_queued{priority="10"} 3
baton_scheduler_jobs_queued{priority="50"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(loaded), "baton_scheduler_jobs_queued"); err != nil {
		t.Error(err)
	}
}

// queueWaits returns the queue wait histograms by outcome.
func queueWaits(t *testing.T, g prometheus.Gatherer) map[string]*dto.Histogram {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := map[string]*dto.Histogram{}
	for _, f := range families {
		if f.GetName() != "baton_scheduler_queue_wait_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			out[label(m, "outcome")] = m.GetHistogram()
		}
	}
	return out
}

// TestNilMetricsRecordNothing checks the promise services rely on when
// they call an optional *Scheduler or *Worker unconditionally: on a nil one
// every recording method returns without panicking and records nothing,
// neither in the default registry nor in the registries of live metrics,
// and Mount hands back the component's own handler. It is not parallel: it
// compares the process-wide default registry before and after.
func TestNilMetricsRecordNothing(t *testing.T) {
	liveS, liveW := NewScheduler(), NewWorker()
	liveS.JobStarted()
	liveW.JobStarted()
	gatherers := []struct {
		name string
		g    prometheus.Gatherer
	}{
		{"default registry", prometheus.DefaultGatherer},
		{"a live scheduler's registry", liveS.Registry()},
		{"a live worker's registry", liveW.Registry()},
	}
	before := make([]string, len(gatherers))
	for i, g := range gatherers {
		before[i] = dumpMetrics(t, g.g)
	}

	var s *Scheduler
	var w *Worker
	type nilCall struct {
		name string
		call func()
	}
	calls := []nilCall{
		{"Scheduler.JobStarted", s.JobStarted},
		{"Scheduler.HeartbeatReceived", s.HeartbeatReceived},
		{"Scheduler.OutputRelayed", func() { s.OutputRelayed(10) }},
		{"Scheduler.JobQueued", func() { s.JobQueued(50) }},
		{"Scheduler.JobLeftQueue", func() { s.JobLeftQueue(50, QueuePlaced, time.Second) }},
		{"Scheduler.QueueLoaded", func() { s.QueueLoaded(map[int32]int{50: 1}) }},
		{"Worker.JobStarted", w.JobStarted},
		{"Worker.JobUsage", func() { w.JobUsage(time.Second, 1<<20, "cgroup") }},
		{"Worker.OutputStreamed", func() { w.OutputStreamed(10) }},
		{"Worker.HeartbeatSent ok", func() { w.HeartbeatSent(nil) }},
		{"Worker.HeartbeatSent error", func() { w.HeartbeatSent(errors.New("unreachable")) }},
	}
	for _, st := range jobEnds {
		calls = append(calls,
			nilCall{"Scheduler.JobFinished " + jobStateLabel(st), func() { s.JobFinished(st) }},
			nilCall{"Worker.JobFinished " + jobStateLabel(st), func() { w.JobFinished(st) }},
		)
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("on a nil receiver: panic %v", r)
				}
			}()
			c.call()
		})
	}
	next := http.NewServeMux()
	if got := s.Mount(next); got != http.Handler(next) {
		t.Errorf("nil *Scheduler Mount returned %T, want the handler it was given", got)
	}
	if got := w.Mount(next); got != http.Handler(next) {
		t.Errorf("nil *Worker Mount returned %T, want the handler it was given", got)
	}

	for i, g := range gatherers {
		if after := dumpMetrics(t, g.g); after != before[i] {
			t.Errorf("calls on nil metrics changed %s:\nbefore:\n%s\nafter:\n%s", g.name, before[i], after)
		}
	}
}

// dumpMetrics renders every metric g gathers except the go_* and process_*
// ones, which change by themselves.
func dumpMetrics(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var b strings.Builder
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "go_") || strings.HasPrefix(f.GetName(), "process_") {
			continue
		}
		for _, m := range f.GetMetric() {
			fmt.Fprintf(&b, "%s %v\n", f.GetName(), m)
		}
	}
	return b.String()
}

// TestRegistriesAreSeparate checks what `baton dev` relies on: a scheduler
// and two workers in one process each report their own numbers, and
// nothing lands in the global registry.
func TestRegistriesAreSeparate(t *testing.T) {
	t.Parallel()
	s := NewScheduler(WithProcessMetrics())
	w1, w2 := NewWorker(), NewWorker()
	w1.JobStarted()
	w2.JobStarted()
	w2.JobStarted()
	s.JobStarted()
	for _, tc := range []struct {
		name string
		c    prometheus.Counter
		want float64
	}{
		{"scheduler", s.jobsStarted, 1},
		{"worker 1", w1.jobsStarted, 1},
		{"worker 2", w2.jobsStarted, 2},
	} {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%s: jobs started = %v, want %v", tc.name, got, tc.want)
		}
	}
	if n, err := testutil.GatherAndCount(s.Registry(), "go_goroutines", "process_cpu_seconds_total"); err != nil || n != 2 {
		t.Errorf("scheduler registry with process metrics: %d of go_goroutines and process_cpu_seconds_total (%v), want 2", n, err)
	}
	if n, _ := testutil.GatherAndCount(w1.Registry(), "go_goroutines"); n != 0 {
		t.Errorf("worker registry without process metrics has go_goroutines")
	}
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "baton_") {
			t.Errorf("%s is in the default registry", f.GetName())
		}
	}
}

// TestMetricNamesFollowConventions runs promlint over every metric, with
// each series present.
func TestMetricNamesFollowConventions(t *testing.T) {
	t.Parallel()
	s := NewScheduler()
	if err := s.ObserveRoster(func() Roster { return Roster{} }); err != nil {
		t.Fatal(err)
	}
	s.rpc.observe("/baton.v1.SchedulerService/StartJob", nil, time.Now())
	s.JobQueued(50)
	w := NewWorker()
	if err := w.ObserveRunning(func() int { return 0 }); err != nil {
		t.Fatal(err)
	}
	w.rpc.observe("/baton.v1.WorkerService/StartJob", nil, time.Now())
	w.JobUsage(time.Second, 1<<20, "cgroup")
	for _, g := range []prometheus.Gatherer{s.Registry(), w.Registry()} {
		problems, err := testutil.GatherAndLint(g)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}

func TestHandlerServesTheRegistry(t *testing.T) {
	t.Parallel()
	m := NewScheduler()
	m.HeartbeatReceived()
	m.OutputRelayed(42)
	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"baton_scheduler_heartbeats_received_total 1",
		"baton_scheduler_output_relayed_bytes_total 42",
		"baton_scheduler_jobs_started_total 0",
		`baton_scheduler_jobs_finished_total{state="lost"} 0`,
	} {
		if !strings.Contains(string(body), line+"\n") {
			t.Errorf("/metrics lacks %q:\n%s", line, body)
		}
	}
}

func TestMountServesMetricsBesideTheService(t *testing.T) {
	t.Parallel()
	m := NewWorker()
	m.OutputStreamed(7)
	service := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "service "+r.Method+" "+r.URL.Path)
	})
	srv := httptest.NewServer(m.Mount(service))
	t.Cleanup(srv.Close)
	client := srv.Client()
	tests := []struct {
		method, path, want string
	}{
		{"GET", "/metrics", "baton_worker_output_streamed_bytes_total 7\n"},
		{"POST", "/baton.v1.WorkerService/StartJob", "service POST /baton.v1.WorkerService/StartJob"},
		{"POST", "/metrics", "service POST /metrics"},
	}
	for _, tc := range tests {
		req, err := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if !strings.Contains(string(body), tc.want) {
			t.Errorf("%s %s: body %q lacks %q", tc.method, tc.path, body, tc.want)
		}
	}
	rec := httptest.NewRecorder()
	(*Worker)(nil).Mount(service).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if got := rec.Body.String(); got != "service GET /metrics" {
		t.Errorf("nil Worker: GET /metrics answered %q, want the service's answer", got)
	}
}
