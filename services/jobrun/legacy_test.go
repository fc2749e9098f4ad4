package jobrun

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// writeLegacyJob writes a job directory as workers before the journal did:
// job.json, and the output files with one index record per write.
func writeLegacyJob(t *testing.T, data string, rec legacyRecord, writes []string) {
	t.Helper()
	dir := filepath.Join(data, "jobs", rec.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var out, index []byte
	var b [indexRecordSize]byte
	for _, w := range writes {
		ir := indexRecord{time: time.Now().UnixNano(), stdoutBefore: uint64(len(out)), length: uint32(len(w)), stream: StreamStdout}
		ir.encode(b[:])
		index = append(index, b[:]...)
		out = append(out, w...)
	}
	js, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{legacyRecordFile: js, stdoutFile: out, stderrFile: nil, indexFile: index} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLegacyDataDir starts a Runner on the data directory of a worker
// before the journal: its finished job is listed with its output, its
// running job is reported LOST and its process killed, and the job.json
// records are taken into the journal, so a later restart sees the same.
func TestLegacyDataDir(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	leftover := exec.Command("sleep", "1000")
	leftover.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := leftover.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() {
		_ = leftover.Wait()
		close(reaped)
	}()
	t.Cleanup(func() {
		_ = leftover.Process.Kill()
		<-reaped
	})
	ticks, err := procStartTicks(leftover.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	created := time.Now().Add(-time.Minute).Round(0)
	writeLegacyJob(t, data, legacyRecord{
		ID: "old-done", Spec: Spec{Command: "sh", Args: []string{"-c", "echo hello; echo world"}}, State: "SUCCEEDED",
		PID: 1234, ExitCode: 0, Reason: "exited with code 0", CreatedAt: created, StartedAt: created, EndedAt: created.Add(time.Second),
		StdoutBytes: 12, Cgroup: "v2", RunAs: "the worker's uid 0",
	}, []string{"hello\n", "world\n"})
	writeLegacyJob(t, data, legacyRecord{
		ID: "old-run", Spec: Spec{Command: "sleep", Args: []string{"1000"}}, State: "RUNNING",
		PID: leftover.Process.Pid, StartTicks: ticks, ExitCode: -1, CreatedAt: created, StartedAt: created,
	}, nil)

	check := func(r *Runner) {
		t.Helper()
		done, err := r.Status("old-done")
		if err != nil || done.State != StateSucceeded || done.PID != 1234 || !done.EndedAt.Equal(created.Add(time.Second)) || done.StdoutBytes != 12 {
			t.Errorf("finished job: %+v %v", done, err)
		}
		if got := string(readOutput(t, r, "old-done", OutputRequest{Offset: 3, Follow: true})); got != "lo\nworld\n" {
			t.Errorf("finished job's output from offset 3: %q", got)
		}
		lost, err := r.Status("old-run")
		if err != nil || lost.State != StateLost || lost.Reason != "worker restarted" || lost.Spec.Args[0] != "1000" {
			t.Errorf("running job: %+v %v", lost, err)
		}
	}
	first, err := New(Options{DataDir: data, ScriptsDir: t.TempDir(), AllowedCommands: testCommands})
	if err != nil {
		t.Fatal(err)
	}
	check(first)
	// job.json records hold no boot id: their pid may be another boot's
	// process, so it is never killed by pid (a cgroup would be).
	select {
	case <-reaped:
		t.Fatal("a process named by a record without a boot id was killed")
	case <-time.After(200 * time.Millisecond):
	}
	for _, id := range []string{"old-done", "old-run"} {
		if _, err := os.Stat(filepath.Join(data, "jobs", id, legacyRecordFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: job.json kept after the upgrade: %v", id, err)
		}
	}
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	second, _ := newRunner(t, func(o *Options) { o.DataDir = data })
	check(second)
}
