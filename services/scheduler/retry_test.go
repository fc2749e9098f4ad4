package scheduler_test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

// retried is markJob with a retry policy.
func retried(name, marks string, code int, policy *batonv1.RetryPolicy) *batonv1.StartJobRequest {
	r := markJob(name, marks, 0, code)
	r.Retry = policy
	return r
}

// output reads a job's output (one attempt's, or all of them for 0) to its
// end and returns the chunks' text and their offsets.
func output(t *testing.T, c batonv1connect.SchedulerServiceClient, id string, attempt int32) (string, []int64, *batonv1.JobStatus) {
	t.Helper()
	s, err := c.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Follow: true, Attempt: attempt}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var b strings.Builder
	var offsets []int64
	var last *batonv1.JobStatus
	for s.Receive() {
		if ch := s.Msg().GetChunk(); ch != nil {
			if int64(b.Len()) != ch.GetOffset() {
				t.Errorf("attempt %d: chunk at offset %d after %d bytes", attempt, ch.GetOffset(), b.Len())
			}
			offsets = append(offsets, ch.GetOffset())
			b.Write(ch.GetData())
		}
		if st := s.Msg().GetStatus(); st != nil {
			last = st
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("stream of attempt %d: %v", attempt, err)
	}
	return b.String(), offsets, last
}

func TestRetryRunsAgainWithGrowingWaits(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	policy := &batonv1.RetryPolicy{Attempts: 3, InitialBackoff: durationpb.New(200 * time.Millisecond), Factor: 2}
	req := retried("R", marks, 3, policy)
	req.Command, req.Path, req.Args = "sh", "say.sh", []string{"R", marks, "3"}
	id := startJob(t, sched.client, req).GetJobId()

	// The whole job's output, followed from the start: every attempt's,
	// offsets running on, and the job's end only after the last.
	text, _, final := output(t, sched.client, id, 0)
	if final.GetState() != batonv1.JobState_JOB_STATE_FAILED || final.GetExitCode() != 3 || final.GetAttempt() != 3 {
		t.Fatalf("final status %v code %d attempt %d (%s), want FAILED, 3, attempt 3", final.GetState(), final.GetExitCode(), final.GetAttempt(), final.GetReason())
	}
	if got := strings.Count(text, "out R\n"); got != 3 {
		t.Errorf("the job's output has %d lines, want one per attempt (3): %q", got, text)
	}
	if got := readMarks(t, marks); len(got) != 3 {
		t.Errorf("the job ran %d times, want 3", len(got))
	}
	st := finalJobs(t, sched.client, []string{id})[id]
	as := st.GetAttempts()
	if len(as) != 2 {
		t.Fatalf("%d earlier attempts recorded, want 2", len(as))
	}
	runs := map[string]bool{st.GetRunId(): true}
	prevEnd := as[0].GetEndedAt().AsTime()
	for i, a := range append(slices.Clone(as[1:]), &batonv1.Attempt{StartedAt: st.GetStartedAt(), RunId: st.GetRunId()}) {
		want := 200 * time.Millisecond << i
		if gap := a.GetStartedAt().AsTime().Sub(prevEnd); gap < want {
			t.Errorf("attempt %d started %v after attempt %d ended, want at least %v", i+2, gap, i+1, want)
		}
		prevEnd = a.GetEndedAt().AsTime()
	}
	for i, a := range as {
		if a.GetNumber() != int32(i+1) || a.GetState() != batonv1.JobState_JOB_STATE_FAILED || a.GetExitCode() != 3 {
			t.Errorf("attempt record %d: %v", i+1, a)
		}
		if runs[a.GetRunId()] {
			t.Errorf("attempt %d runs under id %s, used before", i+1, a.GetRunId())
		}
		runs[a.GetRunId()] = true
	}
	// Each attempt's output alone.
	for n := int32(1); n <= 3; n++ {
		text, offsets, last := output(t, sched.client, id, n)
		if text != "out R\n" || offsets[0] != 0 {
			t.Errorf("attempt %d's output %q from %v, want one line from 0", n, text, offsets)
		}
		if last.GetAttempt() != n || last.GetState() != batonv1.JobState_JOB_STATE_FAILED {
			t.Errorf("attempt %d's stream ended with attempt %d %v", n, last.GetAttempt(), last.GetState())
		}
	}
	if _, err := sched.client.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Attempt: 4})); err == nil {
		s, _ := sched.client.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Attempt: 4}))
		for s.Receive() {
		}
		wantCode(t, "attempt 4", s.Err(), connect.CodeNotFound)
	}
}

func TestRetryOnlyWhatThePolicyCounts(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	only4 := startJob(t, sched.client, retried("A", marks, 3, &batonv1.RetryPolicy{Attempts: 3, ExitCodes: []int32{4}})).GetJobId()
	ok := startJob(t, sched.client, retried("B", marks, 0, &batonv1.RetryPolicy{Attempts: 3})).GetJobId()
	four := startJob(t, sched.client, retried("C", marks, 4, &batonv1.RetryPolicy{Attempts: 2, ExitCodes: []int32{4}})).GetJobId()
	jobs := finalJobs(t, sched.client, []string{only4, ok, four})
	if st := jobs[only4]; st.GetState() != batonv1.JobState_JOB_STATE_FAILED || len(st.GetAttempts()) != 0 {
		t.Errorf("exit 3 with retries on 4 only: %v after %d retries, want FAILED at once", st.GetState(), len(st.GetAttempts()))
	}
	if st := jobs[ok]; st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || len(st.GetAttempts()) != 0 {
		t.Errorf("a success: %v after %d retries, want SUCCEEDED at once", st.GetState(), len(st.GetAttempts()))
	}
	if st := jobs[four]; st.GetState() != batonv1.JobState_JOB_STATE_FAILED || st.GetAttempt() != 2 {
		t.Errorf("exit 4 with retries on 4: %v at attempt %d, want FAILED at attempt 2", st.GetState(), st.GetAttempt())
	}
	got := readMarks(t, marks)
	slices.Sort(got)
	if !slices.Equal(got, []string{"A", "B", "C", "C"}) {
		t.Errorf("ran %v, want A, B once and C twice", got)
	}
}

func TestStopAJobBetweenAttempts(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	id := startJob(t, sched.client, retried("A", marks, 3, &batonv1.RetryPolicy{Attempts: 5, InitialBackoff: durationpb.New(time.Hour)})).GetJobId()
	waitFor(t, "the first attempt ended and the job waits for the next", func() bool {
		st := queryJob(t, sched.client, id).GetStatus()
		return st.GetState() == batonv1.JobState_JOB_STATE_QUEUED && st.GetAttempt() == 2
	})
	st := queryJob(t, sched.client, id).GetStatus()
	if !strings.Contains(st.GetReason(), "attempt 1 of 5 ended FAILED") || st.GetNotBefore() == nil {
		t.Errorf("waiting for attempt 2: reason %q, not_before %v", st.GetReason(), st.GetNotBefore())
	}
	res, err := sched.client.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Msg.GetStatus(); got.GetState() != batonv1.JobState_JOB_STATE_STOPPED || len(got.GetAttempts()) != 1 {
		t.Errorf("stopped between attempts: %v with %d attempts recorded, want STOPPED with attempt 1 kept", got.GetState(), len(got.GetAttempts()))
	}
	if got := readMarks(t, marks); len(got) != 1 {
		t.Errorf("ran %d times, want once", len(got))
	}
}

// TestRetryOfAJobWithAScript: a job sent with a script, started at once
// and retried, is sent its script again for each attempt (the scheduler
// keeps it until the job ends).
func TestRetryOfAJobWithAScript(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	req := &batonv1.StartJobRequest{
		Command: "sh", Script: []byte("echo from the script\nexit 3\n"), ScriptName: "sent.sh",
		Retry: &batonv1.RetryPolicy{Attempts: 2},
	}
	id := startJob(t, sched.client, req).GetJobId()
	text, _, final := output(t, sched.client, id, 0)
	if final.GetAttempt() != 2 || final.GetExitCode() != 3 || text != "from the script\nfrom the script\n" {
		t.Fatalf("attempt %d ended with code %d (%s) and output %q, want both attempts to run the script", final.GetAttempt(), final.GetExitCode(), final.GetReason(), text)
	}
}
