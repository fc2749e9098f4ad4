package scheduler_test

import (
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	_ "modernc.org/sqlite"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/serving"
)

// TestStoreFull puts the scheduler's store on a small tmpfs and fills it.
// A StartJob then answers unavailable (not internal) and starts nothing;
// a job that ends meanwhile is not acknowledged to its worker, which keeps
// reporting it, so its end is recorded once space is freed, within a
// heartbeat or two, with no QueryJob to repair it.
func TestStoreFull(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Skipf("cannot mount a tmpfs for the store (%v): a full disk is not played out", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	const heartbeat = 250 * time.Millisecond
	s := startScheduler(t, filepath.Join(dir, "baton.db"), func(o *scheduler.Options) {
		o.HeartbeatInterval = heartbeat
		o.HeartbeatGrace = 5 * time.Second
	})
	w1 := startWorker(t, "w1", s, nil)
	c := s.client
	waitWorkers(t, c, stateReady, "w1")
	id := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Args: []string{"-c", "sleep 1"}}).GetJobId()

	// Empty the WAL, so that the next write has to grow a file, then take
	// every free block.
	db, err := sql.Open("sqlite", filepath.Join(dir, "baton.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	filler := filepath.Join(dir, "filler")
	fill(t, filler)

	_, err = c.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"}))
	if connect.CodeOf(err) != connect.CodeUnavailable || strings.Contains(err.Error(), dir) {
		t.Errorf("StartJob with the store full: %v, want unavailable without the store's path", err)
	}
	// The job ends on its worker, which reports it in every heartbeat from
	// then on; none of them can be recorded.
	wc := batonv1connect.NewWorkerServiceClient(serving.NewHTTPClient(nil), w1.url)
	waitFor(t, "the job to end on its worker", func() bool {
		res, err := wc.QueryJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: id}))
		return err == nil && res.Msg.GetDone()
	})
	time.Sleep(3 * heartbeat) // several refused heartbeats, not a condition
	if got := storedState(t, c, "w1", id); got != batonv1.JobState_JOB_STATE_RUNNING {
		t.Fatalf("with the store full the job is stored as %v", got)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitFor(t, "the job's end to be recorded after space is freed", func() bool {
		return storedState(t, c, "w1", id) == batonv1.JobState_JOB_STATE_SUCCEEDED
	})
	t.Logf("recorded %v after space was freed (heartbeat %v)", time.Since(freed).Round(time.Millisecond), heartbeat)
}

// fill writes to path until the filesystem is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}
