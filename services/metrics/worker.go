package metrics

import (
	"errors"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// Worker holds one worker's metrics in its own registry. Create it with
// [NewWorker], give it to the worker's options, and serve [Worker.Handler]
// at /metrics. Its methods are safe for concurrent use; the recording
// methods do nothing on a nil *Worker.
type Worker struct {
	reg          *prometheus.Registry
	rpc          *RPC
	jobsStarted  prometheus.Counter
	jobsFinished *prometheus.CounterVec
	streamed     prometheus.Counter
	heartbeatsOK prometheus.Counter
	heartbeatsKO prometheus.Counter
	jobCPU       *prometheus.HistogramVec
	jobMemory    *prometheus.HistogramVec
}

// jobCPUBuckets are the buckets of a job's CPU time, in seconds: from a
// /bin/true to a day's batch job.
var jobCPUBuckets = []float64{.01, .1, 1, 10, 60, 600, 3600, 6 * 3600, 24 * 3600}

// jobMemoryBuckets are the buckets of a job's peak memory, in bytes: 1 MiB
// to 64 GiB by factors of 4.
var jobMemoryBuckets = prometheus.ExponentialBuckets(1<<20, 4, 9)

// usageSources are the values of the source label; anything else is
// counted as "other", so that the label's values stay few.
var usageSources = map[string]bool{"cgroup": true, "rusage": true}

// NewWorker returns a worker's metrics in a new registry.
func NewWorker(opts ...Option) *Worker {
	reg := newRegistry(opts)
	m := &Worker{reg: reg, rpc: newRPC(reg, "worker")}
	m.jobsStarted, m.jobsFinished = newJobCounters(reg, "worker",
		"Jobs whose process this worker started.",
		"Jobs of this worker that reached a final state, by that state.")
	m.streamed = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "worker", Name: "output_streamed_bytes_total",
		Help: "Bytes of job output sent to followers by StreamJobOutput.",
	})
	beats := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "worker", Name: "heartbeats_sent_total",
		Help: "Heartbeats sent to the scheduler, by result (ok or error).",
	}, []string{"result"})
	m.heartbeatsOK = beats.WithLabelValues("ok")
	m.heartbeatsKO = beats.WithLabelValues("error")
	m.jobCPU = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "worker", Name: "job_cpu_seconds",
		Help:    "CPU time (user + system) of each job that ended on this worker, by where it was measured (cgroup or rusage).",
		Buckets: jobCPUBuckets,
	}, []string{"source"})
	m.jobMemory = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "worker", Name: "job_peak_memory_bytes",
		Help:    "Peak memory of each job that ended on this worker, by where it was measured (cgroup or rusage); jobs whose peak is unknown are left out.",
		Buckets: jobMemoryBuckets,
	}, []string{"source"})
	reg.MustRegister(m.streamed, beats, m.jobCPU, m.jobMemory)
	return m
}

// Registry is the worker's registry, for tests and for adding collectors.
func (m *Worker) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry's metrics in the Prometheus formats.
func (m *Worker) Handler() http.Handler { return handlerFor(m.reg) }

// Mount returns a handler that serves the metrics at GET /metrics and
// every other request with next, the component's own handler. On a nil
// *Worker it returns next.
func (m *Worker) Mount(next http.Handler) http.Handler {
	if m == nil {
		return next
	}
	return mount(m.reg, next)
}

// Interceptor times the worker's RPCs; see [RPC].
func (m *Worker) Interceptor() connect.Interceptor { return m.rpc }

// JobStarted counts a job whose process started.
func (m *Worker) JobStarted() {
	if m != nil {
		m.jobsStarted.Inc()
	}
}

// JobFinished counts a job that reached the terminal state s.
func (m *Worker) JobFinished(s batonv1.JobState) {
	if m != nil {
		m.jobsFinished.WithLabelValues(jobStateLabel(s)).Inc()
	}
}

// JobUsage records what an ended job cost: its CPU time and, when known
// (peakBytes > 0), its peak memory, by source ("cgroup" or "rusage").
func (m *Worker) JobUsage(cpu time.Duration, peakBytes int64, source string) {
	if m == nil {
		return
	}
	if !usageSources[source] {
		source = "other"
	}
	m.jobCPU.WithLabelValues(source).Observe(cpu.Seconds())
	if peakBytes > 0 {
		m.jobMemory.WithLabelValues(source).Observe(float64(peakBytes))
	}
}

// OutputStreamed counts n bytes of job output sent to a follower.
func (m *Worker) OutputStreamed(n int) {
	if m != nil {
		m.streamed.Add(float64(n))
	}
}

// HeartbeatSent counts a heartbeat and whether it failed (err != nil).
func (m *Worker) HeartbeatSent(err error) {
	switch {
	case m == nil:
	case err == nil:
		m.heartbeatsOK.Inc()
	default:
		m.heartbeatsKO.Inc()
	}
}

// ObserveRunning reports fn's result as the running-jobs gauge, calling it
// at every scrape: the gauge mirrors the job runtime and cannot drift from
// it. fn must be safe for concurrent use and quick. It fails if running
// jobs are already observed.
func (m *Worker) ObserveRunning(fn func() int) error {
	err := m.reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "worker", Name: "jobs_running",
		Help: "Jobs starting or running on this worker.",
	}, func() float64 { return float64(fn()) }))
	if are := (prometheus.AlreadyRegisteredError{}); errors.As(err, &are) {
		return errors.New("metrics: these worker metrics already observe a job runtime; give each worker its own")
	}
	return err
}
