package jobrun

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

func TestRestartMarksJobsLost(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		cgroup string
	}{
		{"cgroup", ""},
		{"process group only", "-"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			opts := Options{DataDir: t.TempDir(), ScriptsDir: t.TempDir(), AllowedCommands: testCommands, CgroupParent: tc.cgroup}
			first, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			st := mustStart(t, first, "survivor", Spec{Command: "sleep", Args: []string{"1000"}})
			mustStart(t, first, "finished", Spec{Command: "true"})
			waitDone(t, first, "finished")
			first.simulateCrash() // the worker dies; its job keeps running

			second, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = second.Close(context.Background()) })
			got, err := second.Status("survivor")
			if err != nil {
				t.Fatal(err)
			}
			if got.State != StateLost || got.Reason != "worker restarted" || got.PID != st.PID {
				t.Errorf("after restart: %v %q pid=%d", got.State, got.Reason, got.PID)
			}
			if fin, _ := second.Status("finished"); fin.State != StateSucceeded {
				t.Errorf("finished job after restart: %v", fin.State)
			}
			// The first worker's waiter reaps the killed sleep.
			waitDone(t, first, "survivor")
			if aliveGroup(t, st.PID) {
				t.Errorf("the lost job's process %d survived the restart", st.PID)
			}
			if st2, err := second.Stop(t.Context(), "survivor", "x"); err != nil || st2.State != StateLost {
				t.Errorf("Stop of a lost job: %v %v", st2.State, err)
			}
		})
	}
}

// TestCorruptStateFile loads job.json records of a worker before the
// journal that cannot be read: each becomes a LOST job that says why, and
// an output directory with no record at all is deleted.
func TestCorruptStateFile(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	// "empty" is a job directory taken by a worker that died before it
	// recorded the job.
	for id, content := range map[string]string{"torn": `{"version":1,"id":"torn","sta`, "garbage": "\x00\xff", "empty": "", "missing": "-"} {
		dir := filepath.Join(data, "jobs", id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if content != "-" {
			if err := os.WriteFile(filepath.Join(dir, legacyRecordFile), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	r, _ := newRunner(t, func(o *Options) { o.DataDir = data })
	for _, id := range []string{"torn", "garbage", "empty"} {
		st, err := r.Status(id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if st.State != StateLost || !strings.HasPrefix(st.Reason, "state file unreadable: ") {
			t.Errorf("%s: %v %q", id, st.State, st.Reason)
		}
		if strings.Contains(st.Reason, data) {
			t.Errorf("%s: reason leaks a path: %q", id, st.Reason)
		}
	}
	if _, err := r.Status("missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a directory without a record: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(data, "jobs", "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a directory without a record was kept: %v", err)
	}
}

// TestManyStarts fires 1000 concurrent Starts at a Runner with capacity 64
// and checks that every call succeeds or is refused, and that goroutines,
// fds, child processes and cgroups all return to baseline. It is not
// parallel: it compares process-wide goroutine and fd counts.
func TestManyStarts(t *testing.T) {
	r, _ := newRunner(t, func(o *Options) { o.Capacity = 64 })
	goroutines, fds := runtime.NumGoroutine(), fdCount(t)
	const n = 1000
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		started []string
		refused int
	)
	for i := range n {
		wg.Go(func() {
			id := "many-" + itoa(int64(i))
			_, _, err := r.Start(t.Context(), id, Spec{Command: "true"})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				started = append(started, id)
			case errors.Is(err, ErrCapacity):
				refused++
			default:
				t.Errorf("Start: %v", err)
			}
		})
	}
	wg.Wait()
	for _, id := range started {
		if st := waitDone(t, r, id); st.State != StateSucceeded {
			t.Errorf("%s: %v %s", id, st.State, st.Reason)
		}
	}
	t.Logf("%d started, %d refused", len(started), refused)
	if len(started)+refused != n || len(started) == 0 {
		t.Errorf("%d started + %d refused != %d", len(started), refused, n)
	}
	if r.Running() != 0 {
		t.Errorf("Running() = %d", r.Running())
	}
	eventually(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= goroutines+5 })
	if got := fdCount(t); got > fds+5 {
		t.Errorf("fds: %d, baseline %d", got, fds)
	}
	if _, z := liveChildren(t); z != 0 {
		t.Errorf("%d zombie children", z)
	}
	t.Run("no job cgroups left", func(t *testing.T) {
		var parents []string
		for _, dir := range []string{r.cg.v2Parent, r.cg.v1Memory, r.cg.v1CPU} {
			if dir != "" {
				parents = append(parents, dir)
			}
		}
		if len(parents) == 0 {
			t.Skip("this host gives the runner no cgroup parent (no cgroup v2 with cgroup.kill, no v1 memory or cpu controller): there are no job cgroups to count")
		}
		for _, dir := range parents {
			entries, err := os.ReadDir(dir)
			if errors.Is(err, os.ErrNotExist) {
				continue // removed while empty by a Runner starting elsewhere
			}
			if err != nil {
				t.Errorf("cgroup parent %s: %v", dir, err)
				continue
			}
			if n := countDirs(entries); n != 0 {
				t.Errorf("%d job cgroups left in %s", n, dir)
			}
		}
	})
}

func countDirs(entries []os.DirEntry) int {
	n := 0
	for _, e := range entries {
		if e.IsDir() {
			n++
		}
	}
	return n
}

// TestNoZombies runs after the parallel tests of this file have their own
// children; it only checks that the package never leaves zombies behind.
func TestNoZombies(t *testing.T) {
	r, _ := newRunner(t, nil)
	for i := range 20 {
		id := "z-" + itoa(int64(i))
		mustStart(t, r, id, Spec{Command: "sh", Args: []string{"-c", "sleep 0 & exit 1"}})
		waitDone(t, r, id)
	}
	if _, z := liveChildren(t); z != 0 {
		t.Errorf("%d zombie children", z)
	}
}
