package jobrun

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hogEnv makes this test binary, run as a job, the hog of runHog instead
// of running the tests.
const hogEnv = "JOBRUN_TEST_HOG"

const (
	hogCPU    = time.Second
	hogMemory = 100 << 20
)

// runHog holds hogMemory bytes in all and burns hogCPU of CPU time of its
// own, then exits. It measures itself, so that the figures the runtime
// reads do not depend on how fast or how loaded the machine is. What it
// holds already is counted in the figure the test expects: with
// hogEnv=cgroup its memory cgroup's charge, once it is in the job's group
// (a v1 group is entered after the start: what the process touched before
// is charged elsewhere); with hogEnv=rusage its anonymous resident memory
// (its file pages, a few MiB of this binary, come on top).
func runHog() int {
	var held int64
	switch os.Getenv(hogEnv) {
	case UsageCgroup:
		n, ok := ownMemoryCharge(os.Getenv("BATON_JOB_ID"))
		if !ok {
			return 3
		}
		held = n
	default:
		held = procStatusBytes("RssAnon:")
	}
	// MAP_POPULATE faults every page in as written, so the memory is held
	// without Go code touching it (under the race detector such writes
	// would also cost shadow memory).
	if n := hogMemory - held; n > 0 {
		if _, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE); err != nil {
			return 2
		}
	}
	for {
		var ru syscall.Rusage
		if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
			return 2
		}
		if time.Duration(ru.Utime.Nano()+ru.Stime.Nano()) >= hogCPU {
			return 0
		}
		for i := 0; i < 1_000_000; i++ {
			_ = i
		}
	}
}

// procStatusBytes reads a "kB" field of /proc/self/status.
func procStatusBytes(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field); ok {
			kib, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kib << 10
		}
	}
	return 0
}

// ownMemoryCharge waits until this process is in the memory cgroup of job
// id (v2 memory.current, or v1 memory.usage_in_bytes) and returns the
// group's charge.
func ownMemoryCharge(id string) (int64, bool) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile("/proc/self/cgroup")
		for line := range strings.SplitSeq(string(b), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) != 3 || !strings.HasSuffix(parts[2], "/"+id) {
				continue
			}
			v1 := slices.Contains(strings.Split(parts[1], ","), "memory")
			if !v1 && parts[1] != "" {
				continue
			}
			for _, m := range readMounts() {
				if (v1 && m.fstype == "cgroup" && slices.Contains(m.super, "memory")) || (!v1 && m.fstype == "cgroup2") {
					rel, err := filepath.Rel(m.root, parts[2])
					if err != nil {
						continue
					}
					file := filepath.Join(m.point, rel, "memory.current")
					if v1 {
						file = filepath.Join(m.point, rel, "memory.usage_in_bytes")
					}
					if n, ok := readInt(file); ok {
						return n, true
					}
				}
			}
		}
		time.Sleep(time.Millisecond)
	}
	return 0, false
}

// hogRunner returns a Runner that may run this test binary as the hog,
// and the Spec that does.
func hogRunner(t *testing.T, cgroupParent string) (*Runner, Spec) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r, _ := newRunner(t, func(o *Options) {
		o.AllowedCommands = append(o.AllowedCommands, exe)
		o.CgroupParent = cgroupParent
	})
	return r, Spec{Command: exe}
}

// within reports whether got is within 20 % of want.
func within(got, want float64) bool { return got >= 0.8*want && got <= 1.2*want }

// checkHogUsage checks a finished hog's usage against what it burned and
// held; its peak memory only if peak.
func checkHogUsage(t *testing.T, st Status, source string, peak bool) {
	t.Helper()
	if st.State != StateSucceeded {
		t.Fatalf("hog: %v %q", st.State, st.Reason)
	}
	u := st.Usage
	t.Logf("usage: user %v, system %v, peak %.1f MiB, wall %v, source %s",
		u.CPUUser, u.CPUSystem, float64(u.PeakMemory)/(1<<20), u.Wall, u.Source)
	if u.Source != source {
		t.Errorf("source %q, want %q", u.Source, source)
	}
	if cpu := u.CPUUser + u.CPUSystem; !within(cpu.Seconds(), hogCPU.Seconds()) {
		t.Errorf("CPU %v (user %v + system %v), want %v ± 20 %%", cpu, u.CPUUser, u.CPUSystem, hogCPU)
	}
	if u.CPUUser <= 0 {
		t.Errorf("CPU user %v: a busy loop runs in user mode", u.CPUUser)
	}
	if peak && !within(float64(u.PeakMemory), hogMemory) {
		t.Errorf("peak memory %.1f MiB, want 100 MiB ± 20 %%", float64(u.PeakMemory)/(1<<20))
	}
	if want := st.EndedAt.Round(0).Sub(st.StartedAt.Round(0)); u.Wall != want || u.Wall < u.CPUUser+u.CPUSystem-100*time.Millisecond {
		t.Errorf("wall %v, want the end minus the start, %v, and at least the CPU time of one thread", u.Wall, want)
	}
}

// TestUsageMeasured runs a job that burns 1 s of CPU and holds 100 MiB,
// with a cgroup and with rusage only, in a worker child that is killed
// once it reported the end; a Runner of its data directory reads what the
// job cost from the journal.
func TestUsageMeasured(t *testing.T) {
	t.Parallel()
	for _, source := range []string{UsageCgroup, UsageRusage} {
		t.Run(source, func(t *testing.T) {
			t.Parallel()
			data, scripts := t.TempDir(), t.TempDir()
			if source == UsageCgroup {
				r, _ := newRunner(t, nil)
				if r.cg.v2Parent == "" || !r.cg.memoryOK() {
					t.Skip("this host has no cgroup v2 with a memory controller in v2 or v1: a job's usage comes from rusage")
				}
			}
			if got := startWorkerChild(t, "hog-"+source, data, scripts); got != "SUCCEEDED" {
				t.Fatalf("the child reported %s", got)
			}
			parent := "-"
			if source == UsageCgroup {
				parent = ""
			}
			r, _ := newRunner(t, func(o *Options) { o.DataDir, o.ScriptsDir, o.CgroupParent = data, scripts, parent })
			checkHogUsage(t, r.mustStatus(t, "child-job"), source, true)
		})
	}
}

// TestUsageWhileRunning: a status query of a running job in a cgroup reads
// the cgroup; without one the usage is not yet known, and the wall time
// runs on.
func TestUsageWhileRunning(t *testing.T) {
	t.Parallel()
	for _, parent := range []string{"", "-"} {
		t.Run("cgroup="+parent, func(t *testing.T) {
			t.Parallel()
			r, _ := newRunner(t, func(o *Options) { o.CgroupParent = parent })
			spec := Spec{Command: "sh", Args: []string{"-c", `while :; do :; done`}}
			measured := parent == "" && r.cg.v2Parent != "" && r.cg.memoryOK()
			if measured {
				spec.MemoryLimit = 1 << 30
			}
			mustStart(t, r, "spin", spec)
			var st Status
			eventually(t, "the job is seen spinning", func() bool {
				st = r.mustStatus(t, "spin")
				return !measured || st.Usage.CPUUser >= 50*time.Millisecond
			})
			if measured && st.Usage.Source != UsageCgroup {
				t.Errorf("a running job's usage: %+v, want a reading of its cgroup", st.Usage)
			}
			if !measured && st.Usage.Source != "" {
				t.Errorf("a running job without a cgroup: usage %+v, want none yet", st.Usage)
			}
			if st.Usage.Wall <= 0 || st.Usage.Wall > time.Since(st.StartedAt) {
				t.Errorf("wall %v while running %v", st.Usage.Wall, time.Since(st.StartedAt))
			}
			ctx, cancel := context.WithTimeout(t.Context(), testWait)
			defer cancel()
			end, err := r.Stop(ctx, "spin", "test")
			if err != nil {
				t.Fatal(err)
			}
			if end.Usage.Source == "" || end.Usage.CPUUser < st.Usage.CPUUser {
				t.Errorf("usage at the end %+v, before %+v", end.Usage, st.Usage)
			}
		})
	}
}

// TestRecordUsage: a usage survives the journal whatever the boot the
// record is of, a record without one (as written before usages) still
// loads, and a malformed usage is refused.
func TestRecordUsage(t *testing.T) {
	t.Parallel()
	use := Usage{CPUUser: 1500 * time.Millisecond, CPUSystem: 20 * time.Millisecond, PeakMemory: 104 << 20, Source: UsageRusage}
	for _, otherBoot := range []string{"", otherBootID, bootUnknown} {
		rec := fullRecord("used", kindEnd)
		rec.otherBoot = otherBoot
		rec.st.Usage = use
		rec.st.Usage.Wall = rec.st.EndedAt.Sub(rec.st.StartedAt)
		got, err := unmarshalRecord(string(rec.marshal(nil)))
		if err != nil {
			t.Fatalf("boot %q: %v", otherBoot, err)
		}
		if !sameRecord(got, rec) {
			t.Errorf("boot %q: round trip\n got %+v\nwant %+v", otherBoot, got, rec)
		}
	}

	t.Run("old records load", func(t *testing.T) {
		needBootID(t)
		for _, rec := range []jobRecord{fullRecord("a", kindEnd), fullRecord("b", kindStart)} {
			p := rec.marshal(nil) // nothing measured: as before usages
			got, err := unmarshalRecord(string(p))
			if err != nil || got.st.Usage != (Usage{}) {
				t.Errorf("%s: %+v, %v", rec.st.ID, got.st.Usage, err)
			}
		}
	})

	t.Run("malformed", func(t *testing.T) {
		bare := fullRecord("bad", kindEnd)
		bare.otherBoot = otherBootID
		head := bare.marshal(nil)
		for name, tail := range map[string][]byte{
			"unknown source":  binaryUsage("proc", 1, 1, 1),
			"negative cpu":    binaryUsage(UsageCgroup, -1, 1, 1),
			"negative memory": binaryUsage(UsageCgroup, 1, 1, -1),
			"cut short":       binaryUsage(UsageCgroup, 1, 1, 1)[:8],
		} {
			p := append(bytes.Clone(head), tail...)
			if _, err := unmarshalRecord(string(p)); err == nil {
				t.Errorf("%s: loaded", name)
			}
		}
	})
}

func binaryUsage(source string, user, system, peak int64) []byte {
	b := appendString(nil, source)
	for _, v := range []int64{user, system, peak} {
		b = binary.AppendVarint(b, v)
	}
	return b
}

// TestUsageAcrossHandoff: a job handed from one Runner to the next while
// it runs is measured whole by the Runner that sees its end.
func TestUsageAcrossHandoff(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{DataDir: t.TempDir(), ScriptsDir: t.TempDir(), AllowedCommands: append(testCommands, exe), CgroupParent: "-"}
	first, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	mustStart(t, first, "hog", Spec{Command: exe, Env: map[string]string{hogEnv: UsageRusage}})
	handed, err := first.Handoff()
	if err != nil || len(handed) != 1 {
		t.Fatalf("Handoff: %d jobs, %v", len(handed), err)
	}
	opts.Adopt = handed
	second, _ := newRunner(t, func(o *Options) { *o = opts })
	st := waitDone(t, second, "hog")
	// This test process may have held more than the hog (see rusageUsage).
	self := procStatusBytes("VmHWM:")
	small := self < hogMemory*8/10
	checkHogUsage(t, st, UsageRusage, small)
	if !small && st.Usage.PeakMemory != 0 && st.Usage.PeakMemory <= self {
		t.Errorf("peak memory %d next to a worker that held %d: want 0, unknown", st.Usage.PeakMemory, self)
	}
}
