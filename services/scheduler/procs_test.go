package scheduler_test

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// osProc is a process as /proc shows it. pid and start together name one
// process: a pid alone may be reused once its process is reaped.
type osProc struct {
	pid, pgrp, session int
	state              string
	start              uint64 // clock ticks after boot, field 22 of proc_pid_stat(5)
	argv               []string
}

func (p osProc) String() string {
	return fmt.Sprintf("pid %d (pgrp %d, session %d, state %s) %q", p.pid, p.pgrp, p.session, p.state, p.argv)
}

// readProc reads one process from /proc; ok is false when it is gone.
func readProc(pid int) (osProc, bool) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return osProc{}, false
	}
	// The command name in parentheses may hold spaces: fields start after
	// the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return osProc{}, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return osProc{}, false
	}
	p := osProc{pid: pid, state: f[0]}
	p.pgrp, _ = strconv.Atoi(f[2])
	p.session, _ = strconv.Atoi(f[3])
	p.start, _ = strconv.ParseUint(f[19], 10, 64)
	if cmdline, err := os.ReadFile(dir + "/cmdline"); err == nil {
		for a := range bytes.SplitSeq(bytes.TrimSuffix(cmdline, []byte{0}), []byte{0}) {
			p.argv = append(p.argv, string(a))
		}
	}
	return p, true
}

// liveProcs lists every process that is not a zombie, keeping those for
// which keep holds. A zombie has ended: it only waits to be reaped, and
// its cmdline reads empty.
func liveProcs(keep func(osProc) bool) []osProc {
	entries, _ := os.ReadDir("/proc")
	var out []osProc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok && p.state != "Z" && keep(p) {
			out = append(out, p)
		}
	}
	return out
}

// procsWithArg0 lists the live processes whose argv[0] is arg0 (what
// `exec -a arg0` sets).
func procsWithArg0(arg0 string) []osProc {
	return liveProcs(func(p osProc) bool { return len(p.argv) > 0 && p.argv[0] == arg0 })
}

// procsMarked lists the live processes with marker anywhere in their
// arguments: a shell running a script that names it, or what that script
// exec'd under a name starting with it.
func procsMarked(marker string) []osProc {
	return liveProcs(func(p osProc) bool {
		return slices.ContainsFunc(p.argv, func(a string) bool { return strings.Contains(a, marker) })
	})
}

// alive reports whether p still runs: same pid, same start time, not a
// zombie.
func (p osProc) alive() bool {
	now, ok := readProc(p.pid)
	return ok && now.start == p.start && now.state != "Z"
}

// pids returns the pids of procs, sorted.
func pids(procs []osProc) []int {
	out := make([]int, 0, len(procs))
	for _, p := range procs {
		out = append(out, p.pid)
	}
	slices.Sort(out)
	return out
}

// uniqueMarker is a name no other process on the machine carries, safe in
// a shell word.
func uniqueMarker(what string) string {
	return fmt.Sprintf("baton-test-%s-%d-%d", what, os.Getpid(), time.Now().UnixNano())
}

// killMarked kills whatever still carries marker, so that a failing test
// leaves nothing behind on a shared machine.
func killMarked(marker string) {
	for _, p := range procsMarked(marker) {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
}
