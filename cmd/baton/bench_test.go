package main

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestBenchLocal runs `baton bench --local` in-process on a tiny load and
// checks the counts, not the timings.
func TestBenchLocal(t *testing.T) {
	res, err := runBench(t.Context(), benchOptions{Local: true, Clients: 4, Jobs: 40, Command: "true", Baseline: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Baton.Completed != 40 {
		t.Errorf("baton completed %d jobs, want 40", res.Baton.Completed)
	}
	if len(res.Errors) != 0 {
		t.Errorf("errors: %v", res.Errors)
	}
	for name, s := range map[string]*benchStats{"baton": &res.Baton, "exec": res.Exec} {
		if s == nil {
			t.Fatalf("%s: no figures", name)
		}
		if s.Completed != 40 {
			t.Errorf("%s completed %d, want 40", name, s.Completed)
		}
		if s.P50Ms <= 0 || s.P90Ms <= 0 || s.P99Ms <= 0 || s.JobsPerSec <= 0 {
			t.Errorf("%s: zero figures: %+v", name, *s)
		}
	}
	if res.P50Ratio <= 0 || res.ThroughputRatio <= 0 {
		t.Errorf("ratios %v, %v; want positive", res.P50Ratio, res.ThroughputRatio)
	}
}

// TestBenchCommandJSON checks the command's flags and its JSON output.
func TestBenchCommandJSON(t *testing.T) {
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"bench", "--local", "--clients", "2", "--jobs", "6", "--baseline=false", "-o", "json"})
	if err := root.ExecuteContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	var res benchResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("%v in %s", err, out.Bytes())
	}
	if res.Baton.Completed != 6 || res.Exec != nil || len(res.Errors) != 0 {
		t.Errorf("result %+v; want 6 completed, no baseline, no errors", res)
	}
}

// TestBenchLocalMTLS runs the same load over a second local cluster that
// speaks mutual TLS, and checks that every job went through both.
func TestBenchLocalMTLS(t *testing.T) {
	res, err := runBench(t.Context(), benchOptions{Local: true, MTLS: true, Clients: 4, Jobs: 20, Command: "true"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Baton.Completed != 20 || res.MTLS == nil || res.MTLS.Completed != 20 || len(res.Errors) != 0 {
		t.Fatalf("h2c %+v, mTLS %+v, errors %v; want 20 jobs through each", res.Baton, res.MTLS, res.Errors)
	}
	if res.MTLSP50Ratio <= 0 || res.MTLSThroughputRatio <= 0 {
		t.Errorf("ratios %v, %v; want positive", res.MTLSP50Ratio, res.MTLSThroughputRatio)
	}
	if _, err := runBench(t.Context(), benchOptions{MTLS: true, Clients: 1, Jobs: 1, Command: "true"}); err == nil {
		t.Error("--mtls without --local was accepted")
	}
}
