package worker

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestThousandConcurrentStarts is RELIABILITY.md L4 at the worker: every
// call succeeds or says ResourceExhausted, and afterwards no goroutine, file
// descriptor, zombie or cgroup of the jobs is left.
func TestThousandConcurrentStarts(t *testing.T) {
	// Not parallel: it measures process-wide goroutines and descriptors.
	tw := startWorker(t, nil, func(o *Options) { o.Runner.Capacity = 64 })
	baseGoroutines, baseFDs := runtime.NumGoroutine(), countFDs(t)

	c := tw.client(connect.WithGRPC())
	var ok, full atomic.Int64
	var wg sync.WaitGroup
	for range 1000 {
		wg.Go(func() {
			_, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "true"}))
			switch {
			case err == nil:
				ok.Add(1)
			case connect.CodeOf(err) == connect.CodeResourceExhausted:
				full.Add(1)
			default:
				t.Errorf("StartJob: %v", err)
			}
		})
	}
	wg.Wait()
	t.Logf("1000 StartJob calls: %d started, %d refused at capacity", ok.Load(), full.Load())
	if ok.Load() == 0 {
		t.Fatal("no job started")
	}
	// Wait for every job to end, then for the process to settle.
	deadline := time.Now().Add(60 * time.Second)
	for tw.Runner().Running() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := tw.Runner().Running(); n != 0 {
		t.Fatalf("%d jobs still running", n)
	}
	tw.http.CloseIdleConnections()
	settle(t, "goroutines", baseGoroutines, 5, runtime.NumGoroutine)
	settle(t, "file descriptors", baseFDs, 5, func() int { return countFDs(t) })
	if z := zombies(t); len(z) > 0 {
		t.Errorf("zombie children: %v", z)
	}
	for _, st := range tw.Runner().List() {
		if st.Cgroup == "v2" {
			// A job's cgroup is removed after the job stops counting as
			// running, so the count is polled like the others.
			settle(t, "job cgroups", 0, 0, func() int { return cgroupLeftovers(t, tw.dataDir) })
			break
		}
	}
}

// settle waits until get() is within slack of base, failing after a while.
// Goroutines and descriptors are released asynchronously (connection
// teardown), so the check polls instead of sampling once.
func settle(t *testing.T, what string, base, slack int, get func() int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := get()
		if n <= base+slack {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: %d, baseline %d (±%d)", what, n, base, slack)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// zombies lists this process's children in state Z.
func zombies(t *testing.T) []int {
	t.Helper()
	self := strconv.Itoa(os.Getpid())
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[0] == "Z" && fields[1] == self {
			out = append(out, pid)
		}
	}
	return out
}

// cgroupLeftovers counts the job cgroups left under the runner's parent,
// named as jobrun names it: baton-<first 8 hex of sha256(data dir)>.
func cgroupLeftovers(t *testing.T, dataDir string) int {
	t.Helper()
	sum := sha256.Sum256([]byte(dataDir))
	kids, _ := os.ReadDir("/sys/fs/cgroup/unified/baton-" + hex.EncodeToString(sum[:])[:8])
	n := 0
	for _, k := range kids {
		if k.IsDir() {
			n++
		}
	}
	return n
}
