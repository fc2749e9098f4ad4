// Package jobrun runs jobs as local child processes of the worker and keeps
// their state and output on disk.
//
// A Runner starts each job in its own process group (and, where the host
// allows it, its own cgroup v2 directory, entered at clone time), captures
// stdout and stderr through pipes it owns into per-job files, made on the
// job's first byte, and serves that output to any number of followers from
// the files. Exactly one waiter goroutine per job reaps the process; one
// copier goroutine per stream copies output. Job records are appended to one
// journal per Runner, and a job's end is reported only once its record is
// on stable storage, so what was reported survives a crash of the worker or
// of the machine. Jobs that were running when the worker died are reported
// as LOST and their leftover processes killed.
//
// A Runner of a root worker runs each job under a uid of its own
// (Options.JobUIDs), in a home directory only that uid can enter, so that
// jobs cannot read or signal each other or read the worker's files. Uids are
// leased host-wide and given back only once none of the job's processes is
// left, also across a worker restart.
//
// Every exported method of Runner is safe for concurrent use.
package jobrun

import (
	"errors"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// State is the lifecycle state of a job. The zero value is StatePending.
// States are plain values and safe to copy and share.
type State int

const (
	// StatePending means the job was accepted and its process is being started.
	StatePending State = iota
	// StateRunning means the job's main process is running.
	StateRunning
	// StateSucceeded means the main process exited with code 0.
	StateSucceeded
	// StateFailed means the main process exited with a non-zero code, was
	// killed by a signal it did not ask for, ran out of memory, exceeded its
	// output limit, or its output could not be written.
	StateFailed
	// StateStopped means the job was stopped on request.
	StateStopped
	// StateTimedOut means the job ran longer than its Spec.Timeout.
	StateTimedOut
	// StateLost means the worker restarted while the job was running, or the
	// job's state file could not be read.
	StateLost
)

var stateNames = [...]string{
	StatePending:   "PENDING",
	StateRunning:   "RUNNING",
	StateSucceeded: "SUCCEEDED",
	StateFailed:    "FAILED",
	StateStopped:   "STOPPED",
	StateTimedOut:  "TIMED_OUT",
	StateLost:      "LOST",
}

// String returns the upper-case name of the state, such as "RUNNING".
func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "UNKNOWN"
}

// Terminal reports whether the state is final: once a job is in a terminal
// state it never changes again.
func (s State) Terminal() bool {
	return s >= StateSucceeded && s <= StateLost
}

func parseState(name string) (State, bool) {
	for i, n := range stateNames {
		if n == name {
			return State(i), true
		}
	}
	return 0, false
}

// Stream identifies a captured output stream. Streams are bit flags so that
// OutputRequest.Streams can select both.
type Stream int

const (
	// StreamStdout is the job's standard output.
	StreamStdout Stream = 1
	// StreamStderr is the job's standard error.
	StreamStderr Stream = 2

	streamBoth = StreamStdout | StreamStderr
)

// String returns "stdout", "stderr", "both" or "unknown".
func (s Stream) String() string {
	switch s {
	case StreamStdout:
		return "stdout"
	case StreamStderr:
		return "stderr"
	case streamBoth:
		return "both"
	}
	return "unknown"
}

// Spec describes what a job runs. A Spec is a plain value; the Runner keeps
// its own copy, so callers may reuse theirs after Start returns.
type Spec struct {
	// Command is an allow-listed name ("bash") or the path of an executable
	// relative to the scripts directory.
	Command string
	// Path is an optional script path relative to the scripts directory. It
	// is passed to Command as its first argument, as an absolute path.
	Path string
	// Args are passed verbatim after Path. No shell is involved.
	Args []string
	// Env holds extra environment variables. They may override PATH, HOME
	// and LANG but not BATON_JOB_ID.
	Env map[string]string
	// Dir is an optional working directory relative to the scripts
	// directory. By default each job gets a fresh directory of its own.
	Dir string
	// Timeout bounds the run time; 0 means none. On expiry the job is
	// stopped and ends as TIMED_OUT.
	Timeout time.Duration
	// OutputLimit caps the bytes stored for the job; 0 means
	// Options.OutputLimit.
	OutputLimit int64
	// MemoryLimit caps the job's memory in bytes; 0 means none.
	MemoryLimit int64
	// CPULimit caps the job's CPU in cores (0.5 is half a core); 0 means none.
	CPULimit float64
	// Owner is the principal that started the job.
	Owner string
	// Labels are free-form annotations.
	Labels map[string]string
	// GroupID links the jobs of one fan-out; the runtime only records it.
	GroupID string
	// Script is the content of a script sent with the job, at most
	// MaxScriptBytes: Start writes it into the job's home directory as
	// ScriptName (mode 0500, owned by the job's uid) and passes that file
	// to Command as its first argument, in place of Path, which must be
	// empty. Only Start reads it: the Runner keeps the description below,
	// never the content, so a Status never carries it.
	Script []byte
	// ScriptName is the script's file name in the job's home directory,
	// letters, digits, '.', '_' and '-' only; empty means "script".
	ScriptName string
	// ScriptSize and ScriptSHA256 (hex) describe the script; Start sets
	// them, and ScriptName, from Script.
	ScriptSize   int64
	ScriptSHA256 string
}

// Status is a snapshot of a job. It is a value: the Runner never changes a
// Status after returning it, and callers may keep it.
type Status struct {
	ID    string
	Spec  Spec
	State State
	// PID is the process ID of the job's main process, 0 if it never started.
	// It is informational only: after the job ends the number may belong to
	// another process.
	PID int
	// ExitCode is the exit code, or -1 when the process was killed by a
	// signal or never exited.
	ExitCode int
	// Signal is the signal that killed the process, 0 if none.
	Signal syscall.Signal
	// Reason explains the state in a sentence, such as "exited with code 3".
	Reason string
	// StoppedBy names who asked for the job to stop, if anyone did.
	StoppedBy string
	CreatedAt time.Time
	StartedAt time.Time
	EndedAt   time.Time
	// StdoutBytes and StderrBytes count the stored output bytes.
	StdoutBytes int64
	StderrBytes int64
	// Cgroup says how the job was contained: "v2", "v1", or "" for the
	// process group only.
	Cgroup string
	// RunAs says whose uid the job runs under: "uid 61190 (per job)",
	// "user batch (uid 990)" or "the worker's uid 1000". Empty for a job
	// recorded by a worker that did not say.
	RunAs string
	// Usage is what the run cost: measured at its end, and while it runs
	// read from its cgroup when a Status asks (see Runner.Status).
	Usage Usage
}

// Errors returned by the Runner. They are wrapped with a sentence a user can
// act on; compare with errors.Is.
var (
	// ErrNotFound means no job has the given ID.
	ErrNotFound = errors.New("job not found")
	// ErrInvalidSpec means the job ID, the Spec or a request is malformed.
	ErrInvalidSpec = errors.New("invalid job spec")
	// ErrScriptNotFound means a script, command or directory does not exist
	// in the scripts directory.
	ErrScriptNotFound = errors.New("script not found")
	// ErrCommandNotAllowed means the command is neither allow-listed nor an
	// executable file in the scripts directory.
	ErrCommandNotAllowed = errors.New("command not allowed")
	// ErrExec means the process could not be started.
	ErrExec = errors.New("cannot start job")
	// ErrCapacity means the Runner already runs Options.Capacity jobs.
	ErrCapacity = errors.New("worker at capacity")
	// ErrConflict means a job with the same ID but a different Spec exists.
	ErrConflict = errors.New("job ID already in use")
	// ErrClosed means the Runner was closed.
	ErrClosed = errors.New("runner closed")
	// ErrLimitsUnsupported means resource limits were requested that this
	// host cannot enforce.
	ErrLimitsUnsupported = errors.New("resource limits unsupported")
	// ErrNoUID means every uid of Options.JobUIDs is held by a job whose
	// processes may still run.
	ErrNoUID = errors.New("no job uid free")
)

// SignalName names the signal that killed the job ("SIGKILL"), or returns ""
// when no signal did.
func (s Status) SignalName() string {
	if s.Signal == 0 {
		return ""
	}
	return "SIG" + signalName(s.Signal)
}

// signalName returns "KILL" for SIGKILL and so on.
func signalName(sig syscall.Signal) string {
	n := unix.SignalName(sig)
	if n == "" {
		return sig.String()
	}
	return n[len("SIG"):]
}

// formatBytes renders a byte count for reasons: "64 MiB", "10 KiB", "100 bytes".
func formatBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return itoa(n>>30) + " GiB"
	case n >= 1<<20 && n%(1<<20) == 0:
		return itoa(n>>20) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return itoa(n>>10) + " KiB"
	}
	return itoa(n) + " bytes"
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
