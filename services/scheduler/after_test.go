package scheduler_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler"
)

// markJob runs mark.sh: it appends name to marks, sleeps secs and exits
// with code; it waits for a slot without limit.
func markJob(name, marks string, secs float64, code int, after ...*batonv1.Dependency) *batonv1.StartJobRequest {
	return &batonv1.StartJobRequest{
		Command: "sh", Path: "mark.sh",
		Args:         []string{name, marks, strconv.FormatFloat(secs, 'f', -1, 64), strconv.Itoa(code)},
		QueueTimeout: noLimit, After: after,
	}
}

func afterJob(id string, cond batonv1.DependencyCondition) *batonv1.Dependency {
	return &batonv1.Dependency{JobId: id, Condition: cond}
}

// readMarks returns the names mark.sh wrote to marks, in order.
func readMarks(t *testing.T, marks string) []string {
	t.Helper()
	b, err := os.ReadFile(marks)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

const (
	succeeded = batonv1.DependencyCondition_DEPENDENCY_CONDITION_SUCCEEDED
	failed    = batonv1.DependencyCondition_DEPENDENCY_CONDITION_FAILED
	ended     = batonv1.DependencyCondition_DEPENDENCY_CONDITION_ENDED
)

func TestAfterRunsAChainInOrder(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	startWorker(t, "w2", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1", "w2")
	marks := filepath.Join(t.TempDir(), "marks")

	a := startJob(t, sched.client, markJob("A", marks, 0.5, 0)).GetJobId()
	b := startJob(t, sched.client, markJob("B", marks, 0.2, 0, afterJob(a, succeeded))).GetJobs()[0]
	c := startJob(t, sched.client, markJob("C", marks, 0, 0, afterJob(b.GetJobId(), 0))).GetJobId()
	if b.GetState() != batonv1.JobState_JOB_STATE_QUEUED || !strings.Contains(b.GetReason(), "waits for job "+a+" to succeed") {
		t.Errorf("B while A runs: %v (%q), want QUEUED, waiting for A to succeed", b.GetState(), b.GetReason())
	}
	jobs := finalJobs(t, sched.client, []string{a, b.GetJobId(), c})
	for id, st := range jobs {
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("job %s ended %v (%s), want SUCCEEDED", id, st.GetState(), st.GetReason())
		}
	}
	if got := readMarks(t, marks); !slices.Equal(got, []string{"A", "B", "C"}) {
		t.Errorf("the chain ran %v, want A B C", got)
	}
	startsAfter(t, jobs[b.GetJobId()], jobs[a])
	startsAfter(t, jobs[c], jobs[b.GetJobId()])
}

// startsAfter checks that job next started once job prev had ended.
func startsAfter(t *testing.T, next, prev *batonv1.JobStatus) {
	t.Helper()
	if next.GetStartedAt().AsTime().Before(prev.GetEndedAt().AsTime()) {
		t.Errorf("job %s started at %v, before job %s it waited for ended at %v", next.GetJobId(),
			next.GetStartedAt().AsTime(), prev.GetJobId(), prev.GetEndedAt().AsTime())
	}
}

func TestAfterAFailureEndsTheChainWithoutRunningIt(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")

	a := startJob(t, sched.client, markJob("A", marks, 0.3, 3)).GetJobId()
	b := startJob(t, sched.client, markJob("B", marks, 0, 0, afterJob(a, succeeded))).GetJobId()
	c := startJob(t, sched.client, markJob("C", marks, 0, 0, afterJob(b, succeeded))).GetJobId()
	onFail := startJob(t, sched.client, markJob("F", marks, 0, 0, afterJob(a, failed))).GetJobId()
	onEnd := startJob(t, sched.client, markJob("E", marks, 0, 0, afterJob(a, ended))).GetJobId()
	jobs := finalJobs(t, sched.client, []string{a, b, c, onFail, onEnd})

	if st := jobs[a]; st.GetState() != batonv1.JobState_JOB_STATE_FAILED || st.GetExitCode() != 3 {
		t.Fatalf("A ended %v with code %d, want FAILED with 3", st.GetState(), st.GetExitCode())
	}
	for id, cause := range map[string]string{b: "job " + a + " ended FAILED", c: "job " + b + " ended FAILED"} {
		st := jobs[id]
		if st.GetState() != batonv1.JobState_JOB_STATE_FAILED || !strings.Contains(st.GetReason(), "never ran") || !strings.Contains(st.GetReason(), cause) {
			t.Errorf("job %s ended %v (%q), want FAILED saying it never ran because %s", id, st.GetState(), st.GetReason(), cause)
		}
		if st.GetStartedAt() != nil || st.GetPid() != 0 {
			t.Errorf("job %s has a start (%v, pid %d), want none", id, st.GetStartedAt(), st.GetPid())
		}
	}
	for _, id := range []string{onFail, onEnd} {
		if st := jobs[id]; st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("job %s after A (failed/ended) ended %v (%s), want SUCCEEDED", id, st.GetState(), st.GetReason())
		}
	}
	got := readMarks(t, marks)
	slices.Sort(got[1:])
	if !slices.Equal(got, []string{"A", "E", "F"}) {
		t.Errorf("ran %v, want A then E and F only", got)
	}
}

func TestAfterAJobThatEndedAlready(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	a := startJob(t, sched.client, markJob("A", marks, 0, 0)).GetJobId()
	finalJobs(t, sched.client, []string{a})

	b := startJob(t, sched.client, markJob("B", marks, 0, 0, afterJob(a, succeeded))).GetJobId()
	c := startJob(t, sched.client, markJob("C", marks, 0, 0, afterJob(a, failed))).GetJobs()[0]
	if c.GetState() != batonv1.JobState_JOB_STATE_FAILED || !strings.Contains(c.GetReason(), "never ran") {
		t.Errorf("a job after a succeeded job's failure is %v (%q) at once, want FAILED, never ran", c.GetState(), c.GetReason())
	}
	if st := finalJobs(t, sched.client, []string{b})[b]; st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("a job after a succeeded job ended %v (%s), want SUCCEEDED", st.GetState(), st.GetReason())
	}
}

func TestAfterRefusesWhatItCannotWaitFor(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	unknown := "0190b6a4-8b7e-7cc0-8000-000000000001"
	for name, req := range map[string]*batonv1.StartJobRequest{
		"unknown job":   markJob("X", marks, 0, 0, afterJob(unknown, succeeded)),
		"unknown group": markJob("X", marks, 0, 0, &batonv1.Dependency{GroupId: unknown}),
		"not a uuid":    markJob("X", marks, 0, 0, afterJob("job-1", succeeded)),
		"neither":       markJob("X", marks, 0, 0, &batonv1.Dependency{}),
		"with all": func() *batonv1.StartJobRequest {
			r := markJob("X", marks, 0, 0, afterJob(unknown, 0))
			r.All = true
			return r
		}(),
	} {
		_, err := sched.client.StartJob(t.Context(), connect.NewRequest(req))
		wantCode(t, name, err, connect.CodeInvalidArgument)
	}
	res, err := sched.client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(res.Msg.GetJobs()); n != 0 {
		t.Errorf("%d jobs recorded after refused starts, want none", n)
	}
}

func TestStopAJobThatWaitsForAnother(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	a := startJob(t, sched.client, markJob("A", marks, 0.5, 0)).GetJobId()
	b := startJob(t, sched.client, markJob("B", marks, 0, 0, afterJob(a, succeeded))).GetJobId()
	c := startJob(t, sched.client, markJob("C", marks, 0, 0, afterJob(b, ended))).GetJobId()
	res, err := sched.client.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: b}))
	if err != nil {
		t.Fatal(err)
	}
	if st := res.Msg.GetStatus(); st.GetState() != batonv1.JobState_JOB_STATE_STOPPED || st.GetStartedAt() != nil {
		t.Errorf("stopped waiting job: %v, started %v; want STOPPED, never started", st.GetState(), st.GetStartedAt())
	}
	jobs := finalJobs(t, sched.client, []string{a, b, c})
	if st := jobs[c]; st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("a job after the stopped one (ended) ended %v (%s), want SUCCEEDED", st.GetState(), st.GetReason())
	}
	if got := readMarks(t, marks); slices.Contains(got, "B") {
		t.Errorf("the stopped job ran: %v", got)
	}
}

func TestAfterSurvivesASchedulerRestart(t *testing.T) {
	t.Parallel()
	tune := func(o *scheduler.Options) {
		o.HeartbeatInterval = 250 * time.Millisecond
		o.FailoverGrace = 2 * waitTimeout
	}
	s1 := startScheduler(t, "", tune)
	w1 := startWorker(t, "w1", s1, nil)
	waitWorkers(t, s1.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	release := filepath.Join(t.TempDir(), "release")
	// A runs until the test releases it, so it ends after the restart.
	a := startJob(t, s1.client, &batonv1.StartJobRequest{Command: "sh", Path: "wait.sh", Args: []string{release}}).GetJobId()
	b := startJob(t, s1.client, markJob("B", marks, 0, 0, afterJob(a, succeeded))).GetJobId()
	c := startJob(t, s1.client, markJob("C", marks, 0, 0, afterJob(b, succeeded))).GetJobId()

	s1.kill()
	s2 := startScheduler(t, s1.dbPath, tune)
	w1.sched.point(s2.client)
	waitWorkers(t, s2.client, stateReady, "w1")
	if st := queryJob(t, s2.client, b).GetStatus(); st.GetState() != batonv1.JobState_JOB_STATE_QUEUED || !strings.Contains(st.GetReason(), a) {
		t.Errorf("after the restart B is %v (%q), want QUEUED waiting for A", st.GetState(), st.GetReason())
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for id, st := range finalJobs(t, s2.client, []string{a, b, c}) {
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("job %s ended %v (%s), want SUCCEEDED", id, st.GetState(), st.GetReason())
		}
	}
	if got := readMarks(t, marks); !slices.Equal(got, []string{"B", "C"}) {
		t.Errorf("after the restart the chain ran %v, want B C once each", got)
	}
}

// arrayJob is an array of mark.sh jobs from first to last, at most
// maxRunning at once.
func arrayJob(marks string, secs float64, first, last, maxRunning int32) *batonv1.StartJobRequest {
	r := markJob("i", marks, secs, 0)
	r.Array = &batonv1.ArraySpec{First: first, Last: last, MaxRunning: maxRunning}
	return r
}

// mostAtOnce is the most jobs whose runs overlapped.
func mostAtOnce(jobs map[string]*batonv1.JobStatus) int {
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, st := range jobs {
		if st.GetStartedAt() == nil {
			continue
		}
		edges = append(edges, edge{st.GetStartedAt().AsTime(), 1}, edge{st.GetEndedAt().AsTime(), -1})
	}
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.delta - b.delta // an end before a start at the same time
	})
	most, now := 0, 0
	for _, e := range edges {
		now += e.delta
		most = max(most, now)
	}
	return most
}

func TestArrayRunsAtMostMaxRunningAtOnce(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	for _, n := range []string{"w1", "w2"} {
		startWorkerWith(t, n, sched, workerSetup{capacity: 4})
	}
	waitWorkers(t, sched.client, stateReady, "w1", "w2")
	marks := filepath.Join(t.TempDir(), "marks")
	res := startJob(t, sched.client, arrayJob(marks, 0.2, 0, 19, 4))
	if res.GetGroupId() == "" || len(res.GetJobs()) != 20 {
		t.Fatalf("array started group %q with %d jobs, want a group of 20", res.GetGroupId(), len(res.GetJobs()))
	}
	var ids []string
	for _, st := range res.GetJobs() {
		ids = append(ids, st.GetJobId())
	}
	jobs := finalJobs(t, sched.client, ids)
	indexes := map[int32]bool{}
	for id, st := range jobs {
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("job %s ended %v (%s), want SUCCEEDED", id, st.GetState(), st.GetReason())
		}
		indexes[st.GetSpec().GetArrayIndex()] = true
	}
	if len(indexes) != 20 {
		t.Errorf("the jobs have %d distinct indexes, want 20", len(indexes))
	}
	if got := mostAtOnce(jobs); got > 4 || got < 2 {
		t.Errorf("at most %d jobs of the array ran at once, want 4 at most (and more than one: there is room for 8)", got)
	}
	got := readMarks(t, marks)
	seen := map[string]bool{}
	for _, f := range got {
		if f != "i" {
			seen[f] = true
		}
	}
	for i := range 20 {
		if !seen[strconv.Itoa(i)] {
			t.Errorf("no job ran with BATON_ARRAY_INDEX=%d (marks: %v)", i, got)
		}
	}
}

func TestStoppingAnArrayStopsAllOfIt(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorkerWith(t, "w1", sched, workerSetup{capacity: 8})
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	res := startJob(t, sched.client, arrayJob(marks, 100, 0, 19, 4))
	group := res.GetGroupId()
	waitFor(t, "4 jobs of the array running", func() bool { return runningInGroup(t, sched.client, group) == 4 })
	if _, err := sched.client.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{GroupId: group})); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, st := range res.GetJobs() {
		ids = append(ids, st.GetJobId())
	}
	ran := 0
	for id, st := range finalJobs(t, sched.client, ids) {
		if st.GetState() != batonv1.JobState_JOB_STATE_STOPPED {
			t.Errorf("job %s ended %v (%s), want STOPPED", id, st.GetState(), st.GetReason())
		}
		if st.GetStartedAt() != nil {
			ran++
		}
	}
	if ran != 4 {
		t.Errorf("%d jobs of the array had started when it was stopped, want 4", ran)
	}
	// No job of the array is left to start.
	time.Sleep(300 * time.Millisecond)
	if n := len(readMarks(t, marks)); n != 8 {
		t.Errorf("mark.sh wrote %d fields, want 8 (4 jobs)", n)
	}
}

// runningInGroup counts the group's RUNNING jobs.
func runningInGroup(t *testing.T, c batonv1connect.SchedulerServiceClient, group string) int {
	t.Helper()
	res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{GroupId: group, States: []batonv1.JobState{batonv1.JobState_JOB_STATE_RUNNING}, PageSize: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Msg.GetJobs())
}

// TestAfterOnlyOnWhatTheCallerCanSee: a job may wait only for jobs and
// groups its owner can see: bob's job after alice's is refused as if
// alice's did not exist, and an admin's may wait for anyone's.
func TestAfterOnlyOnWhatTheCallerCanSee(t *testing.T) {
	c := startSecureClusterCapacity(t, 4, "w1")
	ac, bc, admin := c.client(t, alice), c.client(t, bob), c.client(t, root)
	res := startJob(t, ac, &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"0.2"}, All: true})
	job, group := res.GetJobId(), res.GetGroupId()
	for name, d := range map[string]*batonv1.Dependency{
		"alice's job":   {JobId: job},
		"alice's group": {GroupId: group},
	} {
		req := &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", QueueTimeout: noLimit, After: []*batonv1.Dependency{d}}
		_, err := bc.StartJob(t.Context(), connect.NewRequest(req))
		wantCode(t, "bob after "+name, err, connect.CodeInvalidArgument)
		if err != nil && !strings.Contains(err.Error(), "not found") {
			t.Errorf("bob after %s: %v, want it said not found", name, err)
		}
		startJob(t, admin, req) // fails the test if refused
	}
}

// TestArrayPastTheQueueLimitIsRefusedWhole: an array larger than what its
// owner may still queue is refused, and nothing of it is recorded.
func TestArrayPastTheQueueLimitIsRefusedWhole(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", func(o *scheduler.Options) { o.MaxQueuedPerOwner = 5 })
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, stateReady, "w1")
	marks := filepath.Join(t.TempDir(), "marks")
	_, err := sched.client.StartJob(t.Context(), connect.NewRequest(arrayJob(marks, 0, 0, 9, 2)))
	wantCode(t, "an array of 10 with room for 5", err, connect.CodeResourceExhausted)
	res, err := sched.client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(res.Msg.GetJobs()); n != 0 {
		t.Errorf("%d jobs recorded of a refused array", n)
	}
}
