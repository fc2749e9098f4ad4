package jobrun

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// signalGroup sends sig to every process of the group. kill(2): a negative
// pid targets the process group. ESRCH means the group is already gone.
func signalGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		return nil
	}
	if err := syscall.Kill(-pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// procStartTicks returns a process's start time in clock ticks since boot
// (field 22 of proc_pid_stat(5)). Together with the pid it identifies a
// process across pid reuse.
func procStartTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces and parentheses; the
	// fields after it start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0, errors.New("malformed stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// recordedProcessAlive reports whether the record's process is provably
// the live process with its pid: the record is of this boot (see bootID),
// and the pid, above 1, belongs to a process that started at the recorded
// time. A record of another or an unknown boot never is, because its pid
// and start time may since name another process.
func recordedProcessAlive(rec *jobRecord) bool {
	pid := rec.st.PID
	if rec.otherBoot != "" || bootID() == "" || pid <= 1 || rec.startTicks == 0 {
		return false
	}
	ticks, err := procStartTicks(pid)
	return err == nil && ticks == rec.startTicks
}

// awaitExit returns once our child pid has exited, without reaping it
// (waitid(2) WNOWAIT). It waits in the runtime's poller on a pidfd, which
// becomes readable when the process exits: no thread is blocked per running
// job, and the exit is seen in the same poll as the EOF of the job's pipes,
// with one wake-up instead of two. Where pidfds cannot be polled it falls
// back to a blocking waitid. It returns an error only if pid is not a child
// that can be waited for.
func awaitExit(pid int) error {
	if ok, err := awaitExitPidfd(pid); ok {
		return err
	}
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// awaitExitPidfd is awaitExit through a polled pidfd; ok is false if that
// is not possible here.
func awaitExitPidfd(pid int) (ok bool, err error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false, nil
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return false, nil
	}
	// Non-blocking, so os.NewFile registers it with the poller.
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return false, nil
	}
	var werr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			var info unix.Siginfo
			werr = unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil)
			switch {
			case errors.Is(werr, unix.EINTR):
				continue
			case errors.Is(werr, unix.EAGAIN):
				werr = nil
				return false // running: wait until the pidfd is readable
			case werr != nil:
				return true
			}
			// With WNOHANG and no exit yet, the kernel leaves the
			// siginfo zeroed.
			return info.Signo != 0
		}
	})
	if err != nil {
		// The pidfd cannot be polled after all: block instead.
		return false, nil
	}
	return true, werr
}
