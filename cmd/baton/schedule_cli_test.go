package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestCLISchedules drives `baton schedule` through the binary against a
// real cluster: add, ls, show, run-now, pause, resume and rm, and a bad
// cron refused naming the field.
func TestCLISchedules(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{workers: []string{"w1"}})
	e := newCLIEnv(t, c)
	fired := func() int { return len(c.listJobs()) }
	if r := e.run(t, "schedule", "add", "tick", "--cron", "@every 1s", "--overlap", "forbid", "--", "bash", "-c", "echo tick"); r.code != 0 {
		t.Fatalf("schedule add: %+v", r)
	}
	if r := e.run(t, "schedule", "add", "bad", "--cron", "61 * * * *", "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "cron") {
		t.Errorf("schedule add with a bad cron: %+v, want an error naming the cron", r)
	}
	deadline := time.Now().Add(30 * time.Second)
	for fired() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the schedule did not fire twice in 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := e.run(t, "schedule", "ls"); r.code != 0 || !strings.Contains(r.stdout, "tick") || !strings.Contains(r.stdout, "@every 1s") {
		t.Errorf("schedule ls: %+v", r)
	}
	var sc struct {
		Name   string `json:"name"`
		Fires  string `json:"fires"`
		Paused bool   `json:"paused"`
		Recent []struct {
			Outcome string `json:"outcome"`
			JobID   string `json:"jobId"`
		} `json:"recent"`
	}
	show := e.run(t, "schedule", "show", "-o", "json", "tick")
	if err := json.Unmarshal([]byte(show.stdout), &sc); show.code != 0 || err != nil || sc.Name != "tick" || len(sc.Recent) == 0 {
		t.Fatalf("schedule show: %+v (%v)", show, err)
	}
	if r := e.run(t, "schedule", "run-now", "tick"); r.code != 0 {
		t.Errorf("schedule run-now: %+v", r)
	}
	if r := e.run(t, "schedule", "pause", "tick"); r.code != 0 {
		t.Fatalf("schedule pause: %+v", r)
	}
	time.Sleep(300 * time.Millisecond) // a fire under way when paused lands
	before := len(c.listJobs())
	time.Sleep(2500 * time.Millisecond)
	if after := len(c.listJobs()); after != before {
		t.Errorf("a paused schedule started %d jobs in 2.5s", after-before)
	}
	if r := e.run(t, "schedule", "resume", "tick"); r.code != 0 {
		t.Errorf("schedule resume: %+v", r)
	}
	if r := e.run(t, "schedule", "rm", "tick"); r.code != 0 {
		t.Fatalf("schedule rm: %+v", r)
	}
	if r := e.run(t, "schedule", "ls"); strings.Contains(r.stdout, "tick") {
		t.Errorf("schedule ls after rm: %+v", r)
	}
	if r := e.run(t, "schedule", "show", "tick"); r.code == 0 {
		t.Errorf("schedule show after rm: %+v, want not found", r)
	}
}
