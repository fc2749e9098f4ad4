package jobrun

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestLimitsApplied checks the limit files of whichever cgroup version the
// runner uses for each controller: v2 (memory.max, cpu.max) when the
// controller is enabled in its v2 tree, else v1 (memory.limit_in_bytes,
// cpu.cfs_quota_us), and that the job's pid is in those groups.
func TestLimitsApplied(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, nil)
	spec := Spec{Command: "sleep", Args: []string{"1000"}}
	if r.cg.memoryOK() {
		spec.MemoryLimit = 64 << 20
	}
	if r.cg.cpuOK() {
		spec.CPULimit = 0.5
	}
	if spec.MemoryLimit == 0 && spec.CPULimit == 0 {
		t.Skip("this host has neither a memory nor a cpu cgroup controller, in v2 or v1: no limit can be applied")
	}
	st := mustStart(t, r, "limited", spec)
	read := func(t *testing.T, dir, file string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Errorf("%s: %v", file, err)
		}
		return strings.TrimSpace(string(b))
	}
	pid := itoa(int64(st.PID))
	hasPid := func(t *testing.T, dir string) {
		t.Helper()
		if procs := strings.Fields(read(t, dir, "cgroup.procs")); !slices.Contains(procs, pid) {
			t.Errorf("pid %s not in %s/cgroup.procs (%q)", pid, dir, procs)
		}
	}
	var dirs []string // the job's cgroup directories, gone after Stop
	if r.cg.v2Parent != "" {
		dirs = append(dirs, filepath.Join(r.cg.v2Parent, "limited"))
	}
	t.Run("memory", func(t *testing.T) {
		switch {
		case r.cg.v2Memory:
			dir := filepath.Join(r.cg.v2Parent, "limited")
			if got := read(t, dir, "memory.max"); got != itoa(64<<20) {
				t.Errorf("v2 memory.max = %q, want %d", got, 64<<20)
			}
			hasPid(t, dir)
		case r.cg.v1Memory != "":
			dir := filepath.Join(r.cg.v1Memory, "limited")
			dirs = append(dirs, dir)
			if got := read(t, dir, "memory.limit_in_bytes"); got != itoa(64<<20) {
				t.Errorf("v1 memory.limit_in_bytes = %q, want %d", got, 64<<20)
			}
			hasPid(t, dir)
		default:
			t.Skip("no memory controller in cgroup v2 or v1 on this host: a memory limit cannot be applied")
		}
	})
	t.Run("cpu", func(t *testing.T) {
		switch {
		case r.cg.v2CPU:
			dir := filepath.Join(r.cg.v2Parent, "limited")
			if got := read(t, dir, "cpu.max"); got != "50000 100000" {
				t.Errorf("v2 cpu.max = %q, want \"50000 100000\"", got)
			}
			hasPid(t, dir)
		case r.cg.v1CPU != "":
			dir := filepath.Join(r.cg.v1CPU, "limited")
			dirs = append(dirs, dir)
			if got := read(t, dir, "cpu.cfs_period_us"); got != "100000" {
				t.Errorf("v1 cpu.cfs_period_us = %q, want 100000", got)
			}
			if got := read(t, dir, "cpu.cfs_quota_us"); got != "50000" {
				t.Errorf("v1 cpu.cfs_quota_us = %q, want 50000", got)
			}
			hasPid(t, dir)
		default:
			t.Skip("no cpu controller in cgroup v2 or v1 on this host: a cpu limit cannot be applied")
		}
	})
	if _, err := r.Stop(t.Context(), "limited", "test"); err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s left behind: %v", dir, err)
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
