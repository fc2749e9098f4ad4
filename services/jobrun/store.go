package jobrun

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

const (
	recordFile = "job.json"
	stdoutFile = "stdout"
	stderrFile = "stderr"
	indexFile  = "index"
	// homesDirName is DataDir's directory of job home directories, apart
	// from DataDir/jobs: with jobs under other uids it is the one place
	// they may enter (see Options.JobUIDs).
	homesDirName = "home"
	// spareHome is a job's home directory, built ahead in its job
	// directory and moved to DataDir/home when the job starts.
	spareHome = ".home"
)

// record is the on-disk form of a job (job.json). It holds what a restarted
// worker needs to report the job and to kill what it left behind.
type record struct {
	Version     int       `json:"version"`
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

func toRecord(st Status, startTicks uint64, cg *jobCgroup) record {
	rec := record{
		Version: 1, ID: st.ID, Spec: st.Spec, State: st.State.String(),
		PID: st.PID, StartTicks: startTicks, ExitCode: st.ExitCode, Signal: int(st.Signal),
		Reason: st.Reason, StoppedBy: st.StoppedBy,
		CreatedAt: st.CreatedAt, StartedAt: st.StartedAt, EndedAt: st.EndedAt,
		StdoutBytes: st.StdoutBytes, StderrBytes: st.StderrBytes, Cgroup: st.Cgroup, RunAs: st.RunAs,
	}
	if cg != nil {
		rec.CgroupV2 = cg.v2
		rec.CgroupV1 = cg.v1
	}
	return rec
}

func (rec *record) status() (Status, error) {
	state, ok := parseState(rec.State)
	if !ok {
		return Status{}, fmt.Errorf("unknown state %q", rec.State)
	}
	return Status{
		ID: rec.ID, Spec: rec.Spec, State: state, PID: rec.PID, ExitCode: rec.ExitCode,
		Signal: syscall.Signal(rec.Signal), Reason: rec.Reason, StoppedBy: rec.StoppedBy,
		CreatedAt: rec.CreatedAt, StartedAt: rec.StartedAt, EndedAt: rec.EndedAt,
		StdoutBytes: rec.StdoutBytes, StderrBytes: rec.StderrBytes, Cgroup: rec.Cgroup, RunAs: rec.RunAs,
	}, nil
}

// writeRecord replaces dir/job.json atomically: a crash of the worker leaves
// either the old or the new record, never a torn one (temp file, rename).
// With durable it also fsyncs file and directory, so the record survives a
// machine crash too. Only the final record is durable: the start path stays
// cheap, and a machine crash ends every job anyway, which a restarted worker
// reports as LOST from the earlier record (or from its missing one).
func writeRecord(dir string, rec record, durable bool) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".job-*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if _, err = f.Write(b); err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o600)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, recordFile))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if !durable {
		return nil
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// writeFirstRecord writes the first record of a job into the empty job.json
// that buildJobDir made, in place: there is no earlier record that a crash
// could destroy, so no temporary file and rename are needed. A worker crash
// cannot tear the record either: one write(2) of a regular file completes or
// does not happen. (A machine crash can, but ends the job too, and a record
// that does not parse is reported as LOST, the job's true fate.)
func writeFirstRecord(dir string, rec record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, recordFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// errEmptyRecord is the record of a job directory whose job was never
// recorded: the worker stopped between taking the directory and writing the
// first record.
var errEmptyRecord = errors.New("job.json is empty")

func readRecord(dir string) (record, error) {
	var rec record
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return rec, err
	}
	if len(b) == 0 {
		return rec, errEmptyRecord
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, err
	}
	return rec, nil
}
