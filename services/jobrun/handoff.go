package jobrun

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Handoff is a running job handed from one process image to the next
// across an exec: the process, the read ends of its pipes, and what the
// Runner had in memory about it. The process stays the child of the same
// pid throughout (exec keeps the pid), unreaped, so its pid cannot be
// reused meanwhile. Handoffs are JSON-encoded between the images.
type Handoff struct {
	Status Status `json:"status"`
	// StartTicks and BootID identify the process beyond its pid.
	StartTicks uint64 `json:"start_ticks"`
	BootID     string `json:"boot_id"`
	// Stdout and Stderr are the inherited descriptors of the pipes' read
	// ends; -1 for a stream whose every writer is gone.
	Stdout int `json:"stdout"`
	Stderr int `json:"stderr"`
	// The output stored so far.
	Stored     int64  `json:"stored"`
	OutN       uint64 `json:"out_n"`
	ErrN       uint64 `json:"err_n"`
	Records    int64  `json:"records"`
	DirMade    bool   `json:"dir_made"`
	Discarding bool   `json:"discarding"`
	LimitHit   bool   `json:"limit_hit"`
	Limit      int64  `json:"limit"`
	// Deadline is when the job times out; zero for none.
	Deadline time.Time `json:"deadline"`
	// A stop in progress: its outcome, and when SIGKILL follows.
	Stopping   bool      `json:"stopping"`
	StopState  State     `json:"stop_state"`
	StopReason string    `json:"stop_reason"`
	KillAt     time.Time `json:"kill_at"`
	// The job's cgroup and uid.
	CgroupV2     string   `json:"cgroup_v2"`
	CgroupV1     []string `json:"cgroup_v1"`
	CgroupOOMV2  bool     `json:"cgroup_oom_v2"`
	CgroupOOMV1  string   `json:"cgroup_oom_v1"`
	CgroupMemory int64    `json:"cgroup_memory"`
	LeasedUID    uint32   `json:"leased_uid"`
	Leased       bool     `json:"leased"`
}

// FDs returns the descriptors h carries, which must survive the exec.
func (h *Handoff) FDs() []int {
	var fds []int
	for _, fd := range []int{h.Stdout, h.Stderr} {
		if fd >= 0 {
			fds = append(fds, fd)
		}
	}
	return fds
}

// Handoff prepares the Runner's running jobs to be carried on by a Runner
// of the next process image (Options.Adopt): it refuses new jobs, stops its
// goroutines without touching the jobs' processes, and returns each running
// job with duplicates of its pipes' read ends (close-on-exec set; the
// caller clears it just before the exec). Jobs that end meanwhile are left
// to the next image, which reaps them. After Handoff the Runner is inert;
// the caller is expected to exec.
func (r *Runner) Handoff() ([]Handoff, error) {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.awaitRecorded()
	// From here on a waiter that sees its process exit leaves it, unreaped,
	// to the next image; waiters finishing a job already finish first.
	r.exitMu.Lock()
	r.handingOff = true
	r.exitMu.Unlock()
	r.closeOnce.Do(func() { close(r.stopJanitor) })
	<-r.janitorDone

	var out []Handoff
	var errs []error
	for _, j := range r.liveJobs() {
		h, err := r.handOver(j)
		if err != nil {
			errs = append(errs, fmt.Errorf("job %s: %w", j.id, err))
			continue
		}
		out = append(out, h)
	}
	r.jl.close()
	if r.uids != nil {
		r.uids.close()
	}
	return out, errors.Join(errs...)
}

// handOver stops one job's copiers and timers and describes it.
func (r *Runner) handOver(j *job) (Handoff, error) {
	for i, rd := range j.pipes {
		// A deadline in the past wakes a copier blocked in read; seeing
		// handingOff, it returns and leaves its pipe open.
		_ = rd.SetReadDeadline(time.Unix(1, 0))
		<-j.copied[i]
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.deadline != nil {
		j.deadline.Stop()
	}
	if j.grace != nil {
		j.grace.Stop()
	}
	j.out.mu.Lock()
	h := Handoff{
		Status:     j.snapshotLocked(),
		StartTicks: j.startTicks,
		BootID:     bootID(),
		Stdout:     -1,
		Stderr:     -1,
		Stored:     j.out.stored,
		OutN:       j.out.outN,
		ErrN:       j.out.errN,
		Records:    j.out.nrec,
		DirMade:    j.out.dirMade,
		Discarding: j.out.discarding,
		LimitHit:   j.out.limitHit,
		Limit:      j.out.limit,
		Deadline:   j.deadlineAt,
		Stopping:   j.stopping,
		StopState:  j.stopState,
		StopReason: j.stopReason,
		KillAt:     j.killAt,
	}
	j.out.close0()
	j.out.mu.Unlock()
	if cg := j.cg; cg != nil {
		h.CgroupV2, h.CgroupV1, h.CgroupOOMV2, h.CgroupOOMV1, h.CgroupMemory = cg.v2, cg.v1, cg.oomV2, cg.oomV1, cg.memory
	}
	if j.lease != nil {
		h.LeasedUID, h.Leased = j.lease.uid, true
	}
	for i, fd := range []*int{&h.Stdout, &h.Stderr} {
		if !j.kept[i] {
			continue
		}
		d, err := dupFile(j.pipes[i])
		if err != nil {
			return Handoff{}, err
		}
		*fd = d
	}
	return h, nil
}

// dupFile duplicates f's descriptor, close-on-exec.
func dupFile(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
	}); err != nil {
		return -1, err
	}
	return nfd, derr
}

// adoptable reports whether h is the job of rec and its process is still
// the one it was: this boot, the same start time, and a child of this
// process (only then can it be waited for, and its pid not be reused).
func adoptable(h *Handoff, rec *jobRecord) bool {
	pid := h.Status.PID
	if h.Status.ID != rec.st.ID || pid <= 1 || pid != rec.st.PID || h.StartTicks == 0 || h.StartTicks != rec.startTicks {
		return false
	}
	if h.BootID == "" || h.BootID != bootID() {
		return false
	}
	if ticks, err := procStartTicks(pid); err != nil || ticks != h.StartTicks {
		return false
	}
	ppid, err := procParent(pid)
	return err == nil && ppid == os.Getpid()
}

// adopt makes a job of a handoff one of this Runner's, as spawn would
// have left it, and starts its copiers and waiter. rec is its start record.
func (r *Runner) adopt(h *Handoff, rec string) *job {
	st := h.Status
	j := &job{
		id:         st.ID,
		dir:        r.jobsDir + "/" + st.ID,
		home:       r.homesDir + "/" + st.ID,
		spec:       cloneSpec(st.Spec),
		started:    make(chan struct{}),
		recorded:   make(chan struct{}),
		done:       make(chan struct{}),
		copied:     [2]chan struct{}{make(chan struct{}), make(chan struct{})},
		notify:     make(chan struct{}),
		rec:        rec,
		st:         st,
		nrec:       h.Records,
		pgid:       st.PID,
		startTicks: h.StartTicks,
		stopping:   h.Stopping,
		stopState:  h.StopState,
		stopReason: h.StopReason,
		deadlineAt: h.Deadline,
		killAt:     h.KillAt,
		out: &outputLog{
			dir: r.jobsDir + "/" + st.ID, limit: h.Limit, stored: h.Stored, outN: h.OutN, errN: h.ErrN,
			nrec: h.Records, dirMade: h.DirMade, discarding: h.Discarding, limitHit: h.LimitHit, resumed: true,
		},
	}
	if h.CgroupV2 != "" || len(h.CgroupV1) > 0 {
		j.cg = &jobCgroup{v2: h.CgroupV2, v1: h.CgroupV1, oomV2: h.CgroupOOMV2, oomV1: h.CgroupOOMV1, memory: h.CgroupMemory}
	}
	if h.Leased && r.uids != nil {
		j.lease = &uidLease{pool: r.uids, uid: h.LeasedUID}
	}
	close(j.started)
	close(j.recorded)
	return j
}

// resume starts an adopted job's goroutines and timers.
func (r *Runner) resume(j *job, h *Handoff) {
	for i, fd := range []int{h.Stdout, h.Stderr} {
		if fd < 0 {
			close(j.copied[i])
			continue
		}
		unix.CloseOnExec(fd)
		// Non-blocking, so that the runtime's poller serves it and a read
		// deadline can interrupt it.
		_ = unix.SetNonblock(fd, true)
		j.pipes[i] = os.NewFile(uintptr(fd), "pipe")
		go r.copyStream(j, []Stream{StreamStdout, StreamStderr}[i], j.pipes[i], j.copied[i])
	}
	pid := j.st.PID
	j.mu.Lock()
	if !j.deadlineAt.IsZero() {
		j.deadline = time.AfterFunc(time.Until(j.deadlineAt), func() {
			r.beginStop(j, StateTimedOut, "", "timed out after "+j.spec.Timeout.String())
		})
	}
	if j.stopping {
		j.grace = time.AfterFunc(time.Until(j.killAt), func() { r.hardKill(j) })
	}
	j.mu.Unlock()
	if j.out.limitWasHit() {
		r.beginStop(j, StateFailed, "", "output limit of "+formatBytes(j.out.limit)+" reached")
	}
	go r.awaitEnd(j, pid, func() (int, syscall.Signal, Usage) { return reap(pid) }, j.pipes)
}

// reap waits for the exited child pid and returns its exit code, the
// signal that killed it (code -1 then) and its rusage. The pid was this
// process's child before the exec too, so the rusage covers its whole run.
func reap(pid int) (int, syscall.Signal, Usage) {
	var (
		ws syscall.WaitStatus
		ru syscall.Rusage
	)
	for {
		_, err := syscall.Wait4(pid, &ws, 0, &ru)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, 0, Usage{}
		}
		break
	}
	use := rusageUsage(&ru)
	switch {
	case ws.Signaled():
		return -1, ws.Signal(), use
	case ws.Exited():
		return ws.ExitStatus(), 0, use
	}
	return -1, 0, use
}

// procParent returns a process's parent pid (field 4 of proc_pid_stat(5)).
func procParent(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + itoa(int64(pid)) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, errors.New("malformed stat")
	}
	return strconv.Atoi(f[1])
}

// drop closes the descriptors of a handoff that is not adopted. Its
// process, if still a child of this one, is reaped whenever it ends (it is
// killed as a leftover when its record proves it the job's): nobody else
// waits for it, and unreaped it would stay a zombie for this process's life.
func (r *Runner) drop(h *Handoff) {
	for _, fd := range h.FDs() {
		_ = unix.Close(fd)
	}
	delete(r.adopted, h.Status.ID)
	if pid := h.Status.PID; pid > 1 {
		if ppid, err := procParent(pid); err == nil && ppid == os.Getpid() {
			go reap(pid)
		}
	}
}
