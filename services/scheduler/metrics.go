package scheduler

import (
	"connectrpc.com/connect"

	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/scheduler/store"
)

// instrument wires Options.Metrics: the roster gauges, the store's job
// ends and the RPC interceptor, which it returns as handler options to put
// before the others. Without metrics it does nothing.
func (s *Scheduler) instrument() ([]connect.HandlerOption, error) {
	m := s.opts.Metrics
	if m == nil {
		return nil, nil
	}
	if err := m.ObserveRoster(s.rosterMetrics); err != nil {
		return nil, err
	}
	// Job ends are counted where the store records them: StopJob, QueryJob
	// and the worker's next heartbeat all report the same end, and only the
	// store knows which report changed the job.
	if _, ok := s.store.(store.JobEndObserver); !ok {
		s.logger.Warn("the store does not report job ends: baton_scheduler_jobs_finished_total stays at zero")
	}
	return []connect.HandlerOption{connect.WithInterceptors(m.Interceptor())}, nil
}

// rosterMetrics counts the roster's workers by state and the jobs running
// on them, at scrape time.
func (s *Scheduler) rosterMetrics() metrics.Roster {
	byState, running := s.reg.tally()
	return metrics.Roster{Workers: byState, RunningJobs: running}
}
