package metrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// ScheduleCounts are one schedule's fire counters, as the scheduler
// keeps them (in its store, so they survive a restart).
type ScheduleCounts struct {
	Owner, Name          string
	Fires, Misses, Skips int64
}

// ObserveSchedules reports each schedule's fires, misses and skips,
// calling fn at every scrape: the counters are the schedules' own and
// cannot drift from them, and a deleted schedule's series goes with it.
// The owner and name labels are bounded by the scheduler's limit on
// schedules. fn must be safe for concurrent use and quick. It fails if
// schedules are already observed.
func (m *Scheduler) ObserveSchedules(fn func() []ScheduleCounts) error {
	labels := []string{"owner", "name"}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "scheduler", name), help, labels, nil)
	}
	err := m.reg.Register(&scheduleCollector{
		fn:     fn,
		fires:  desc("schedule_fires_total", "Fire times of a schedule that started a job (or fan-out group)."),
		misses: desc("schedule_misses_total", "Fire times of a schedule missed: the scheduler was not running within the schedule's catch-up deadline."),
		skips:  desc("schedule_skips_total", "Fire times of a schedule skipped because its earlier fire's job still ran (overlap forbid)."),
	})
	if are := (prometheus.AlreadyRegisteredError{}); errors.As(err, &are) {
		return errors.New("metrics: these scheduler metrics already observe schedules; give each scheduler its own")
	}
	return err
}

// scheduleCollector turns schedules' counters into metrics at scrape time.
type scheduleCollector struct {
	fn                   func() []ScheduleCounts
	fires, misses, skips *prometheus.Desc
}

func (c *scheduleCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.fires
	ch <- c.misses
	ch <- c.skips
}

func (c *scheduleCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.fn() {
		ch <- prometheus.MustNewConstMetric(c.fires, prometheus.CounterValue, float64(s.Fires), s.Owner, s.Name)
		ch <- prometheus.MustNewConstMetric(c.misses, prometheus.CounterValue, float64(s.Misses), s.Owner, s.Name)
		ch <- prometheus.MustNewConstMetric(c.skips, prometheus.CounterValue, float64(s.Skips), s.Owner, s.Name)
	}
}
