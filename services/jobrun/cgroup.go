package jobrun

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupHost is what this host offers for containment and limits, detected
// once by New. Fields are read-only after detection.
type cgroupHost struct {
	v2Parent string // parent of per-job v2 directories; "" without cgroup v2
	v2Memory bool   // memory controller enabled for job cgroups
	v2CPU    bool   // cpu controller enabled for job cgroups
	v1Memory string // parent of per-job v1 memory directories; "" if unavailable
	v1CPU    string // parent of per-job v1 cpu directories; "" if unavailable
}

func (h *cgroupHost) memoryOK() bool { return h.v2Memory || h.v1Memory != "" }
func (h *cgroupHost) cpuOK() bool    { return h.v2CPU || h.v1CPU != "" }

// jobCgroup is the set of cgroup directories of one job.
type jobCgroup struct {
	v2     string   // "" if the job is not in a v2 cgroup
	v1     []string // v1 directories the pid is attached to after start
	oomV2  bool     // read memory.events in v2
	oomV1  string   // v1 memory directory, for memory.oom_control
	memory int64
}

func (c *jobCgroup) mode() string {
	switch {
	case c == nil:
		return ""
	case c.v2 != "":
		return "v2"
	case len(c.v1) > 0:
		return "v1"
	}
	return ""
}

type mountEntry struct {
	root, point, fstype string
	super               []string
}

func readMounts() []mountEntry {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		out = append(out, mountEntry{root: f[3], point: f[4], fstype: g[0], super: strings.Split(g[2], ",")})
	}
	return out
}

// ownV1Path returns this process's cgroup path for a v1 controller, as read
// from /proc/self/cgroup.
func ownV1Path(controller string) (string, bool) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || parts[1] == "" {
			continue
		}
		if slices.Contains(strings.Split(parts[1], ","), controller) {
			return parts[2], true
		}
	}
	return "", false
}

// dataDirTag names the cgroup directories of one DataDir, so runners with
// different data directories never share (or clean up) each other's cgroups.
func dataDirTag(dataDir string) string {
	sum := sha256.Sum256([]byte(dataDir))
	return "baton-" + hex.EncodeToString(sum[:4])
}

// detectCgroups finds what containment the host offers. It never fails: a
// missing feature is logged and left out.
func detectCgroups(parent, absDataDir string, log *slog.Logger) cgroupHost {
	var h cgroupHost
	if parent == "-" {
		log.Info("cgroups disabled by configuration; jobs are contained by process group only")
		return h
	}
	tag := dataDirTag(absDataDir)
	mounts := readMounts()
	var v2mount string
	for _, m := range mounts {
		if m.fstype == "cgroup2" {
			v2mount = m.point
			break
		}
	}
	if v2mount != "" {
		dir := parent
		switch {
		case dir == "":
			dir = filepath.Join(v2mount, tag)
			removeStaleParents(dir, log)
		case !filepath.IsAbs(dir):
			dir = filepath.Join(v2mount, dir)
		}
		h.setupV2(dir, log)
	} else {
		log.Info("no cgroup v2 mount; jobs are contained by process group only")
	}
	for _, ctl := range []string{"memory", "cpu"} {
		if (ctl == "memory" && h.v2Memory) || (ctl == "cpu" && h.v2CPU) {
			continue
		}
		dir := v1Parent(mounts, ctl, tag)
		if dir == "" {
			log.Debug("cgroup v1 controller unavailable", "controller", ctl)
			continue
		}
		if ctl == "memory" {
			h.v1Memory = dir
		} else {
			h.v1CPU = dir
		}
	}
	log.Debug("cgroups detected", "v2", h.v2Parent != "", "v2_memory", h.v2Memory, "v2_cpu", h.v2CPU,
		"v1_memory", h.v1Memory != "", "v1_cpu", h.v1CPU != "")
	return h
}

// setupV2 makes dir the parent of the job cgroups if it can be one. Another
// worker starting at the same time may remove it while it is still empty
// (see removeStaleParents): then it is made again.
func (h *cgroupHost) setupV2(dir string, log *slog.Logger) {
	gone := func() bool {
		_, err := os.Stat(dir)
		return errors.Is(err, fs.ErrNotExist)
	}
	for try := 1; ; try++ {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			log.Warn("cgroup v2 parent unusable; falling back to process groups", "error", err)
			return
		}
		if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
			if try < 3 && gone() {
				continue
			}
			log.Warn("cgroup v2 lacks cgroup.kill; falling back to process groups")
			return
		}
		memory, cpu := enableController(dir, "memory"), enableController(dir, "cpu")
		if try < 3 && gone() {
			continue
		}
		h.v2Parent, h.v2Memory, h.v2CPU = dir, memory, cpu
		return
	}
}

// isParentName reports whether name is that of a cgroup parent made by
// dataDirTag.
func isParentName(name string) bool {
	hexPart, ok := strings.CutPrefix(name, "baton-")
	if !ok || len(hexPart) != 8 {
		return false
	}
	_, err := hex.DecodeString(hexPart)
	return err == nil && strings.ToLower(hexPart) == hexPart
}

// removeStaleParents removes the empty cgroup parents of other data
// directories beside dir. A worker killed without Close leaves its parent
// behind, and the next worker of the same data directory removes it only
// when it is closed; with another data directory nobody would. rmdir(2)
// removes only a cgroup without children and processes, so a parent that
// still holds jobs is never touched; a live but idle worker whose parent
// goes makes it again for its next job (see cgroupHost.mkdirV2).
func removeStaleParents(dir string, log *slog.Logger) {
	parent, own := filepath.Dir(dir), filepath.Base(dir)
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if name == own || !e.IsDir() || !isParentName(name) {
			continue
		}
		if syscall.Rmdir(filepath.Join(parent, name)) == nil && log != nil {
			log.Info("removed the empty cgroup of a worker that is gone", "cgroup", name)
		}
	}
}

// mkdirV2 makes a job's v2 directory. If the parent is gone (removed while
// empty by another worker's start) it is made again, with the controllers
// it had.
func (h *cgroupHost) mkdirV2(dir string) error {
	var err error
	for range 3 {
		err = os.Mkdir(dir, 0o755)
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.MkdirAll(h.v2Parent, 0o755); err != nil {
			return err
		}
		if h.v2Memory {
			enableController(h.v2Parent, "memory")
		}
		if h.v2CPU {
			enableController(h.v2Parent, "cpu")
		}
	}
	return err
}

func enableController(dir, ctl string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil || !slices.Contains(strings.Fields(string(b)), ctl) {
		return false
	}
	return os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+ctl), 0o644) == nil
}

// v1Parent returns a directory for per-job v1 groups of a controller, nested
// under this process's own group for that controller.
func v1Parent(mounts []mountEntry, ctl, tag string) string {
	own, ok := ownV1Path(ctl)
	if !ok {
		return ""
	}
	for _, m := range mounts {
		if m.fstype != "cgroup" || !slices.Contains(m.super, ctl) {
			continue
		}
		rel, err := filepath.Rel(m.root, own)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		dir := filepath.Join(m.point, rel, tag)
		removeStaleParents(dir, nil)
		if os.MkdirAll(dir, 0o755) != nil {
			continue
		}
		return dir
	}
	return ""
}

// create makes the job's cgroup directories and applies the limits. The
// returned file, if not nil, is the open v2 directory for CLONE_INTO_CGROUP;
// the caller closes it after the process started.
func (h *cgroupHost) create(id string, memory int64, cpu float64) (*jobCgroup, *os.File, error) {
	c := &jobCgroup{memory: memory}
	fail := func(err error) (*jobCgroup, *os.File, error) {
		c.remove()
		return nil, nil, err
	}
	if h.v2Parent != "" {
		dir := filepath.Join(h.v2Parent, id)
		if err := h.mkdirV2(dir); errors.Is(err, os.ErrExist) {
			// A leftover of an earlier job with this ID: empty it first.
			killCgroupDir(dir)
			removeCgroupDir(dir)
			err = h.mkdirV2(dir)
			if err != nil {
				return fail(err)
			}
		} else if err != nil {
			return fail(err)
		}
		c.v2 = dir
		if memory > 0 && h.v2Memory {
			if err := writeFile(dir, "memory.max", itoa(memory)); err != nil {
				return fail(err)
			}
			_ = writeFile(dir, "memory.swap.max", "0")
			c.oomV2 = true
		}
		if cpu > 0 && h.v2CPU {
			if err := writeFile(dir, "cpu.max", fmt.Sprintf("%d 100000", cpuQuota(cpu))); err != nil {
				return fail(err)
			}
		}
	}
	if memory > 0 && !h.v2Memory {
		dir := filepath.Join(h.v1Memory, id)
		if err := mkdirFresh(dir); err != nil {
			return fail(err)
		}
		c.v1 = append(c.v1, dir)
		if err := writeFile(dir, "memory.limit_in_bytes", itoa(memory)); err != nil {
			return fail(err)
		}
		// Without this, a job could swap instead of being OOM-killed. Not
		// every kernel accounts swap, so a failure is fine.
		_ = writeFile(dir, "memory.memsw.limit_in_bytes", itoa(memory))
		c.oomV1 = dir
	}
	if cpu > 0 && !h.v2CPU {
		dir := filepath.Join(h.v1CPU, id)
		if err := mkdirFresh(dir); err != nil {
			return fail(err)
		}
		c.v1 = append(c.v1, dir)
		if err := writeFile(dir, "cpu.cfs_period_us", "100000"); err != nil {
			return fail(err)
		}
		if err := writeFile(dir, "cpu.cfs_quota_us", strconv.FormatInt(cpuQuota(cpu), 10)); err != nil {
			return fail(err)
		}
	}
	if c.v2 == "" {
		return c, nil, nil
	}
	f, err := os.Open(c.v2)
	if err != nil {
		return fail(err)
	}
	return c, f, nil
}

func cpuQuota(cores float64) int64 {
	return max(int64(cores*100000), 1000)
}

func mkdirFresh(dir string) error {
	err := os.Mkdir(dir, 0o755)
	if errors.Is(err, fs.ErrNotExist) {
		// The parent, removed while empty by another worker's start.
		if err = os.MkdirAll(filepath.Dir(dir), 0o755); err == nil {
			err = os.Mkdir(dir, 0o755)
		}
	}
	if errors.Is(err, os.ErrExist) {
		killCgroupDir(dir)
		removeCgroupDir(dir)
		err = os.Mkdir(dir, 0o755)
	}
	return err
}

func writeFile(dir, name, value string) error {
	return os.WriteFile(filepath.Join(dir, name), []byte(value), 0o644)
}

// writeExisting writes value to an existing file such as a cgroup control
// file: open, write, close, without os.WriteFile's O_CREATE|O_TRUNC.
func writeExisting(path, value string) error {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	_, err = syscall.Write(fd, []byte(value))
	if cerr := syscall.Close(fd); err == nil {
		err = cerr
	}
	return err
}

// attach moves pid into the job's v1 directories.
func (c *jobCgroup) attach(pid int) error {
	if c == nil {
		return nil
	}
	for _, dir := range c.v1 {
		if err := writeFile(dir, "cgroup.procs", strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// kill kills every process of the job's cgroup. With v2 that is one write to
// cgroup.kill (the kernel walks the whole subtree, setsid escapes included).
func (c *jobCgroup) kill() {
	if c == nil {
		return
	}
	if c.v2 != "" {
		// The v2 parent was checked for cgroup.kill when it was detected,
		// so no stat first.
		_ = writeExisting(filepath.Join(c.v2, "cgroup.kill"), "1")
		return
	}
	for _, dir := range c.v1 {
		killCgroupDir(dir)
	}
}

// oomKilled reports whether the kernel OOM-killed a process of the job.
func (c *jobCgroup) oomKilled() bool {
	switch {
	case c == nil:
		return false
	case c.oomV2:
		return counter(filepath.Join(c.v2, "memory.events"), "oom_kill") > 0
	case c.oomV1 != "":
		return counter(filepath.Join(c.oomV1, "memory.oom_control"), "oom_kill") > 0
	}
	return false
}

func counter(file, key string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// remove deletes the job's cgroup directories. It reports whether the job
// had a v2 cgroup and it is gone: rmdir(2) removes only an unpopulated
// cgroup, and a job cannot move its processes out of it, so then none of
// them is left.
func (c *jobCgroup) remove() (v2Empty bool) {
	if c == nil {
		return false
	}
	for _, dir := range c.v1 {
		removeCgroupDir(dir)
	}
	if c.v2 != "" {
		return removeCgroupDir(c.v2)
	}
	return false
}

// killCgroupDir kills every process in a cgroup directory. v2 has
// cgroup.kill; for v1 the member pids are signalled one by one. A pid listed
// in cgroup.procs belongs to the group until it is reaped, so the window for
// hitting a reused pid is the time between reading the list and kill(2).
func killCgroupDir(dir string) {
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err == nil {
		_ = writeFile(dir, "cgroup.kill", "1")
		return
	}
	for range 50 {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil || len(bytes.TrimSpace(b)) == 0 {
			return
		}
		for f := range strings.FieldsSeq(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// removeCgroupDir removes a cgroup directory, retrying briefly while the
// kernel still counts exiting processes in it (rmdir(2) fails with EBUSY).
// It reports whether the directory is gone.
func removeCgroupDir(dir string) bool {
	delay := 5 * time.Millisecond
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return true
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return false
		}
		time.Sleep(delay)
		delay = min(delay*2, 100*time.Millisecond)
	}
}

// sweep kills and removes leftover job cgroups of an earlier worker run.
func (h *cgroupHost) sweep(log *slog.Logger, keep map[string]*Handoff) {
	for _, parent := range []string{h.v2Parent, h.v1Memory, h.v1CPU} {
		if parent == "" {
			continue
		}
		entries, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.IsDir() || keep[e.Name()] != nil {
				continue
			}
			dir := filepath.Join(parent, e.Name())
			killCgroupDir(dir)
			removeCgroupDir(dir)
			log.Info("removed leftover job cgroup", "job_id", e.Name())
		}
	}
}

// removeParents removes the Runner's cgroup parent directories once they
// are empty; rmdir(2) refuses a directory that still has job cgroups.
func (h *cgroupHost) removeParents() {
	for _, dir := range []string{h.v2Parent, h.v1Memory, h.v1CPU} {
		// Only the directories named after the DataDir were made by us; a
		// configured CgroupParent belongs to the operator.
		if dir != "" && strings.HasPrefix(filepath.Base(dir), "baton-") {
			_ = syscall.Rmdir(dir)
		}
	}
}
