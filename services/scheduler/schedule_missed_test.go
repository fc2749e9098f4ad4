package scheduler

import (
	"testing"
	"time"
)

// TestMissedTimesCapSkipsToDeadline: once the walk reaches
// maxMissScan, the rest of the times up to the catch-up deadline must be
// skipped (the comment on maxMissScan says so); otherwise the cursor stops
// in the middle of the outage and catchUp fires every time from there to
// now, millions of fires for a per-second cron after two weeks down.
func TestMissedTimesCapSkipsToDeadline(t *testing.T) {
	ft, err := parseFireTimes("* * * * * *", "")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	cursor := now.Add(-20 * 24 * time.Hour) // down 20 days
	deadline := now.Add(-time.Minute)       // default catch-up
	start := time.Now()
	_, count, through := missedTimes(ft, cursor, deadline)
	t.Logf("count %d, through %v, walk took %v", count, through, time.Since(start))
	if want := deadline.Add(-time.Second); !through.Equal(want) {
		var fires int
		for tm := ft.next(through); !tm.IsZero() && !tm.After(now); tm = ft.next(tm) {
			fires++
		}
		t.Errorf("cursor moves to %v, want %v (the last time before the deadline): catchUp would then fire %d times, all but 60 of them past the catch-up deadline", through, want, fires)
	}
}
