package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestCLIChainAndArray runs, through the baton binary, a chain A → B → C
// where A fails, so that B and C end without running, and an array
// --array 0-5%2 whose jobs print their index.
func TestCLIChainAndArray(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{workers: []string{"w1", "w2"}})
	e := newCLIEnv(t, c)
	startID := func(args ...string) string {
		t.Helper()
		r := e.run(t, append([]string{"start"}, args...)...)
		id := strings.TrimSpace(r.stdout)
		if _, err := uuid.Parse(id); r.code != 0 || err != nil {
			t.Fatalf("start %v: %+v", args, r)
		}
		return id
	}
	a := startID("--", "bash", "-c", "sleep 0.3; exit 3")
	b := startID("--after", a, "--", "bash", "-c", "echo B ran")
	c2 := startID("--after", "succeeded:"+b, "--", "bash", "-c", "echo C ran")
	ok := e.run(t, "run", "--after", "failed:"+a, "--", "bash", "-c", "echo after the failure")
	if ok.code != 0 || strings.TrimSpace(ok.stdout) != "after the failure" {
		t.Errorf("run --after failed:A: %+v", ok)
	}
	for id, cause := range map[string]string{b: a, c2: b} {
		var st string
		deadline := time.Now().Add(30 * time.Second)
		for {
			st = e.run(t, "status", id).stdout
			if strings.Contains(st, "FAILED") || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !strings.Contains(st, "FAILED") || !strings.Contains(st, "never ran") || !strings.Contains(st, cause) {
			t.Errorf("status of %s: %q, want FAILED, never ran, naming %s", id, st, cause)
		}
	}
	if r := e.run(t, "run", "--after", a, "--", "echo", "never"); r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "failed: it never ran") {
		t.Errorf("run --after A, which failed: %+v, want exit 1 saying it never ran", r)
	}
	if r := e.run(t, "start", "--after", "maybe:"+a, "--", "true"); r.code != 2 {
		t.Errorf("an unknown condition: %+v, want usage error (2)", r)
	}

	arr := e.run(t, "run", "--array", "0-5%2", "--", "bash", "-c", `echo "index $BATON_ARRAY_INDEX"`)
	if arr.code != 0 {
		t.Fatalf("run --array: %+v", arr)
	}
	for i := range 6 {
		line := regexp.MustCompile(`(?m)^\[` + string(rune('0'+i)) + `\] index ` + string(rune('0'+i)) + `$`)
		if !line.MatchString(arr.stdout) {
			t.Errorf("run --array printed %q, want a line [%d] index %d", arr.stdout, i, i)
		}
	}
	group := strings.TrimSpace(e.run(t, "start", "--array", "0-3", "--", "true").stdout)
	deadline := time.Now().Add(30 * time.Second)
	for {
		listed := e.run(t, "jobs", "--group", group)
		if strings.Count(listed.stdout, "SUCCEEDED") == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("jobs --group %s: %+v, want 4 jobs SUCCEEDED", group, listed)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := e.run(t, "start", "--array", "5-1", "--", "true"); r.code != 2 {
		t.Errorf("--array 5-1: %+v, want usage error (2)", r)
	}
}
