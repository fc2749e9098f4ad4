package main

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

type fireRecord struct {
	FireTime time.Time `json:"fireTime"`
	Outcome  string    `json:"outcome"`
	JobID    string    `json:"jobId"`
	Manual   bool      `json:"manual"`
}

type scheduleView struct {
	Name   string       `json:"name"`
	Fires  string       `json:"fires"`
	Misses string       `json:"misses"`
	Recent []fireRecord `json:"recent"`
}

type firedJob struct {
	JobID    string    `json:"jobId"`
	Schedule string    `json:"schedule"`
	FireTime time.Time `json:"fireTime"`
}

// TestClusterScheduleExactlyOnceAcrossSchedulerKill9 runs two schedules
// firing every second for about 20 s, with the scheduler killed with
// SIGKILL for 5 s in the middle and started again on the same data
// directory. Every fire time in the window has one record and, if it
// started, exactly one job: the schedule whose catch-up deadline outlasts
// the downtime fires the missed times late; the other records the ones
// past its deadline as missed, with no job.
func TestClusterScheduleExactlyOnceAcrossSchedulerKill9(t *testing.T) {
	c := newCluster(t, clusterOptions{workers: []string{"w1"}})
	created := time.Now()
	for _, s := range []struct{ name, catchUp string }{{"keep", "3600s"}, {"lose", "1s"}} {
		c.mustCall("CreateSchedule", fmt.Sprintf(`{"schedule":{"name":%q,"cron":"@every 1s","catch_up":%q,"history_limit":500,
			"job":{"command":"true","queue_timeout":"-1s"}}}`, s.name, s.catchUp), nil)
	}
	time.Sleep(7 * time.Second)
	c.sched.kill()
	killed := time.Now()
	time.Sleep(5 * time.Second)
	c.startScheduler()
	c.waitWorkerState("w1", "WORKER_STATE_READY", 30*time.Second)
	time.Sleep(7 * time.Second)
	for _, name := range []string{"keep", "lose"} {
		c.mustCall("PauseSchedule", fmt.Sprintf(`{"schedule":{"name":%q}}`, name), nil)
	}
	paused := time.Now()

	var list struct {
		Jobs []firedJob `json:"jobs"`
	}
	c.mustCall("ListJobs", `{"page_size":1000}`, &list)
	jobsAt := map[string]map[time.Time][]string{}
	for _, j := range list.Jobs {
		if jobsAt[j.Schedule] == nil {
			jobsAt[j.Schedule] = map[time.Time][]string{}
		}
		jobsAt[j.Schedule][j.FireTime] = append(jobsAt[j.Schedule][j.FireTime], j.JobID)
	}
	for _, name := range []string{"keep", "lose"} {
		var res struct {
			Schedule scheduleView `json:"schedule"`
		}
		c.mustCall("GetSchedule", fmt.Sprintf(`{"schedule":{"name":%q}}`, name), &res)
		sc := res.Schedule
		var times []time.Time
		missed := 0
		for _, f := range sc.Recent {
			times = append(times, f.FireTime)
			switch f.Outcome {
			case "FIRE_OUTCOME_STARTED":
				if got := jobsAt[name][f.FireTime]; len(got) != 1 || got[0] != f.JobID {
					t.Errorf("%s: fire at %v has jobs %v, want exactly its job %s", name, f.FireTime, got, f.JobID)
				}
			case "FIRE_OUTCOME_MISSED":
				missed++
				if got := jobsAt[name][f.FireTime]; len(got) != 0 {
					t.Errorf("%s: missed fire at %v has jobs %v", name, f.FireTime, got)
				}
				if f.FireTime.Before(killed) {
					t.Errorf("%s: fire at %v, before the kill, was missed", name, f.FireTime)
				}
			default:
				t.Errorf("%s: fire at %v: %s", name, f.FireTime, f.Outcome)
			}
		}
		for at, ids := range jobsAt[name] {
			if !slices.ContainsFunc(sc.Recent, func(f fireRecord) bool { return f.FireTime.Equal(at) && f.Outcome == "FIRE_OUTCOME_STARTED" }) {
				t.Errorf("%s: jobs %v for %v, which no started fire records", name, ids, at)
			}
		}
		// Every second from the first fire to the last, once each.
		slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
		if len(times) == 0 {
			t.Fatalf("%s: no fires", name)
		}
		for i := 1; i < len(times); i++ {
			if d := times[i].Sub(times[i-1]); d != time.Second {
				t.Errorf("%s: fires at %v and then %v: want every second once", name, times[i-1], times[i])
			}
		}
		if first, last := times[0], times[len(times)-1]; first.After(created.Add(2*time.Second)) || last.Before(paused.Add(-2*time.Second)) {
			t.Errorf("%s: fires from %v to %v, want from %v to %v", name, first, last, created.Add(time.Second), paused)
		}
		t.Logf("%s: %d fire times, %d missed, %d jobs (fires %s, misses %s)", name, len(times), missed, len(jobsAt[name]), sc.Fires, sc.Misses)
		switch name {
		case "keep":
			if missed != 0 || sc.Misses != "" {
				t.Errorf("keep (catch-up 1h) missed %d fires (misses %q) over a 5 s downtime", missed, sc.Misses)
			}
		case "lose":
			if missed < 2 || sc.Misses != fmt.Sprint(missed) {
				t.Errorf("lose (catch-up 1s) recorded %d missed fires (misses %q) over a 5 s downtime, want at least 2, all counted", missed, sc.Misses)
			}
		}
	}
}
