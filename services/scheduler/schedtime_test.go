package scheduler

import (
	"strings"
	"testing"
	"time"
)

// TestFireTimesDST checks the rules the README states for clock changes:
// a wall-clock time the zone skips fires once, at the end of the gap; one
// the zone repeats fires once, the first time.
func TestFireTimesDST(t *testing.T) {
	t.Parallel()
	ny, _ := time.LoadLocation("America/New_York")
	paris, _ := time.LoadLocation("Europe/Paris")
	at := func(loc *time.Location, s string) time.Time {
		tm, err := time.ParseInLocation("2006-01-02 15:04 MST", s, loc)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	for _, tc := range []struct {
		name, cron, zone string
		from             time.Time
		want             []string // in the zone, "2006-01-02 15:04 MST"
	}{
		{"gap new york", "30 2 * * *", "America/New_York", at(ny, "2026-03-07 12:00 EST"),
			[]string{"2026-03-08 03:00 EDT", "2026-03-09 02:30 EDT"}},
		{"repeat new york", "30 1 * * *", "America/New_York", at(ny, "2026-10-31 12:00 EDT"),
			[]string{"2026-11-01 01:30 EDT", "2026-11-02 01:30 EST"}},
		{"gap paris", "15 2 * * *", "Europe/Paris", at(paris, "2026-03-28 12:00 CET"),
			[]string{"2026-03-29 03:00 CEST", "2026-03-30 02:15 CEST"}},
		{"repeat paris", "30 2 * * *", "Europe/Paris", at(paris, "2026-10-24 12:00 CEST"),
			[]string{"2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"}},
		{"half-hourly through the repeat", "*/30 * * * *", "America/New_York", at(ny, "2026-11-01 00:40 EDT"),
			[]string{"2026-11-01 01:00 EDT", "2026-11-01 01:30 EDT", "2026-11-01 02:00 EST", "2026-11-01 02:30 EST"}},
		{"half-hourly through the gap", "*/30 * * * *", "America/New_York", at(ny, "2026-03-08 00:40 EST"),
			[]string{"2026-03-08 01:00 EST", "2026-03-08 01:30 EST", "2026-03-08 03:00 EDT", "2026-03-08 03:30 EDT"}},
		{"seconds field", "10 0 12 * * *", "UTC", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
			[]string{"2026-01-01 12:00 UTC", "2026-01-02 12:00 UTC"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ft, err := parseFireTimes(tc.cron, tc.zone)
			if err != nil {
				t.Fatal(err)
			}
			cur := tc.from
			for i, want := range tc.want {
				next := ft.next(cur)
				if !next.After(cur) {
					t.Fatalf("fire %d: %v is not after %v", i, next, cur)
				}
				if got := next.In(ft.loc).Format("2006-01-02 15:04 MST"); got != want {
					t.Errorf("fire %d after %v: %s, want %s", i, cur.In(ft.loc), got, want)
				}
				cur = next
			}
		})
	}
}

// TestFireTimesEvery checks that @every counts elapsed time in whole
// seconds, whatever the zone says.
func TestFireTimesEvery(t *testing.T) {
	t.Parallel()
	ft, err := parseFireTimes("@every 30s", "America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	from := time.Date(2026, 11, 1, 5, 59, 45, 500, time.UTC) // 01:59:45 EDT
	want := []time.Time{from.Add(30 * time.Second).Truncate(time.Second)}
	want = append(want, want[0].Add(30*time.Second), want[0].Add(60*time.Second))
	cur := from
	for i, w := range want {
		cur = ft.next(cur)
		if !cur.Equal(w) {
			t.Errorf("fire %d: %v, want %v", i, cur, w)
		}
	}
}

// TestParseFireTimesErrors checks that a bad schedule names the field at
// fault.
func TestParseFireTimesErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ cron, zone, want string }{
		{"61 * * * *", "", "cron"},
		{"* * *", "", "cron"},
		{"@fortnightly", "", "cron"},
		{"CRON_TZ=Europe/Paris 0 * * * *", "", "time_zone"},
		{"0 0 30 2 *", "", "names no time"},
		{"0 * * * *", "Mars/Olympus", "time_zone"},
		{"0 * * * *", "Local", "time_zone"},
	} {
		if _, err := parseFireTimes(tc.cron, tc.zone); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFireTimes(%q, %q) = %v, want an error naming %q", tc.cron, tc.zone, err, tc.want)
		}
	}
	for _, ok := range []string{"*/5 * * * *", "0 */2 * * * *", "@hourly", "@daily", "@every 1m30s"} {
		if _, err := parseFireTimes(ok, "Europe/Paris"); err != nil {
			t.Errorf("parseFireTimes(%q): %v", ok, err)
		}
	}
}

// TestMissedTimesCounted checks that the count of missed @every times,
// computed rather than walked, is what walking the same times gives.
func TestMissedTimesCounted(t *testing.T) {
	t.Parallel()
	every, err := parseFireTimes("@every 1s", "")
	if err != nil {
		t.Fatal(err)
	}
	walk, err := parseFireTimes("* * * * * *", "")
	if err != nil {
		t.Fatal(err)
	}
	cursor := time.Date(2026, 5, 1, 12, 0, 0, 250_000_000, time.UTC)
	for _, d := range []time.Duration{0, 500 * time.Millisecond, 1750 * time.Millisecond, 2 * time.Second, 5000 * time.Second} {
		deadline := cursor.Add(d)
		l1, c1, t1 := missedTimes(every, cursor, deadline)
		l2, c2, t2 := missedTimes(walk, cursor, deadline)
		if c1 != c2 || !t1.Equal(t2) || len(l1) != len(l2) || (len(l1) > 0 && !l1[0].Equal(l2[0])) {
			t.Errorf("deadline +%v: @every counts %d through %v (%d kept), walking %d through %v (%d kept)", d, c1, t1, len(l1), c2, t2, len(l2))
		}
	}
}
