package scheduler_test

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestReRegisterWithManyJobs: no number or size of a worker's jobs keeps
// it from reporting and registering. Fifty jobs with specs at the 256 KiB
// bound end together and their ends are recorded (one heartbeat used to
// carry every spec, over the 4 MiB message limit); then the worker
// restarts holding 100,000 retained jobs and registers again, and takes
// new jobs.
func TestReRegisterWithManyJobs(t *testing.T) {
	if raceEnabled {
		t.Skip("a load test, run without the race detector (CI's load step): loading 100,000 records under -race takes minutes")
	}
	t.Parallel()
	// 100,000 job directories on a disk take minutes on a busy machine;
	// on a tmpfs, seconds.
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1g,nr_inodes=400k"); err != nil {
		t.Skipf("cannot mount a tmpfs for the worker's data (%v): 100,000 retained jobs are not played out", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) })
	s := startScheduler(t, "", nil)
	c := s.client
	dataDir := filepath.Join(mnt, "data")
	w1 := startWorkerWith(t, "w1", s, workerSetup{dataDir: dataDir})
	waitWorkers(t, c, stateReady, "w1")

	// 50 jobs, each spec just under the bound: 31 args of 8 KiB.
	args := []string{"-c", "exit 0"}
	for range 31 {
		args = append(args, strings.Repeat("a", 8192))
	}
	var wg sync.WaitGroup
	ids := make([]string, 50)
	for i := range ids {
		wg.Go(func() {
			res, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Args: args}))
			if err != nil {
				t.Errorf("StartJob: %v", err)
				return
			}
			ids[i] = res.Msg.GetJobId()
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("50 jobs of the maximum size started")
	waitFor(t, "the 50 ends to be recorded from heartbeats", func() bool {
		for _, id := range ids {
			if storedState(t, c, "w1", id) != batonv1.JobState_JOB_STATE_SUCCEEDED {
				return false
			}
		}
		return true
	})
	small := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"}).GetJobId()
	waitFor(t, "a small job to end", func() bool { return queryJob(t, c, small).GetDone() })
	w1.stop()

	// 100,000 retained jobs: copies of the small job's last record in the
	// worker's journal (frames of length, CRC-32C and payload; see
	// services/jobrun/journal.go), each under an id of its own.
	const retained = 100_000
	journal := filepath.Join(dataDir, "journal")
	b, err := os.ReadFile(journal)
	if err != nil {
		t.Fatal(err)
	}
	var last []byte
	for off := 0; off+8 <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[off:]))
		p := b[off+8 : off+8+n]
		if bytes.Contains(p, []byte(small)) {
			last = p
		}
		off += 8 + n
	}
	if last == nil {
		t.Fatalf("no record of job %s in the worker's journal", small)
	}
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	var out []byte
	for range retained {
		id := uuid.Must(uuid.NewV7()).String()
		p := bytes.ReplaceAll(last, []byte(small), []byte(id))
		out = binary.LittleEndian.AppendUint32(out, uint32(len(p)))
		out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(p, castagnoli))
		out = append(out, p...)
	}
	f, err := os.OpenFile(journal, os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		_, err = f.Write(out)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("appended %d retained jobs (%d bytes) to the journal", retained, len(out))

	restarted := time.Now()
	startWorkerWith(t, "w1", s, workerSetup{dataDir: dataDir})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		res, err := c.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if w := res.Msg.GetWorkers()[0]; w.GetState() == stateReady && w.GetRegisteredAt().AsTime().After(restarted) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker with %d retained jobs did not register again within 2 minutes", retained)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("registered again %v after its restart, with %d retained jobs", time.Since(restarted).Round(time.Millisecond), retained+len(ids)+1)
	id := startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"}).GetJobId()
	waitFor(t, "a new job to end", func() bool { return queryJob(t, c, id).GetDone() })
}
