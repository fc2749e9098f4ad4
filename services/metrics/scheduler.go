package metrics

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// Scheduler holds one scheduler's metrics in its own registry. Create it
// with [NewScheduler], give it to the scheduler's options, and serve
// [Scheduler.Handler] at /metrics. Its methods are safe for concurrent use;
// the recording methods do nothing on a nil *Scheduler.
type Scheduler struct {
	reg          *prometheus.Registry
	rpc          *RPC
	jobsStarted  prometheus.Counter
	jobsFinished *prometheus.CounterVec
	heartbeats   prometheus.Counter
	relayed      prometheus.Counter
	queued       *prometheus.GaugeVec
	queueWait    *prometheus.HistogramVec
}

// NewScheduler returns a scheduler's metrics in a new registry.
func NewScheduler(opts ...Option) *Scheduler {
	reg := newRegistry(opts)
	m := &Scheduler{reg: reg, rpc: newRPC(reg, "scheduler")}
	m.jobsStarted, m.jobsFinished = newJobCounters(reg, "scheduler",
		"Jobs this scheduler started on workers.",
		"Jobs that reached a final state, by that state, as the scheduler recorded it. A LOST job its worker later reports is counted again with its true end.")
	m.heartbeats = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "scheduler", Name: "heartbeats_received_total",
		Help: "Heartbeats received from workers, answered or not.",
	})
	m.relayed = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "scheduler", Name: "output_relayed_bytes_total",
		Help: "Bytes of job output relayed from workers to clients by StreamJobOutput.",
	})
	m.queued = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "scheduler", Name: "jobs_queued",
		Help: "Jobs waiting in the scheduler's queue for a worker with a free slot, by priority.",
	}, []string{"priority"})
	m.queueWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "scheduler", Name: "queue_wait_seconds",
		Help:    "Time jobs spent in the scheduler's queue, by how they left it (placed, stopped or timed_out).",
		Buckets: queueWaitBuckets,
	}, []string{"outcome"})
	for _, o := range queueOutcomes {
		m.queueWait.WithLabelValues(o)
	}
	reg.MustRegister(m.heartbeats, m.relayed, m.queued, m.queueWait)
	return m
}

// The ways a job leaves the queue, as [Scheduler.JobLeftQueue] takes them.
const (
	QueuePlaced   = "placed"    // a worker accepted it
	QueueStopped  = "stopped"   // StopJob cancelled it
	QueueTimedOut = "timed_out" // its queue_timeout ran out
	QueueRefused  = "refused"   // the worker it was handed to refused it for good
)

// queueOutcomes are the outcome label values, each reported from the start
// so that rate() works before the first job of a kind leaves the queue.
var queueOutcomes = []string{QueuePlaced, QueueStopped, QueueTimedOut, QueueRefused}

// queueWaitBuckets are the queue wait buckets, in seconds: a job placed as a
// slot frees waits milliseconds, one behind a long job or a full cluster
// minutes to an hour.
var queueWaitBuckets = []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600}

// Registry is the scheduler's registry, for tests and for adding
// collectors.
func (m *Scheduler) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry's metrics in the Prometheus formats.
func (m *Scheduler) Handler() http.Handler { return handlerFor(m.reg) }

// Mount returns a handler that serves the metrics at GET /metrics and
// every other request with next, the component's own handler. On a nil
// *Scheduler it returns next.
func (m *Scheduler) Mount(next http.Handler) http.Handler {
	if m == nil {
		return next
	}
	return mount(m.reg, next)
}

// Interceptor times the scheduler's RPCs; see [RPC].
func (m *Scheduler) Interceptor() connect.Interceptor { return m.rpc }

// JobStarted counts a job a worker accepted.
func (m *Scheduler) JobStarted() {
	if m != nil {
		m.jobsStarted.Inc()
	}
}

// JobFinished counts a job that reached the terminal state s.
func (m *Scheduler) JobFinished(s batonv1.JobState) {
	if m != nil {
		m.jobsFinished.WithLabelValues(jobStateLabel(s)).Inc()
	}
}

// HeartbeatReceived counts one Heartbeat call.
func (m *Scheduler) HeartbeatReceived() {
	if m != nil {
		m.heartbeats.Inc()
	}
}

// OutputRelayed counts n bytes of job output sent to a client.
func (m *Scheduler) OutputRelayed(n int) {
	if m != nil {
		m.relayed.Add(float64(n))
	}
}

// JobQueued counts a job that entered the queue with priority (0 to 100).
func (m *Scheduler) JobQueued(priority int32) {
	if m != nil {
		m.queued.WithLabelValues(priorityLabel(priority)).Inc()
	}
}

// JobLeftQueue counts a job with priority that left the queue after
// waiting there for waited; outcome is [QueuePlaced], [QueueStopped],
// [QueueTimedOut] or [QueueRefused]. Another outcome is not observed, so that a caller's
// mistake cannot add label values; the job still leaves the gauge.
func (m *Scheduler) JobLeftQueue(priority int32, outcome string, waited time.Duration) {
	if m == nil {
		return
	}
	m.queued.WithLabelValues(priorityLabel(priority)).Dec()
	switch outcome {
	case QueuePlaced, QueueStopped, QueueTimedOut, QueueRefused:
		m.queueWait.WithLabelValues(outcome).Observe(max(waited, 0).Seconds())
	}
}

// QueueLoaded sets the queued jobs to those of the queue loaded at start-up,
// counted by priority, replacing what the gauge held. Call it before the
// queue takes or hands out jobs: counts recorded meanwhile are lost.
func (m *Scheduler) QueueLoaded(byPriority map[int32]int) {
	if m == nil {
		return
	}
	m.queued.Reset()
	for p, n := range byPriority {
		m.queued.WithLabelValues(priorityLabel(p)).Add(float64(n))
	}
}

// priorityLabel is the label value of a priority, clamped to the API's 0 to
// 100 so that the label has at most 101 values whatever the caller passes.
func priorityLabel(p int32) string {
	return strconv.Itoa(int(min(max(p, 0), 100)))
}

// Roster is what the scheduler's roster holds at one moment.
type Roster struct {
	// Workers counts the workers in each state.
	Workers map[batonv1.WorkerState]int
	// RunningJobs is the number of jobs running (or being placed) on the
	// workers, as their last heartbeats reported.
	RunningJobs int
}

// rosterStates are the worker states reported, each even when no worker is
// in it, so that a dashboard sees zero rather than nothing.
var rosterStates = []batonv1.WorkerState{
	batonv1.WorkerState_WORKER_STATE_READY,
	batonv1.WorkerState_WORKER_STATE_DRAINING,
	batonv1.WorkerState_WORKER_STATE_DOWN,
	batonv1.WorkerState_WORKER_STATE_LEFT,
	batonv1.WorkerState_WORKER_STATE_RESTARTING,
}

// ObserveRoster reports the workers by state and the running jobs, calling
// fn at every scrape: the gauges mirror the roster itself and cannot drift
// from it. fn must be safe for concurrent use and quick. It fails if a
// roster is already observed.
func (m *Scheduler) ObserveRoster(fn func() Roster) error {
	err := m.reg.Register(&rosterCollector{
		fn: fn,
		workers: prometheus.NewDesc(prometheus.BuildFQName(namespace, "scheduler", "workers"),
			"Workers in the roster, by state.", []string{"state"}, nil),
		running: prometheus.NewDesc(prometheus.BuildFQName(namespace, "scheduler", "jobs_running"),
			"Jobs running or being placed on workers, as their last heartbeats reported.", nil, nil),
	})
	if are := (prometheus.AlreadyRegisteredError{}); errors.As(err, &are) {
		return errors.New("metrics: these scheduler metrics already observe a roster; give each scheduler its own")
	}
	return err
}

// rosterCollector turns a Roster into gauges at scrape time.
type rosterCollector struct {
	fn               func() Roster
	workers, running *prometheus.Desc
}

func (c *rosterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.workers
	ch <- c.running
}

func (c *rosterCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.fn()
	for _, s := range rosterStates {
		ch <- prometheus.MustNewConstMetric(c.workers, prometheus.GaugeValue, float64(r.Workers[s]), workerStateLabel(s))
	}
	ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, float64(r.RunningJobs))
}
