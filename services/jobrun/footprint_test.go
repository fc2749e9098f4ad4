package jobrun

import (
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// diskUsage is the space everything under dir takes: the sum of st_blocks
// of every file and directory, in bytes.
func diskUsage(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFootprintDisk runs 200 /bin/true jobs and checks the disk space they
// take while retained: at most 8 KiB each.
func TestFootprintDisk(t *testing.T) {
	t.Parallel()
	const jobs, limit = 200, 8 << 10
	r, _ := newRunner(t, nil)
	data := filepath.Dir(r.jobsDir)
	before := diskUsage(t, data)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < jobs; i += 4 {
				id := "f-" + strconv.Itoa(i)
				if _, _, err := r.Start(t.Context(), id, Spec{Command: "true"}); err != nil {
					t.Error(err)
					return
				}
				if st := waitDone(t, r, id); st.State != StateSucceeded {
					t.Errorf("%s: %v %s", id, st.State, st.Reason)
				}
			}
		})
	}
	wg.Wait()
	per := (diskUsage(t, data) - before) / jobs
	t.Logf("%d bytes on disk per finished /bin/true job", per)
	if per > limit {
		t.Errorf("a finished /bin/true job takes %d bytes on disk, want at most %d", per, limit)
	}
}

// TestFootprintMemory loads 20,000 finished jobs from a journal and checks
// the heap they hold while retained: at most 1 KiB each. Not parallel: it
// reads the process's heap size.
func TestFootprintMemory(t *testing.T) {
	const jobs, limit = 20000, 1 << 10
	data := t.TempDir()
	now := time.Now()
	var journal []byte
	for i := range jobs {
		// IDs as the scheduler makes them (UUIDs), a /bin/true job's record.
		id := "01a24165-" + strconv.FormatInt(int64(1_000_000_000+i), 16) + "-787c-af3b-180a06797b1a"
		rec := jobRecord{kind: kindEnd, st: Status{
			ID: id, Spec: Spec{Command: "true", Owner: "user/alice"}, State: StateSucceeded, PID: 100000 + i,
			Reason: "exited with code 0", CreatedAt: now, StartedAt: now, EndedAt: now,
			Cgroup: "v2", RunAs: "the worker's uid 0",
		}}
		journal = appendFrame(journal, rec.marshal(nil))
	}
	if err := os.WriteFile(filepath.Join(data, journalFile), journal, 0o600); err != nil {
		t.Fatal(err)
	}
	journal = nil
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	r, _ := newRunner(t, func(o *Options) { o.DataDir, o.CgroupParent = data, "-" })
	after := heap()
	if n := len(r.List()); n != jobs {
		t.Fatalf("%d jobs loaded, want %d", n, jobs)
	}
	per := (int64(after) - int64(before)) / jobs
	t.Logf("%d bytes of heap per retained finished job", per)
	if per > limit {
		t.Errorf("a retained finished job holds %d bytes of heap, want at most %d", per, limit)
	}
}
