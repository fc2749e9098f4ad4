package scheduler_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/serving"
)

// scrape fetches url's /metrics over HTTP and parses it.
func scrape(t *testing.T, client *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s/metrics: %v", url, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics: %s", url, res.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parse %s/metrics: %v", url, err)
	}
	return families
}

// value returns the value of the series of family name with the given
// labels (name=value pairs): a counter's or gauge's value, a histogram's
// observation count. ok is false when there is no such series.
func value(families map[string]*dto.MetricFamily, name string, labels ...string) (v float64, ok bool) {
	f := families[name]
	if f == nil {
		return 0, false
	}
	want := map[string]string{}
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		want[k] = v
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(want) {
			continue
		}
		for _, l := range m.GetLabel() {
			if want[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

type seriesWant struct {
	name   string
	labels []string
	want   float64
	// atLeast accepts any value from want up (heartbeats keep coming).
	atLeast bool
}

func (s seriesWant) String() string {
	return fmt.Sprintf("%s{%s}", s.name, strings.Join(s.labels, ","))
}

// check reports the series that are missing or have another value.
func check(families map[string]*dto.MetricFamily, wants []seriesWant) []string {
	var bad []string
	for _, w := range wants {
		got, ok := value(families, w.name, w.labels...)
		switch {
		case !ok:
			bad = append(bad, w.String()+" missing")
		case w.atLeast && got < w.want:
			bad = append(bad, fmt.Sprintf("%s = %v, want at least %v", w, got, w.want))
		case !w.atLeast && got != w.want:
			bad = append(bad, fmt.Sprintf("%s = %v, want %v", w, got, w.want))
		}
	}
	return bad
}

// TestMetricsAfterAJob runs a job through a scheduler and a worker that
// both record metrics, and checks what a Prometheus scrape of each shows.
func TestMetricsAfterAJob(t *testing.T) {
	t.Parallel()
	sm, wm := metrics.NewScheduler(metrics.WithProcessMetrics()), metrics.NewWorker()
	sched := startScheduler(t, "", func(o *scheduler.Options) { o.Metrics = sm })
	// A second listener on the same scheduler, with /metrics mounted, as
	// `baton scheduler` serves its grpc_server and http_server.
	mounted, err := serving.Listen("127.0.0.1:0", sm.Mount(identity.AnonymousHandler(sched.Handler())), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	mountedDone := make(chan error, 1)
	go func() { mountedDone <- mounted.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = mounted.Shutdown(ctx)
		<-mountedDone
	})
	schedURL := "http://" + mounted.Addr().String()
	workerURL := startWorkerWith(t, "w1", sched, workerSetup{metrics: wm}).url
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")

	scrapeHTTP := serving.NewHTTPClient(nil)
	t.Cleanup(scrapeHTTP.CloseIdleConnections)
	// Through the mounted listener: the RPCs it serves are timed too.
	client := batonv1connect.NewSchedulerServiceClient(scrapeHTTP, schedURL, connect.WithGRPC())
	res, err := client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"}))
	if err != nil {
		t.Fatalf("StartJob: %v", err)
	}
	id := res.Msg.GetJobId()
	stream, err := client.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Follow: true}))
	if err != nil {
		t.Fatalf("StreamJobOutput: %v", err)
	}
	var out strings.Builder
	for stream.Receive() {
		out.Write(stream.Msg().GetChunk().GetData())
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("StreamJobOutput: %v", err)
	}
	stream.Close()
	if out.String() != "hello\n" {
		t.Fatalf("output %q, want %q", out.String(), "hello\n")
	}
	// A call for a job that does not exist, and one the schema rejects.
	missing, _ := uuid.NewV7()
	_, err = client.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: missing.String()}))
	wantCode(t, "QueryJob(unknown id)", err, connect.CodeNotFound)
	_, err = client.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: "not-a-uuid"}))
	wantCode(t, "QueryJob(bad id)", err, connect.CodeInvalidArgument)

	const (
		schedRPC  = "baton_scheduler_rpc_duration_seconds"
		workerRPC = "baton_worker_rpc_duration_seconds"
		svc       = "/baton.v1.SchedulerService/"
		wsvc      = "/baton.v1.WorkerService/"
	)
	schedWants := []seriesWant{
		{name: "baton_scheduler_jobs_started_total", want: 1},
		{name: "baton_scheduler_jobs_finished_total", labels: []string{"state=succeeded"}, want: 1},
		{name: "baton_scheduler_jobs_finished_total", labels: []string{"state=failed"}, want: 0},
		{name: "baton_scheduler_jobs_finished_total", labels: []string{"state=lost"}, want: 0},
		{name: "baton_scheduler_jobs_running", want: 0},
		{name: "baton_scheduler_workers", labels: []string{"state=ready"}, want: 1},
		{name: "baton_scheduler_workers", labels: []string{"state=down"}, want: 0},
		{name: "baton_scheduler_heartbeats_received_total", want: 1, atLeast: true},
		{name: "baton_scheduler_output_relayed_bytes_total", want: 6},
		{name: schedRPC, labels: []string{"procedure=" + svc + "StartJob", "code=ok"}, want: 1},
		{name: schedRPC, labels: []string{"procedure=" + svc + "StreamJobOutput", "code=ok"}, want: 1},
		{name: schedRPC, labels: []string{"procedure=" + svc + "QueryJob", "code=not_found"}, want: 1},
		{name: schedRPC, labels: []string{"procedure=" + svc + "QueryJob", "code=invalid_argument"}, want: 1},
		{name: schedRPC, labels: []string{"procedure=" + svc + "RegisterWorker", "code=ok"}, want: 1},
		{name: schedRPC, labels: []string{"procedure=" + svc + "Heartbeat", "code=ok"}, want: 1, atLeast: true},
		{name: "go_goroutines", want: 1, atLeast: true},
	}
	workerWants := []seriesWant{
		{name: "baton_worker_jobs_started_total", want: 1},
		{name: "baton_worker_jobs_finished_total", labels: []string{"state=succeeded"}, want: 1},
		{name: "baton_worker_jobs_finished_total", labels: []string{"state=stopped"}, want: 0},
		{name: "baton_worker_jobs_running", want: 0},
		{name: "baton_worker_output_streamed_bytes_total", want: 6},
		{name: "baton_worker_heartbeats_sent_total", labels: []string{"result=ok"}, want: 1, atLeast: true},
		{name: "baton_worker_heartbeats_sent_total", labels: []string{"result=error"}, want: 0},
		{name: workerRPC, labels: []string{"procedure=" + wsvc + "StartJob", "code=ok"}, want: 1},
		{name: workerRPC, labels: []string{"procedure=" + wsvc + "StreamJobOutput", "code=ok"}, want: 1},
	}
	// The job's end reaches the scheduler with the worker's next heartbeat.
	deadline := time.Now().Add(waitTimeout)
	for {
		bad := check(scrape(t, scrapeHTTP, schedURL), schedWants)
		if len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("scheduler /metrics after %v:\n  %s", waitTimeout, strings.Join(bad, "\n  "))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if bad := check(scrape(t, scrapeHTTP, workerURL), workerWants); len(bad) > 0 {
		t.Errorf("worker /metrics:\n  %s", strings.Join(bad, "\n  "))
	}
	// The worker's own registry holds no process metrics: in `baton dev`
	// they belong to the scheduler's.
	if _, ok := value(scrape(t, scrapeHTTP, workerURL), "go_goroutines"); ok {
		t.Error("worker /metrics has go_goroutines; want them only where asked for")
	}
}

// TestMetricsQueuedJobs queues jobs behind full workers and checks what a
// scrape of the scheduler's metrics shows while they wait and once they
// have all been placed.
func TestMetricsQueuedJobs(t *testing.T) {
	sm := metrics.NewScheduler()
	sched := startScheduler(t, "", func(o *scheduler.Options) { o.Metrics = sm })
	startWorkerWith(t, "w1", sched, workerSetup{capacity: 1})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	srv := httptest.NewServer(sm.Handler())
	t.Cleanup(srv.Close)
	scrapeHTTP := srv.Client()

	const waiting = 3
	blockers := fillWorkers(t, sched.client, 1)
	var ids []string
	for range waiting {
		ids = append(ids, startJob(t, sched.client, queuedSleep(nil)).GetJobId())
	}
	queued := func(f map[string]*dto.MetricFamily) float64 {
		v, ok := value(f, "baton_scheduler_jobs_queued", "priority=50")
		if !ok {
			t.Fatal(`baton_scheduler_jobs_queued{priority="50"} missing`)
		}
		return v
	}
	placed := func(f map[string]*dto.MetricFamily) float64 {
		v, ok := value(f, "baton_scheduler_queue_wait_seconds", "outcome=placed")
		if !ok {
			t.Fatal(`baton_scheduler_queue_wait_seconds{outcome="placed"} missing`)
		}
		return v
	}
	f := scrape(t, scrapeHTTP, srv.URL)
	if got := queued(f); got != waiting {
		t.Errorf(`with %d jobs waiting, baton_scheduler_jobs_queued{priority="50"} = %v`, waiting, got)
	}
	if got := placed(f); got != 0 {
		t.Errorf(`before any job left the queue, queue_wait_seconds{outcome="placed"} counted %v`, got)
	}

	stopAll(t, sched.client, blockers)
	for id, st := range finalJobs(t, sched.client, ids) {
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("job %s ended %v (%s), want SUCCEEDED", id, st.GetState(), st.GetReason())
		}
	}
	f = scrape(t, scrapeHTTP, srv.URL)
	if got := queued(f); got != 0 {
		t.Errorf(`with the queue drained, baton_scheduler_jobs_queued{priority="50"} = %v, want 0`, got)
	}
	if got := placed(f); got != waiting {
		t.Errorf(`after %d queued jobs were placed, queue_wait_seconds{outcome="placed"} counted %v`, waiting, got)
	}
	for _, o := range []string{"stopped", "timed_out", "refused"} {
		if v, ok := value(f, "baton_scheduler_queue_wait_seconds", "outcome="+o); !ok || v != 0 {
			t.Errorf(`queue_wait_seconds{outcome=%q} = %v (present %v), want 0`, o, v, ok)
		}
	}
}
