package jobrun

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Where a Usage's figures come from.
const (
	// UsageCgroup: the job's cgroups, which count every process of the
	// job, whatever it forked and whether or not anything waited for it.
	UsageCgroup = "cgroup"
	// UsageRusage: getrusage(2) of the main process as its wait returned
	// it, which counts the main process and the descendants that were
	// waited for, not those that were killed or left unreaped.
	UsageRusage = "rusage"
)

// Usage is what a job's run cost. It is a plain value.
type Usage struct {
	// CPUUser and CPUSystem are the CPU time spent in user and kernel mode.
	CPUUser   time.Duration
	CPUSystem time.Duration
	// PeakMemory is the most memory the job held at once, in bytes: the
	// cgroup's peak charge (page cache included) or the largest resident
	// set of one process (rusage). With rusage it is 0 when it is no
	// larger than the worker's own peak (see rusageUsage).
	PeakMemory int64
	// Wall is the time from the process's start to its end, or to the
	// reading while it runs.
	Wall time.Duration
	// Source is UsageCgroup or UsageRusage, or "" while nothing has been
	// measured (a job still running without a cgroup that can say, or one
	// whose end nobody saw, such as a LOST job).
	Source string
}

// validUsageSource reports whether s may be stored as a Usage's Source.
func validUsageSource(s string) bool { return s == UsageCgroup || s == UsageRusage }

// wallTime is how long a job ran: from its start to its end, or to now
// while it runs; 0 if it never started.
func wallTime(st *Status, now time.Time) time.Duration {
	switch {
	case st.StartedAt.IsZero():
		return 0
	case !st.EndedAt.IsZero():
		// On the wall clock alone, as the journal keeps the times: an end
		// reads the same before and after a restart.
		return max(st.EndedAt.Round(0).Sub(st.StartedAt.Round(0)), 0)
	}
	return max(now.Sub(st.StartedAt), 0)
}

// Elapsed returns the job's wall time as of now: from its start to its end,
// or to now while it has not ended; 0 if it never started. It is how a
// Status read elsewhere (through the keeper) gets its Usage.Wall.
func (s Status) Elapsed(now time.Time) time.Duration { return wallTime(&s, now) }

// rusageUsage turns the rusage of the job's reaped main process into a
// Usage. getrusage(2): ru_maxrss is in kilobytes on Linux.
//
// Linux sets a child's ru_maxrss at execve(2) to the peak resident set of
// the memory it replaces, which for a vfork(2)ed child such as os/exec's
// is the parent's (fs/exec.c, setmax_mm_hiwater_rss): every job would seem
// to have held at least what the worker did. A figure no larger than the
// worker's own peak cannot be told apart from it, so it is left at 0,
// unknown.
func rusageUsage(ru *syscall.Rusage) Usage {
	if ru == nil {
		return Usage{}
	}
	u := Usage{
		CPUUser:    time.Duration(ru.Utime.Nano()),
		CPUSystem:  time.Duration(ru.Stime.Nano()),
		PeakMemory: ru.Maxrss * 1024,
		Source:     UsageRusage,
	}
	if !aboveOwnPeak(u.PeakMemory) {
		u.PeakMemory = 0
	}
	return u
}

// ownPeak caches this process's peak resident set (VmHWM), which only
// grows: a job's maxrss at or below the cached value is below the real
// one too, and only a larger one needs /proc read again.
var ownPeak atomic.Int64

// aboveOwnPeak reports whether n bytes is more than this process's peak
// resident set, the most a child can have inherited at its exec. Its own
// ru_maxrss will not do: it holds what its parent had when it was
// executed, which is not in what it hands on.
func aboveOwnPeak(n int64) bool {
	if n <= ownPeak.Load() {
		return false
	}
	peak, ok := procStatusKiB("VmHWM:")
	if !ok {
		return false
	}
	peak <<= 10
	for {
		old := ownPeak.Load()
		if peak <= old || ownPeak.CompareAndSwap(old, peak) {
			break
		}
	}
	return n > peak
}

// procStatusKiB reads a "kB" field of /proc/self/status, proc_pid_status(5).
func procStatusKiB(field string) (int64, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// usage reads what the job's cgroups measured so far: CPU from cgroup v2's
// cpu.stat or v1's cpuacct, and the memory peak from v2's memory.peak or
// v1's memory.max_usage_in_bytes. It reports false unless it read both:
// a Usage never mixes sources. A hybrid host (v2 without its memory
// controller) has a memory peak only for jobs with a v1 memory group,
// those with a memory limit.
func (c *jobCgroup) usage() (Usage, bool) {
	if c == nil {
		return Usage{}, false
	}
	var (
		u             = Usage{Source: UsageCgroup}
		cpuOK, peakOK bool
	)
	if c.v2 != "" {
		var user, system int64
		user, system, cpuOK = readCPUStat(filepath.Join(c.v2, "cpu.stat"))
		u.CPUUser, u.CPUSystem = time.Duration(user)*time.Microsecond, time.Duration(system)*time.Microsecond
		u.PeakMemory, peakOK = readInt(filepath.Join(c.v2, "memory.peak"))
	}
	for _, dir := range c.v1 {
		if cpuOK {
			break
		}
		user, uok := readInt(filepath.Join(dir, "cpuacct.usage_user"))
		system, sok := readInt(filepath.Join(dir, "cpuacct.usage_sys"))
		if cpuOK = uok && sok; cpuOK {
			u.CPUUser, u.CPUSystem = time.Duration(user), time.Duration(system)
		}
	}
	if !peakOK && c.oomV1 != "" {
		u.PeakMemory, peakOK = readInt(filepath.Join(c.oomV1, "memory.max_usage_in_bytes"))
	}
	return u, cpuOK && peakOK
}

// readCPUStat reads user_usec and system_usec of a cgroup v2 cpu.stat,
// which the kernel keeps whether or not the cpu controller is enabled.
func readCPUStat(file string) (user, system int64, ok bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, 0, false
	}
	var uok, sok bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), " ")
		n, err := strconv.ParseInt(val, 10, 64)
		if err != nil || n < 0 {
			continue
		}
		switch key {
		case "user_usec":
			user, uok = n, true
		case "system_usec":
			system, sok = n, true
		}
	}
	return user, system, uok && sok
}

// readInt reads a file holding one non-negative integer, such as
// memory.peak.
func readInt(file string) (int64, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
