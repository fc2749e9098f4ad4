package main

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// A history checker for the replicated scheduler's promise: a job
// acknowledged to a client is never lost and never started twice,
// whichever replica dies and whenever. It reads what a fault test
// recorded, not what the scheduler says of itself alone: the answers
// clients got, each worker's log of the processes it started, and the
// jobs the store holds at the end.

// haAck is a StartJob the scheduler acknowledged: the job it answered for
// the request's idempotency key.
type haAck struct {
	Key   string
	JobID string
}

// haJob is a job the store lists at the end: Key is the idempotency key
// the test put in the job's haKeyLabel.
type haJob struct {
	JobID string
	Key   string
	State batonv1.JobState
	// Reason is the status's reason, which says why a job was lost.
	Reason string
}

// haKeyLabel is the job label carrying the StartJob's idempotency key,
// which JobStatus does not show: with it the store's jobs are matched to
// the requests that made them.
const haKeyLabel = "ha-key"

// haHistory is what a fault test recorded.
type haHistory struct {
	// Acks are every acknowledged StartJob, retries that were answered
	// included.
	Acks []haAck
	// Starts are the "job started" lines of every worker's log, in the
	// order of each log.
	Starts []haStart
	// Jobs are the store's jobs at the end (ListJobs).
	Jobs []haJob
}

// checkHAHistory returns every way h breaks the promise, one sentence
// each; none means it holds:
//
//   - a key is acknowledged with one job id only (a retry with the same
//     key returns the first job), and the store holds one job per key;
//   - every acknowledged job is in the store exactly once, and not lost;
//   - no job id is started twice, on one worker or on two: a retry or a
//     second leader starting the same job again would be a double start;
//   - every started job is in the store, and every job the store says ran
//     (running, succeeded, failed) was started by a worker;
//   - every start carries an epoch, and no worker starts a job for an
//     older epoch than one it started a job for before (a deposed
//     leader's start would).
func checkHAHistory(h haHistory) []string {
	var bad []string
	badf := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }

	ackedByKey := map[string]string{}
	acked := map[string]bool{}
	for _, a := range h.Acks {
		if prev, ok := ackedByKey[a.Key]; ok && prev != a.JobID {
			badf("key %s was acknowledged as job %s and as job %s", a.Key, prev, a.JobID)
			continue
		}
		ackedByKey[a.Key] = a.JobID
		acked[a.JobID] = true
	}

	stored := map[string][]haJob{}
	byKey := map[string][]string{}
	for _, j := range h.Jobs {
		stored[j.JobID] = append(stored[j.JobID], j)
		if j.Key != "" {
			byKey[j.Key] = append(byKey[j.Key], j.JobID)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(stored)) {
		if n := len(stored[id]); n > 1 {
			badf("job %s is listed %d times", id, n)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		if ids := byKey[key]; len(ids) > 1 {
			badf("key %s made %d jobs: %s", key, len(ids), strings.Join(ids, ", "))
		}
	}
	for _, id := range slices.Sorted(maps.Keys(acked)) {
		switch js := stored[id]; {
		case len(js) == 0:
			badf("acknowledged job %s is not in the store", id)
		case js[0].State == batonv1.JobState_JOB_STATE_LOST:
			badf("acknowledged job %s was lost: %s", id, js[0].Reason)
		}
	}

	startsOf := map[string][]haStart{}
	lastEpoch := map[string]haStart{}
	for _, s := range h.Starts {
		startsOf[s.JobID] = append(startsOf[s.JobID], s)
		if s.Epoch <= 0 {
			badf("%s started job %s (log line %d) with no epoch", s.Worker, s.JobID, s.Line)
		}
		if prev, ok := lastEpoch[s.Worker]; ok && s.Epoch < prev.Epoch {
			badf("%s started job %s for epoch %d (log line %d) after starting job %s for epoch %d (line %d): a deposed leader's start was let through",
				s.Worker, s.JobID, s.Epoch, s.Line, prev.JobID, prev.Epoch, prev.Line)
		}
		if s.Epoch >= lastEpoch[s.Worker].Epoch {
			lastEpoch[s.Worker] = s
		}
	}
	for _, id := range slices.Sorted(maps.Keys(startsOf)) {
		ss := startsOf[id]
		if len(ss) > 1 {
			where := make([]string, len(ss))
			for i, s := range ss {
				where[i] = fmt.Sprintf("%s line %d epoch %d", s.Worker, s.Line, s.Epoch)
			}
			badf("job %s was started %d times: %s", id, len(ss), strings.Join(where, "; "))
		}
		if len(stored[id]) == 0 {
			badf("job %s was started (%s line %d) but is not in the store", id, ss[0].Worker, ss[0].Line)
		}
	}
	for _, j := range h.Jobs {
		if ran(j.State) && len(startsOf[j.JobID]) == 0 {
			badf("the store has job %s %s, but no worker started it", j.JobID, j.State)
		}
	}
	return bad
}

// ran reports whether a job in state st had a process.
func ran(st batonv1.JobState) bool {
	switch st {
	case batonv1.JobState_JOB_STATE_RUNNING, batonv1.JobState_JOB_STATE_SUCCEEDED, batonv1.JobState_JOB_STATE_FAILED:
		return true
	}
	return false
}

// haSummary describes h in a few lines: how many acknowledgements, jobs
// and starts, the acknowledged jobs' final states, and the starts per
// epoch.
func haSummary(h haHistory) []string {
	acked := map[string]bool{}
	for _, a := range h.Acks {
		acked[a.JobID] = true
	}
	states := map[string]int{}
	for _, j := range h.Jobs {
		if acked[j.JobID] {
			states[strings.TrimPrefix(j.State.String(), "JOB_STATE_")]++
		}
	}
	epochs := map[int64]int{}
	for _, s := range h.Starts {
		epochs[s.Epoch]++
	}
	var byState, byEpoch []string
	for _, st := range slices.Sorted(maps.Keys(states)) {
		byState = append(byState, fmt.Sprintf("%s %d", st, states[st]))
	}
	for _, e := range slices.SortedFunc(maps.Keys(epochs), cmp.Compare) {
		byEpoch = append(byEpoch, fmt.Sprintf("epoch %d: %d", e, epochs[e]))
	}
	return []string{
		fmt.Sprintf("history: %d acknowledgements of %d jobs; %d jobs in the store; %d process starts", len(h.Acks), len(acked), len(h.Jobs), len(h.Starts)),
		"acknowledged jobs by final state: " + strings.Join(byState, ", "),
		"process starts by epoch: " + strings.Join(byEpoch, ", "),
	}
}

// TestHAHistoryCheck feeds the checker hand-made histories: a clean one,
// and one for each way of breaking the promise, which it must name.
func TestHAHistoryCheck(t *testing.T) {
	t.Parallel()
	const (
		ok      = batonv1.JobState_JOB_STATE_SUCCEEDED
		lost    = batonv1.JobState_JOB_STATE_LOST
		pending = batonv1.JobState_JOB_STATE_PENDING
	)
	clean := func() haHistory {
		return haHistory{
			Acks: []haAck{{"k1", "j1"}, {"k2", "j2"}, {"k2", "j2"}, {"k3", "j3"}},
			Starts: []haStart{
				{Worker: "w1", JobID: "j1", Epoch: 5, Line: 10},
				{Worker: "w2", JobID: "j2", Epoch: 5, Line: 11},
				{Worker: "w1", JobID: "j3", Epoch: 9, Line: 12},
				// Started for a key whose answer was lost: in the store, never
				// acknowledged.
				{Worker: "w2", JobID: "j4", Epoch: 9, Line: 13},
			},
			Jobs: []haJob{{"j1", "k1", ok, ""}, {"j2", "k2", ok, ""}, {"j3", "k3", ok, ""}, {"j4", "k4", ok, ""}, {"j5", "k5", lost, "never started"}},
		}
	}
	cases := []struct {
		name   string
		change func(h *haHistory)
		want   []string
	}{
		{name: "clean", change: func(*haHistory) {}},
		{
			name:   "an acknowledged job is missing",
			change: func(h *haHistory) { h.Jobs = slices.Delete(h.Jobs, 2, 3) },
			want:   []string{"acknowledged job j3 is not in the store", "job j3 was started (w1 line 12) but is not in the store"},
		},
		{
			name:   "an acknowledged job that never started is missing",
			change: func(h *haHistory) { h.Acks = append(h.Acks, haAck{"k9", "j9"}) },
			want:   []string{"acknowledged job j9 is not in the store"},
		},
		{
			name:   "an acknowledged job is lost",
			change: func(h *haHistory) { h.Acks = append(h.Acks, haAck{"k5", "j5"}) },
			want:   []string{"acknowledged job j5 was lost: never started"},
		},
		{
			name:   "a job is listed twice",
			change: func(h *haHistory) { h.Jobs = append(h.Jobs, haJob{"j2", "k2", ok, ""}) },
			want:   []string{"job j2 is listed 2 times", "key k2 made 2 jobs: j2, j2"},
		},
		{
			name:   "one key, two jobs",
			change: func(h *haHistory) { h.Jobs = append(h.Jobs, haJob{"j6", "k1", pending, ""}) },
			want:   []string{"key k1 made 2 jobs: j1, j6"},
		},
		{
			name:   "one key acknowledged as two jobs",
			change: func(h *haHistory) { h.Acks = append(h.Acks, haAck{"k1", "j5"}) },
			want:   []string{"key k1 was acknowledged as job j1 and as job j5"},
		},
		{
			name: "a job started twice on one worker",
			change: func(h *haHistory) {
				h.Starts = append(h.Starts, haStart{Worker: "w1", JobID: "j3", Epoch: 9, Line: 20})
			},
			want: []string{"job j3 was started 2 times: w1 line 12 epoch 9; w1 line 20 epoch 9"},
		},
		{
			name: "a job started on two workers by two leaders",
			change: func(h *haHistory) {
				h.Starts = append(h.Starts, haStart{Worker: "w2", JobID: "j1", Epoch: 9, Line: 20})
			},
			want: []string{"job j1 was started 2 times: w1 line 10 epoch 5; w2 line 20 epoch 9"},
		},
		{
			name: "a started job the store does not have",
			change: func(h *haHistory) {
				h.Starts = append(h.Starts, haStart{Worker: "w2", JobID: "j7", Epoch: 9, Line: 20})
			},
			want: []string{"job j7 was started (w2 line 20) but is not in the store"},
		},
		{
			name:   "a job the store says ran that no worker started",
			change: func(h *haHistory) { h.Jobs = append(h.Jobs, haJob{"j8", "k8", ok, ""}) },
			want:   []string{"the store has job j8 JOB_STATE_SUCCEEDED, but no worker started it"},
		},
		{
			name: "a start without an epoch",
			change: func(h *haHistory) {
				h.Starts[0].Epoch = 0
			},
			want: []string{"w1 started job j1 (log line 10) with no epoch"},
		},
		{
			name: "a deposed leader's start after a newer one's",
			change: func(h *haHistory) {
				h.Starts = append(h.Starts, haStart{Worker: "w1", JobID: "j5", Epoch: 5, Line: 30})
			},
			want: []string{"w1 started job j5 for epoch 5 (log line 30) after starting job j3 for epoch 9 (line 12): a deposed leader's start was let through"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := clean()
			tc.change(&h)
			got := checkHAHistory(h)
			if !slices.Equal(got, tc.want) {
				t.Errorf("checkHAHistory found\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}
