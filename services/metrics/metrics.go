// Package metrics holds Baton's Prometheus metrics: one registry per
// component (a scheduler, a worker), the Connect interceptor that times RPCs,
// and the collectors that read state at scrape time.
//
// Every component gets its own [prometheus.Registry] and its own /metrics
// handler, never the global default registry: `baton dev` runs a scheduler
// and two workers in one process, and each must report only its own
// numbers. Metric names start with baton_scheduler_ or baton_worker_ and
// carry their unit, following the Prometheus naming conventions.
//
// The recording methods of [Scheduler] and [Worker] are safe for concurrent
// use and may be called on a nil receiver, which records nothing: services
// hold an optional *Scheduler or *Worker and call it unconditionally.
package metrics

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

const namespace = "baton"

// rpcBuckets are the RPC duration buckets, in seconds. Unary calls take
// milliseconds, but StartJob may wait for a slow worker, StopJob for a whole
// grace period, and output streams follow a job for as long as it runs: the
// buckets reach five minutes so that those are not all lumped into +Inf.
var rpcBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

// jobEnds are the terminal job states, in the order of the API enum. The
// finished counters start at zero for each, so that rate() and absent()
// work before the first job of a kind ends.
var jobEnds = []batonv1.JobState{
	batonv1.JobState_JOB_STATE_SUCCEEDED,
	batonv1.JobState_JOB_STATE_FAILED,
	batonv1.JobState_JOB_STATE_STOPPED,
	batonv1.JobState_JOB_STATE_TIMED_OUT,
	batonv1.JobState_JOB_STATE_LOST,
}

// Option configures a registry built by [NewScheduler] or [NewWorker].
type Option func(*config)

type config struct {
	process bool
}

// WithProcessMetrics adds the Go runtime and process collectors (go_*,
// process_*) to the registry. They describe the whole OS process, so give
// them to one registry per process only: in `baton dev` the scheduler's.
func WithProcessMetrics() Option {
	return func(c *config) { c.process = true }
}

func newRegistry(opts []Option) *prometheus.Registry {
	var c config
	for _, o := range opts {
		o(&c)
	}
	reg := prometheus.NewRegistry()
	if c.process {
		reg.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
	}
	return reg
}

// handlerFor serves reg in the Prometheus exposition formats. A collector
// that fails does not hide the others: the scrape goes on and the failure
// is counted in promhttp_metric_handler_errors_total.
func handlerFor(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry:      reg,
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// mount serves reg at GET /metrics and everything else with next.
func mount(reg *prometheus.Registry, next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", handlerFor(reg))
	mux.Handle("/", next)
	return mux
}

// jobStateLabel is the label value of a job state: "succeeded" for
// JOB_STATE_SUCCEEDED.
func jobStateLabel(s batonv1.JobState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_"))
}

// workerStateLabel is the label value of a worker state: "ready" for
// WORKER_STATE_READY.
func workerStateLabel(s batonv1.WorkerState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "WORKER_STATE_"))
}

// newJobCounters returns the started and finished-by-state counters of a
// component, registered with reg.
func newJobCounters(reg prometheus.Registerer, subsystem, startedHelp, finishedHelp string) (prometheus.Counter, *prometheus.CounterVec) {
	started := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "jobs_started_total",
		Help: startedHelp,
	})
	finished := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "jobs_finished_total",
		Help: finishedHelp,
	}, []string{"state"})
	for _, s := range jobEnds {
		finished.WithLabelValues(jobStateLabel(s))
	}
	reg.MustRegister(started, finished)
	return started, finished
}
