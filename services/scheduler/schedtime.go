package scheduler

import (
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // zones work on hosts without a zoneinfo database

	"github.com/robfig/cron/v3"
)

// cronParser reads 5 fields (minute to weekday), or 6 with seconds first,
// and descriptors such as "@hourly" and "@every 30s".
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// fireTimes computes a schedule's fire times. It is safe for concurrent
// use.
type fireTimes struct {
	loc *time.Location
	// spec is a cron expression, read in loc's wall clock; every is set
	// instead for "@every", which counts elapsed time and ignores zones.
	spec  *cron.SpecSchedule
	every time.Duration
}

// parseFireTimes reads a schedule's cron and time zone. Its errors name
// the field at fault.
func parseFireTimes(expr, zone string) (*fireTimes, error) {
	loc := time.UTC
	if zone != "" {
		var err error
		if loc, err = time.LoadLocation(zone); err != nil || zone == "Local" {
			return nil, fmt.Errorf("time_zone %q is not an IANA time zone (such as Europe/Paris or UTC)", zone)
		}
	}
	upper := strings.ToUpper(strings.TrimSpace(expr))
	if strings.HasPrefix(upper, "TZ=") || strings.HasPrefix(upper, "CRON_TZ=") {
		return nil, fmt.Errorf("cron %q: give the zone in time_zone, not in the expression", expr)
	}
	sched, err := cronParser.Parse(expr)
	if err != nil {
		return nil, fmt.Errorf("cron %q: %v", expr, err)
	}
	ft := &fireTimes{loc: loc}
	switch s := sched.(type) {
	case *cron.SpecSchedule:
		// The expression is matched against wall-clock times written as
		// UTC, where no day has a gap or a repeated hour; next maps the
		// match back to loc.
		s.Location = time.UTC
		ft.spec = s
	case cron.ConstantDelaySchedule:
		ft.every = s.Delay
	default:
		return nil, fmt.Errorf("cron %q: unsupported form", expr)
	}
	if ft.next(time.Now()).IsZero() {
		return nil, fmt.Errorf("cron %q names no time in the next five years", expr)
	}
	return ft, nil
}

// next returns the first fire time after t, or the zero time if there is
// none within five years.
//
// Cron fields name wall-clock times in the schedule's zone. A wall-clock
// time that does not exist (the hour skipped when clocks go forward)
// fires once, at the first instant after the gap; one that happens twice
// (the hour repeated when clocks go back) fires once, the first time.
// robfig/cron, left to itself, skips the first and fires twice for the
// second.
func (ft *fireTimes) next(t time.Time) time.Time {
	if ft.every > 0 {
		// As robfig's ConstantDelaySchedule: whole seconds.
		return t.Add(ft.every).Truncate(time.Second)
	}
	from := wallAsUTC(t.In(ft.loc))
	for range 8 {
		w := ft.spec.Next(from)
		if w.IsZero() {
			return time.Time{}
		}
		if at := ft.instant(w, t); !at.IsZero() {
			return at
		}
		from = w
	}
	return time.Time{}
}

// instant is the first instant after t whose wall clock in ft.loc is w (a
// wall-clock time written as UTC); the end of the gap when w falls in a
// gap; zero when w happened only at or before t.
func (ft *fireTimes) instant(w, t time.Time) time.Time {
	at := time.Date(w.Year(), w.Month(), w.Day(), w.Hour(), w.Minute(), w.Second(), 0, ft.loc)
	if !wallAsUTC(at).Equal(w) {
		// A gap: time.Date moved w to a wall clock before or after it
		// (which one is not specified). The gap ends where the zone
		// period after it starts.
		start, end := at.ZoneBounds()
		if wallAsUTC(at).Before(w) {
			start = end
		}
		if !start.IsZero() {
			at = start
		}
	}
	// A repeated wall clock: take its first occurrence, unless only the
	// second is still to come.
	for _, back := range []time.Duration{30 * time.Minute, time.Hour, 2 * time.Hour} {
		if e := at.Add(-back); wallAsUTC(e).Equal(w) && e.After(t) {
			at = e
			break
		}
	}
	if !at.After(t) {
		return time.Time{}
	}
	return at
}

// wallAsUTC is t's wall clock (in t's location) written as a UTC time.
func wallAsUTC(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
}
