package scheduler_test

import (
	"database/sql"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestCatchUpStorm: after an outage, catchUp fires every time within
// a schedule's catch-up window one by one, each a store transaction and a
// QUEUED job, in the goroutine that fires all schedules. One user's
// per-second cron with catch_up 1h (30 days is allowed) makes 3600 jobs at
// once and holds back every other owner's schedule meanwhile.
func TestCatchUpFiresAtMostAHundred(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	createSchedule(t, sched.client, &batonv1.Schedule{
		Name: "storm", Cron: "* * * * * *", CatchUp: durationpb.New(time.Hour), HistoryLimit: 5,
		Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", Selector: map[string]string{"pool": "none"}},
	})
	createSchedule(t, sched.client, &batonv1.Schedule{
		Name: "other", Cron: "@every 1s", HistoryLimit: 5,
		Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", Selector: map[string]string{"pool": "none"}},
	})
	sched.kill()
	// The scheduler was down for the last hour.
	db, err := sql.Open("sqlite", sched.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	back := time.Now().Add(-time.Hour).UnixNano()
	if _, err := db.Exec(`UPDATE schedules SET cursor = ?`, back); err != nil {
		t.Fatal(err)
	}
	db.Close()
	restart := time.Now()
	sched = startScheduler(t, sched.dbPath, nil)
	sc := waitSchedule(t, sched.client, "other", "fired after the restart", func(sc *batonv1.Schedule) bool {
		return sc.GetLastFireTime() != nil && sc.GetLastFireTime().AsTime().After(restart)
	})
	late := time.Since(restart)
	storm := getSchedule(t, sched.client, "storm")
	t.Logf("storm: %d fires; other's first fire after the restart came %v after it (fire time %v)", storm.GetFires(), late, sc.GetLastFireTime().AsTime().Sub(restart))
	// The schedules fire from one goroutine, storm's catch-up first: had
	// it fired every time it missed (3600), other's first fire would
	// have waited for all of them. How long that took is logged, not
	// checked: it measures the machine as much as the scheduler.
	if storm.GetFires() > 110 {
		t.Errorf("one catch-up fired %d times (made that many jobs) for one schedule, holding back the others", storm.GetFires())
	}
}
