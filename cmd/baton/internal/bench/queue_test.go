package bench

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// TestDispatchLatencies pairs each start with the end that freed its slot
// on synthetic timelines.
func TestDispatchLatencies(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// job is accepted at 0 unless created says otherwise; end -1 has not
	// ended.
	job := func(created, start, end int) jobTimes {
		j := jobTimes{created: at(created), started: at(start)}
		if end >= 0 {
			j.ended = at(end)
		}
		return j
	}
	for _, tc := range []struct {
		name     string
		capacity int
		jobs     []jobTimes
		want     []int // waits in ms, in start order
		wantOver int
	}{
		{
			name:     "one slot, one after another",
			capacity: 1,
			jobs:     []jobTimes{job(0, 0, 5), job(0, 10, 15), job(0, 18, 30)},
			want:     []int{5, 3},
		},
		{
			name:     "the slot of whichever job ended first",
			capacity: 2,
			// The first job runs long: the third start takes the second
			// job's slot, the fourth the first's.
			jobs: []jobTimes{job(0, 0, 30), job(0, 1, 5), job(0, 7, 35), job(0, 32, 40)},
			want: []int{2, 2},
		},
		{
			name:     "given in any order",
			capacity: 2,
			jobs:     []jobTimes{job(0, 32, 40), job(0, 7, 35), job(0, 1, 5), job(0, 0, 30)},
			want:     []int{2, 2},
		},
		{
			name:     "a job accepted after its slot freed waits from its acceptance",
			capacity: 1,
			jobs:     []jobTimes{job(0, 0, 5), job(8, 9, 12)},
			want:     []int{1},
		},
		{
			name:     "a start before the end it needed is over capacity",
			capacity: 1,
			jobs:     []jobTimes{job(0, 0, 10), job(0, 5, 15), job(0, 17, 20)},
			want:     []int{2},
			wantOver: 1,
		},
		{
			name:     "a job still running frees no slot",
			capacity: 1,
			jobs:     []jobTimes{job(0, 0, -1), job(0, 5, 8)},
			wantOver: 1,
		},
		{
			name:     "no more jobs than slots",
			capacity: 4,
			jobs:     []jobTimes{job(0, 0, 5), job(0, 1, 6), job(0, 2, 7)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			waits, over := dispatchLatencies(tc.jobs, tc.capacity)
			var got []int
			for _, w := range waits {
				got = append(got, int(w.wait/time.Millisecond))
			}
			if !slices.Equal(got, tc.want) || over != tc.wantOver {
				t.Errorf("waits %v ms, over %d; want %v, %d", got, over, tc.want, tc.wantOver)
			}
		})
	}
}

// TestLatencyStats takes nearest-rank percentiles and the maximum.
func TestLatencyStats(t *testing.T) {
	t.Parallel()
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := latencyStatsOf(d)
	want := latencyStats{Samples: 100, P50Ms: 50, P99Ms: 99, MaxMs: 100}
	if got != want {
		t.Errorf("%+v, want %+v", got, want)
	}
	if got := latencyStatsOf(nil); got != (latencyStats{}) {
		t.Errorf("no samples: %+v", got)
	}
}

// TestBenchQueue queues more jobs than the local cluster's slots and
// checks that all of them ran, that the figures are there, and that the
// cluster's processes and directory are gone.
func TestBenchQueue(t *testing.T) {
	t.Parallel()
	bin, dir := benchBinary(t), e2e.JobsTempDir(t)
	const jobs = 40
	res, err := runBench(t.Context(), benchOptions{Local: true, Queue: jobs, Clients: 4, Jobs: 1, Command: "true", Binary: bin, TempDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, bin, dir)
	q := res.Queue
	if q == nil {
		t.Fatal("no queue figures")
	}
	if q.Succeeded != jobs || len(q.Ended) != 0 || len(res.Errors) != 0 || q.OverCapacity != 0 {
		t.Errorf("succeeded %d of %d, ended otherwise %v, errors %v, over capacity %d", q.Succeeded, jobs, q.Ended, res.Errors, q.OverCapacity)
	}
	// 2 workers of capacity 4: each worker's first 4 starts took a free
	// slot and every later one waited for one. How the jobs split between
	// the workers is placement's choice: 32 samples when each ran at
	// least 4, up to 36 when one ran none.
	if q.Dispatch.Samples < jobs-8 || q.Dispatch.Samples > jobs-4 || q.Dispatch.P50Ms <= 0 {
		t.Errorf("dispatch %+v; want %d to %d samples", q.Dispatch, jobs-8, jobs-4)
	}
	if q.DrainPerSec <= 0 || q.SubmitPerSec <= 0 || q.SchedulerCPUMsPerJob <= 0 || q.LoadBefore == "" {
		t.Errorf("zero figures: %+v", *q)
	}
	var out bytes.Buffer
	printBench(&out, res)
	for _, want := range []string{"behind 2 workers of capacity 4", "dispatch, slot freed", "scheduler CPU"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
}
