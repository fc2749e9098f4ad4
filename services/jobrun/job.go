package jobrun

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// copierDrainTimeout bounds how long the waiter waits for the copiers after
// the main process ended. Without a cgroup a grandchild that left the process
// group (setsid) can keep the pipes open forever.
const copierDrainTimeout = 3 * time.Second

// spawn gives the job its uid, home and cgroup, records it and starts its
// process. j is already in r.jobs and counted in r.active. On failure
// nothing is left behind.
func (r *Runner) spawn(j *job, p *plan) (Status, bool, error) {
	var (
		out      *outputLog
		cg       *jobCgroup
		cgFD     *os.File
		pipes    [4]*os.File // stdout r/w, stderr r/w
		ran      bool        // a process was started (and is reaped by now)
		recorded bool        // the journal has the job's start record
		logger   = r.log.With("job_id", j.id)
	)
	fail := func(err error) (Status, bool, error) {
		for _, f := range pipes {
			if f != nil {
				_ = f.Close()
			}
		}
		if cgFD != nil {
			_ = cgFD.Close()
		}
		if out != nil {
			out.close()
			if out.dirMade {
				if rmErr := os.RemoveAll(j.dir); rmErr != nil {
					logger.Error("cannot remove the output of a job that failed to start", "error", rmErr)
				}
			}
		}
		cg.remove()
		if j.lease != nil {
			// Anything the process forked before it was killed runs under
			// the uid; it must be gone before the uid is.
			if ran && !killUID(j.lease.uid, copierDrainTimeout) {
				r.holdUID(heldUID{lease: j.lease, home: j.home})
			} else {
				r.releaseUID(j.lease, j.home)
			}
		}
		if rmErr := os.RemoveAll(j.home); rmErr != nil {
			logger.Error("cannot remove the home directory of a job that failed to start", "error", rmErr)
		}
		gone := func() { r.active-- }
		if recorded {
			r.forget([]string{j.id}, gone)
		} else {
			r.mu.Lock()
			delete(r.jobs, j.id)
			gone()
			r.mu.Unlock()
		}
		j.startErr = err
		close(j.started)
		close(j.recorded)
		close(j.done)
		return Status{}, false, err
	}
	internal := func(what string, err error) (Status, bool, error) {
		// No sentinel: the caller did nothing wrong, so the RPC layer
		// reports a generic internal error and logs this one.
		return fail(fmt.Errorf("the worker could not %s: %w", what, err))
	}

	uid := r.id.uid
	if r.uids != nil {
		lease, err := r.uids.acquire(j.id)
		if errors.Is(err, ErrNoUID) {
			return fail(err)
		}
		if err != nil {
			return internal("lease a uid for the job", err)
		}
		j.lease, uid = lease, lease.uid
	}
	if err := r.makeHome(j.home, uid, j.spec.ScriptName, p.script); err != nil {
		return internal("create the job's home directory", err)
	}
	if p.script != nil {
		p.args[p.scriptAt] = filepath.Join(j.home, j.spec.ScriptName)
	}
	limit := j.spec.OutputLimit
	if limit == 0 {
		limit = r.opts.OutputLimit
	}
	out = &outputLog{dir: j.dir, limit: limit}
	work := p.workDir
	if work == "" {
		work = j.home
	}
	limits := j.spec.MemoryLimit > 0 || j.spec.CPULimit > 0
	var err error
	cg, cgFD, err = r.cg.create(j.id, j.spec.MemoryLimit, j.spec.CPULimit)
	if err != nil {
		if limits {
			logger.Error("cannot create the job cgroup", "error", err)
			return fail(fmt.Errorf("%w: the worker could not set up resource limits", ErrLimitsUnsupported))
		}
		logger.Warn("cannot create the job cgroup; using the process group only", "error", err)
		cg = nil
	}

	j.mu.Lock()
	j.cg = cg
	j.out = out
	j.st.Cgroup = cg.mode()
	j.st.RunAs = r.id.runAs(uid)
	pending := j.recordLocked(kindStart)
	j.mu.Unlock()
	// The job is recorded before its process exists, so that a worker
	// that dies at any point after leaves a job the next one reports LOST
	// (and whose cgroup it kills). Not synced: see the journal.
	if _, err := r.record(j, &pending); err != nil {
		return internal("record the job", err)
	}
	recorded = true

	if pipes[0], pipes[1], err = os.Pipe(); err != nil {
		return internal("create pipes", err)
	}
	if pipes[2], pipes[3], err = os.Pipe(); err != nil {
		return internal("create pipes", err)
	}
	cmd := &exec.Cmd{
		Path:   p.path,
		Args:   p.args,
		Env:    r.environ(j.id, j.home, &j.spec),
		Dir:    work,
		Stdin:  nil, // os/exec opens /dev/null
		Stdout: pipes[1],
		Stderr: pipes[3],
		// Setpgid makes the job a process group of its own (pgid == pid),
		// so signals can reach the whole tree it forks. The child switches
		// to the job's uid and gid after fork, before chdir and execve.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Credential: r.id.credential(uid)},
	}
	if cgFD != nil {
		// clone3(CLONE_INTO_CGROUP): the child is born inside the job's
		// cgroup, so nothing it forks can escape between fork and attach.
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cgFD.Fd())
	}
	startErr := cmd.Start()
	ran = startErr == nil
	// The child holds its own copies of the write ends; ours must go so the
	// copiers see EOF when the job's last writer exits.
	_ = pipes[1].Close()
	_ = pipes[3].Close()
	pipes[1], pipes[3] = nil, nil
	if cgFD != nil {
		_ = cgFD.Close()
		cgFD = nil
	}
	if startErr != nil {
		// os/exec already reaped the child if clone succeeded but execve
		// failed, so no zombie is left.
		return fail(fmt.Errorf("%w: command %q could not be executed: %v (a script's #! line may name a missing interpreter)",
			ErrExec, j.spec.Command, unwrapPathError(startErr)))
	}
	pid := cmd.Process.Pid
	// v1 controllers have no CLONE_INTO_CGROUP: the pid is attached right
	// after start. In that short window the job runs unlimited, and a child
	// forked in it stays outside the v1 groups (it is still in the process
	// group and, where available, in the v2 cgroup).
	if err := cg.attach(pid); err != nil {
		_ = signalGroup(pid, syscall.SIGKILL) // not reaped yet: the pgid is ours
		_ = cmd.Wait()
		logger.Error("cannot attach the job to its cgroups", "error", err)
		return fail(fmt.Errorf("%w: the worker could not apply resource limits", ErrLimitsUnsupported))
	}
	j.pipes = [2]*os.File{pipes[0], pipes[2]}
	for i, s := range []Stream{StreamStdout, StreamStderr} {
		go r.copyStream(j, s, j.pipes[i], j.copied[i])
	}
	pipes = [4]*os.File{}

	j.mu.Lock()
	j.st.State = StateRunning
	j.st.PID = pid
	j.st.StartedAt = time.Now()
	j.pgid = pid
	running := j.snapshotLocked()
	j.mu.Unlock()
	close(j.started)
	// The copiers run before the pid is known; a limit they hit by now
	// could not be acted on yet.
	if j.out.limitWasHit() {
		r.beginStop(j, StateFailed, "", "output limit of "+formatBytes(j.out.limit)+" reached")
	}

	if t := j.spec.Timeout; t > 0 {
		j.mu.Lock()
		j.deadlineAt = time.Now().Add(t)
		j.deadline = time.AfterFunc(t, func() {
			r.beginStop(j, StateTimedOut, "", "timed out after "+t.String())
		})
		j.mu.Unlock()
	}
	// Per job, at debug: the worker logs every start ("job started", with
	// the leader's epoch), and the keeper's log, a file that is not rotated, must not grow with the jobs.
	logger.Debug("job process started", "pid", pid, "cgroup", cg.mode())
	r.notifyChange(running)
	go r.wait(j, cmd)
	return running, true, nil
}

// recordRunning appends the record that lets a restarted worker report
// the job as LOST and kill what it left behind: pid, start time, cgroups.
// The waiter writes it while the job runs, not Start, so that reading the
// start time need not delay the reply. The process is not reaped before
// this returns (the waiter reaps it), so its pid and start time are still
// its own. A worker that dies before leaves the job's pending record, which
// the next start reports as LOST, and a cgroup that its sweep kills.
func (r *Runner) recordRunning(j *job, pid int) {
	defer close(j.recorded)
	ticks, err := procStartTicks(pid)
	if err != nil {
		r.log.Warn("cannot read the job's start time", "job_id", j.id, "error", err)
	}
	j.mu.Lock()
	j.startTicks = ticks
	rec := j.recordLocked(kindStart)
	j.mu.Unlock()
	if _, err := r.record(j, &rec); err != nil {
		r.log.Error("cannot record the job as running", "job_id", j.id, "error", err)
	}
}

// recordLocked returns the job's record as of now. Call it with j.mu held.
func (j *job) recordLocked(kind recordKind) jobRecord {
	rec := jobRecord{kind: kind, st: j.st, startTicks: j.startTicks, indexRecords: j.nrec}
	if j.cg != nil {
		rec.cgroupV2, rec.cgroupV1 = j.cg.v2, j.cg.v1
	}
	return rec
}

// record appends one of the job's records to the journal and returns the
// ticket to wait for it to be durable.
func (r *Runner) record(j *job, rec *jobRecord) (uint64, error) {
	p := rec.marshal(nil)
	s := string(p)
	return r.jl.append([][]byte{p}, func() { j.rec = s })
}

// copyStream is the one copier of a stream: it moves bytes from the pipe to
// the job's files until every writer closed the pipe. Past the output limit
// or after a write error it keeps draining and discarding, so the job never
// blocks on a full pipe.
func (r *Runner) copyStream(j *job, s Stream, rd *os.File, done chan struct{}) {
	defer close(done)
	buf := make([]byte, copyBufferSize)
	for {
		n, err := rd.Read(buf)
		if n > 0 {
			switch j.out.append(j, s, buf[:n], time.Now()) {
			case limitReached:
				r.log.Info("job output limit reached", "job_id", j.id, "limit", j.out.limit)
				r.beginStop(j, StateFailed, "", "output limit of "+formatBytes(j.out.limit)+" reached")
			case writeFailed:
				r.log.Error("cannot store job output; dropping it", "job_id", j.id, "stream", s.String(), "error", j.out.writeError())
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && r.handingOver() {
				// The pipe goes on to the next process image (Handoff).
				j.kept[s-1] = true
				return
			}
			_ = rd.Close()
			return
		}
	}
}

// handingOver reports whether Handoff has begun.
func (r *Runner) handingOver() bool {
	r.exitMu.RLock()
	defer r.exitMu.RUnlock()
	return r.handingOff
}

// wait is the job's one waiter goroutine. It alone reaps the process.
func (r *Runner) wait(j *job, cmd *exec.Cmd) {
	pid := cmd.Process.Pid
	r.recordRunning(j, pid)
	r.awaitEnd(j, pid, func() (int, syscall.Signal, Usage) {
		_ = cmd.Wait()
		ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
		use := rusageUsage(ru)
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Signaled():
				return -1, ws.Signal(), use
			case ws.Exited():
				return ws.ExitStatus(), 0, use
			}
		}
		return -1, 0, use
	}, j.pipes)
}

// awaitEnd waits for the job's process to exit, kills what it left, reaps
// it, and records and reports the job's end. reap returns the exit and the
// rusage of the main process.
func (r *Runner) awaitEnd(j *job, pid int, reap func() (int, syscall.Signal, Usage), readers [2]*os.File) {
	// Wait for the exit without reaping it (waitid(2) WNOWAIT). While the
	// leader is an unreaped zombie its pid, and with it the process group
	// ID, cannot be reused, so signalling -pgid until it is reaped is safe.
	werr := awaitExit(pid)
	// Once Handoff has begun the exit is the next image's to reap and
	// record; until this job is over, Handoff waits.
	r.exitMu.RLock()
	defer r.exitMu.RUnlock()
	if r.handingOff {
		return
	}
	j.mu.Lock()
	j.exited = true // from here on nobody signals the pid or the pgid
	cg := j.cg
	j.mu.Unlock()
	// Kubernetes semantics: a job ends when its main process ends; whatever
	// it left running is killed, or it could hold the pipes open and run on
	// unsupervised.
	if cg.mode() == "v2" {
		cg.kill()
	} else {
		if werr == nil {
			_ = signalGroup(pid, syscall.SIGKILL)
		}
		cg.kill()
	}
	code, sig, use := reap()

	timer := time.NewTimer(copierDrainTimeout)
	for i, ch := range j.copied {
		select {
		case <-ch:
		case <-timer.C:
			// Something outside the process group still holds the write
			// end. Closing our read ends makes the copiers return.
			r.log.Warn("job output still open after the job ended; closing it", "job_id", j.id)
			for _, rd := range readers[i:] {
				if rd != nil {
					_ = rd.Close()
				}
			}
			<-ch
		}
	}
	timer.Stop()
	oom := cg.oomKilled()
	// Read before the cgroup is removed, and after the copiers drained:
	// by then whatever held the pipes is gone and counted.
	if cgUse, ok := cg.usage(); ok {
		use = cgUse
	}
	j.out.close()
	writeErr := j.out.writeError()
	limitHit := j.out.limitWasHit()

	r.mu.Lock()
	r.active--
	r.mu.Unlock()

	j.mu.Lock()
	if j.grace != nil {
		j.grace.Stop()
	}
	if j.deadline != nil {
		j.deadline.Stop()
	}
	final := j.snapshotLocked()
	final.ExitCode, final.Signal, final.EndedAt = code, sig, time.Now()
	final.Usage = use
	final.Usage.Wall = wallTime(&final, final.EndedAt)
	switch {
	case j.stopping:
		final.State, final.Reason = j.stopState, j.stopReason
	case limitHit:
		final.State, final.Reason = StateFailed, "output limit of "+formatBytes(j.out.limit)+" reached"
	case oom:
		final.State, final.Reason = StateFailed, "OOMKilled: the job exceeded its memory limit of "+formatBytes(cg.memory)
	case writeErr != nil:
		final.State, final.Reason = StateFailed, "output write failed: "+unwrapPathError(writeErr).Error()
	case sig != 0:
		final.State, final.Reason = StateFailed, "killed by signal "+signalName(sig)
	case code == 0:
		final.State, final.Reason = StateSucceeded, "exited with code 0"
	default:
		final.State, final.Reason = StateFailed, fmt.Sprintf("exited with code %d", code)
	}
	end := j.recordLocked(kindEnd)
	end.st = final
	j.mu.Unlock()

	if r.crashed.Load() {
		close(j.done)
		return
	}
	// The end is reported (to followers, Status, OnChange and whoever waits
	// for done) only once it is durable: what the worker said survives it.
	endRec := string(end.marshal(nil))
	ticket, err := r.jl.append([][]byte{[]byte(endRec)}, func() { j.rec = endRec })
	if err == nil {
		err = r.jl.waitDurable(ticket)
	}
	if err != nil {
		// The file's state is unknown: it is written anew from the
		// Runner's records, this end included.
		if cerr := r.compact(true); cerr != nil {
			r.log.Error("cannot record the end of the job", "job_id", j.id, "error", errors.Join(err, cerr))
		}
	}
	j.mu.Lock()
	j.st = final
	j.complete = true
	close(j.notify)
	j.notify = make(chan struct{})
	reported := j.snapshotLocked()
	j.mu.Unlock()

	r.endIdentity(j, cg.remove())
	r.log.Debug("job ended", "job_id", j.id, "state", final.State.String(), "reason", final.Reason)
	// OnChange runs before done closes: whoever waits for the job (Stop,
	// Close) may rely on the change having been delivered, such as a worker
	// sending its final heartbeat right after Close.
	r.notifyChange(reported)
	// From here on the job is only its end record (see entry). Whoever
	// still holds j (Stop, followers) reads its final state from it.
	r.mu.Lock()
	if e := r.jobs[j.id]; e.j == j {
		r.jobs[j.id] = entry{rec: endRec}
	}
	r.mu.Unlock()
	close(j.done)
}

// beginStop starts the stop sequence once per job: SIGTERM to the process
// group now, SIGKILL to the group and cgroup.kill after StopGrace. Later
// calls share the first sequence. The escalation does not depend on any
// caller waiting.
func (r *Runner) beginStop(j *job, state State, by, reason string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	// A job whose main process already exited has ended on its own: its
	// end is its exit, not this request (the waiter kills what is left).
	if j.stopping || j.st.State.Terminal() || j.pgid == 0 || j.exited {
		return
	}
	j.stopping, j.stopState, j.stopReason = true, state, reason
	j.st.StoppedBy = by
	if !j.exited {
		if err := signalGroup(j.pgid, syscall.SIGTERM); err != nil {
			r.log.Warn("cannot signal the job", "job_id", j.id, "signal", "TERM", "error", err)
		}
	}
	j.killAt = time.Now().Add(r.opts.StopGrace)
	j.grace = time.AfterFunc(r.opts.StopGrace, func() { r.hardKill(j) })
}

// hardKill sends SIGKILL to the job's process group while its leader is not
// reaped, and kills its cgroup.
func (r *Runner) hardKill(j *job) {
	j.mu.Lock()
	if !j.exited {
		if err := signalGroup(j.pgid, syscall.SIGKILL); err != nil {
			r.log.Warn("cannot signal the job", "job_id", j.id, "signal", "KILL", "error", err)
		}
	}
	cg := j.cg
	done := j.st.State.Terminal()
	j.mu.Unlock()
	if !done {
		cg.kill()
	}
}
