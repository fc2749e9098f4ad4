package jobrun

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// legacyRecordFile is where workers before the journal kept each job's
// record, DataDir/jobs/<id>/job.json. A Runner reads such records once,
// moves them into the journal and deletes them.
const legacyRecordFile = "job.json"

// legacyRecord is the JSON form of job.json.
type legacyRecord struct {
	ID          string    `json:"id"`
	Spec        Spec      `json:"spec"`
	State       string    `json:"state"`
	PID         int       `json:"pid,omitempty"`
	StartTicks  uint64    `json:"start_ticks,omitempty"`
	ExitCode    int       `json:"exit_code"`
	Signal      int       `json:"signal,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	StoppedBy   string    `json:"stopped_by,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	EndedAt     time.Time `json:"ended_at,omitzero"`
	StdoutBytes int64     `json:"stdout_bytes"`
	StderrBytes int64     `json:"stderr_bytes"`
	Cgroup      string    `json:"cgroup,omitempty"`
	CgroupV2    string    `json:"cgroup_v2,omitempty"`
	CgroupV1    []string  `json:"cgroup_v1,omitempty"`
	RunAs       string    `json:"run_as,omitempty"`
}

// errEmptyRecord is the job.json of a job directory whose job was never
// recorded: the worker stopped between taking the directory and writing
// the first record.
var errEmptyRecord = errors.New("job.json is empty")

// readLegacy reads DataDir/jobs/<id>/job.json into a record. A record that
// cannot be read becomes a LOST job that says why.
func readLegacy(dir, id string) (jobRecord, error) {
	var lr legacyRecord
	b, err := os.ReadFile(filepath.Join(dir, legacyRecordFile))
	if err == nil && len(b) == 0 {
		err = errEmptyRecord
	}
	if err == nil {
		err = json.Unmarshal(b, &lr)
	}
	state, ok := parseState(lr.State)
	if err == nil && !ok {
		err = fmt.Errorf("unknown state %q", lr.State)
	}
	if err == nil && lr.ID != id {
		err = errors.New("it belongs to another job")
	}
	if err != nil {
		when := time.Now()
		if fi, serr := os.Stat(dir); serr == nil {
			when = fi.ModTime()
		}
		return jobRecord{kind: kindEnd, st: Status{
			ID: id, State: StateLost, ExitCode: -1, CreatedAt: when, EndedAt: when,
			Reason: "state file unreadable: " + describeLoadError(err),
		}}, err
	}
	kind := kindEnd
	if !state.Terminal() {
		kind = kindStart
	}
	return jobRecord{
		kind: kind,
		st: Status{
			ID: lr.ID, Spec: lr.Spec, State: state, PID: lr.PID, ExitCode: lr.ExitCode,
			Signal: syscall.Signal(lr.Signal), Reason: lr.Reason, StoppedBy: lr.StoppedBy,
			CreatedAt: lr.CreatedAt, StartedAt: lr.StartedAt, EndedAt: lr.EndedAt,
			StdoutBytes: lr.StdoutBytes, StderrBytes: lr.StderrBytes, Cgroup: lr.Cgroup, RunAs: lr.RunAs,
		},
		startTicks: lr.StartTicks, cgroupV2: lr.CgroupV2, cgroupV1: lr.CgroupV1,
	}, nil
}

func describeLoadError(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "job.json is missing"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "job.json is truncated"
	case errors.Is(err, errEmptyRecord):
		return "job.json is empty"
	}
	return unwrapPathError(err).Error()
}

// scanIndex returns the number of complete records of an index file and the
// stream sizes they cover. A torn last record (a crash mid-write) is ignored.
func scanIndex(path string) (n, outN, errN int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, 0, err
	}
	n = fi.Size() / indexRecordSize
	if n == 0 {
		return 0, 0, 0, nil
	}
	var b [indexRecordSize]byte
	if _, err := f.ReadAt(b[:], (n-1)*indexRecordSize); err != nil {
		return 0, 0, 0, err
	}
	last := decodeRecord(b[:])
	outN, errN = int64(last.stdoutBefore), int64(last.stderrBefore)
	if last.stream == StreamStderr {
		errN += int64(last.length)
	} else {
		outN += int64(last.length)
	}
	return n, outN, errN, nil
}
