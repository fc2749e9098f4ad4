package metrics

import (
	"errors"
	"net/http"

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
}

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
	reg.MustRegister(m.streamed, beats)
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
