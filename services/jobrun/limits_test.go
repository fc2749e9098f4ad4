package jobrun

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLimitsApplied(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, nil)
	if !r.cg.memoryOK() || !r.cg.cpuOK() {
		t.Skip("this host has no memory or cpu cgroup controller")
	}
	st := mustStart(t, r, "limited", Spec{Command: "sleep", Args: []string{"1000"}, MemoryLimit: 64 << 20, CPULimit: 0.5})
	read := func(dir, file string) string {
		b, _ := os.ReadFile(filepath.Join(dir, file))
		return strings.TrimSpace(string(b))
	}
	pid := itoa(int64(st.PID))
	if !r.cg.v2Memory {
		dir := filepath.Join(r.cg.v1Memory, "limited")
		if got := read(dir, "memory.limit_in_bytes"); got != itoa(64<<20) {
			t.Errorf("memory.limit_in_bytes = %q", got)
		}
		if procs := read(dir, "cgroup.procs"); !strings.Contains(procs, pid) {
			t.Errorf("pid %s not in the memory cgroup (%q)", pid, procs)
		}
	}
	if !r.cg.v2CPU {
		dir := filepath.Join(r.cg.v1CPU, "limited")
		if got := read(dir, "cpu.cfs_quota_us"); got != "50000" {
			t.Errorf("cpu.cfs_quota_us = %q", got)
		}
	}
	if _, err := r.Stop(t.Context(), "limited", "test"); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(r.cg.v1Memory, "limited"), filepath.Join(r.cg.v1CPU, "limited")} {
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("cgroup %s left behind", filepath.Base(filepath.Dir(dir)))
		}
	}
}

func TestOOMKilled(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, nil)
	if !r.cg.memoryOK() {
		t.Skip("this host has no memory cgroup controller")
	}
	if _, ok := r.allowed["perl"]; !ok {
		t.Skip("perl is not installed")
	}
	mustStart(t, r, "hog", Spec{Command: "perl", Args: []string{"-e", `my $x = "a" x (200*1024*1024); print length($x)`}, MemoryLimit: 64 << 20})
	st := waitDone(t, r, "hog")
	if st.State != StateFailed || !strings.HasPrefix(st.Reason, "OOMKilled") {
		t.Errorf("got %v %q", st.State, st.Reason)
	}
}
