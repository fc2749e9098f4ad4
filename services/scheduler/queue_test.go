package scheduler_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/scheduler"
)

// noLimit is the queue_timeout that waits until placed or stopped.
var noLimit = durationpb.New(-time.Second)

// queuedSleep is a job that sleeps 0.1 s and may wait without limit.
func queuedSleep(priority *int32) *batonv1.StartJobRequest {
	return &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"0.1"}, QueueTimeout: noLimit, Priority: priority}
}

// finalJobs waits until every job in ids has ended and returns their
// statuses, by id.
func finalJobs(t *testing.T, c batonv1connect.SchedulerServiceClient, ids []string) map[string]*batonv1.JobStatus {
	t.Helper()
	out := make(map[string]*batonv1.JobStatus, len(ids))
	deadline := time.Now().Add(2 * waitTimeout)
	for _, id := range ids {
		for {
			res, err := c.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: id}))
			if err != nil {
				t.Fatalf("QueryJob(%s): %v", id, err)
			}
			if res.Msg.GetDone() {
				out[id] = res.Msg.GetStatus()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s has not ended: %v (%s)", id, res.Msg.GetStatus().GetState(), res.Msg.GetStatus().GetReason())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return out
}

// checkWorkerOrder checks, worker by worker, that its jobs never overlapped
// and started in the order given by rank (lower first).
func checkWorkerOrder(t *testing.T, jobs map[string]*batonv1.JobStatus, rank func(id string) int) {
	t.Helper()
	byWorker := map[string][]*batonv1.JobStatus{}
	for _, st := range jobs {
		byWorker[st.GetWorkerId()] = append(byWorker[st.GetWorkerId()], st)
	}
	for w, sts := range byWorker {
		slices.SortFunc(sts, func(a, b *batonv1.JobStatus) int {
			return a.GetStartedAt().AsTime().Compare(b.GetStartedAt().AsTime())
		})
		for i := 1; i < len(sts); i++ {
			prev, cur := sts[i-1], sts[i]
			if cur.GetStartedAt().AsTime().Before(prev.GetEndedAt().AsTime()) {
				t.Errorf("worker %s ran jobs %s and %s at once", w, prev.GetJobId(), cur.GetJobId())
			}
			if rank(cur.GetJobId()) < rank(prev.GetJobId()) {
				t.Errorf("worker %s started job #%d after job #%d", w, rank(cur.GetJobId()), rank(prev.GetJobId()))
			}
		}
	}
}

func TestQueueRunsJobsInOrderAndPriorityFirst(t *testing.T) {
	sched := startScheduler(t, "", nil)
	for _, n := range []string{"w1", "w2"} {
		startWorkerWith(t, n, sched, workerSetup{capacity: 1})
	}
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1", "w2")

	// Both workers are busy until every job is queued, so that the queue
	// holds them all whatever the machine's speed.
	blockers := fillWorkers(t, sched.client, 2)
	var ids []string
	for range 40 {
		ids = append(ids, startJob(t, sched.client, queuedSleep(nil)).GetJobId())
	}
	urgent := startJob(t, sched.client, queuedSleep(new(int32(90))))
	st := urgent.GetJobs()[0]
	if st.GetState() != batonv1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("the urgent job is %v, want QUEUED behind full workers", st.GetState())
	}
	if st.GetQueuePosition() != 1 {
		t.Errorf("the urgent job's position is %d, want 1: it goes before every job of lower priority", st.GetQueuePosition())
	}
	if !strings.Contains(st.GetReason(), "full") {
		t.Errorf("the urgent job's reason is %q, want one saying the workers are full", st.GetReason())
	}
	// The jobs still waiting now are all behind the urgent one.
	waiting, err := sched.client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{States: []batonv1.JobState{batonv1.JobState_JOB_STATE_QUEUED}, PageSize: 100}))
	if err != nil {
		t.Fatal(err)
	}
	behind := map[string]bool{}
	for _, j := range waiting.Msg.GetJobs() {
		if j.GetJobId() != urgent.GetJobId() {
			behind[j.GetJobId()] = true
			if j.GetQueuePosition() < 2 {
				t.Errorf("queued job %s lists position %d, want 2 or later", j.GetJobId(), j.GetQueuePosition())
			}
		}
	}
	if len(behind) != 40 {
		t.Fatalf("%d jobs were queued behind the urgent one, want 40", len(behind))
	}
	stopAll(t, sched.client, blockers)

	all := append(slices.Clone(ids), urgent.GetJobId())
	jobs := finalJobs(t, sched.client, all)
	for id, st := range jobs {
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("job %s ended %v (%s), want SUCCEEDED", id, st.GetState(), st.GetReason())
		}
	}
	// Per worker, jobs started in submission order, except the urgent one,
	// which went before every job that was waiting when it came.
	rank := func(id string) int {
		if id == urgent.GetJobId() {
			return -1
		}
		return slices.Index(ids, id)
	}
	checkWorkerOrder(t, jobs, func(id string) int {
		if behind[id] || id == urgent.GetJobId() {
			return 1000 + rank(id)
		}
		return rank(id)
	})
	uw := jobs[urgent.GetJobId()].GetWorkerId()
	for id := range behind {
		if st := jobs[id]; st.GetWorkerId() == uw && st.GetStartedAt().AsTime().Before(jobs[urgent.GetJobId()].GetStartedAt().AsTime()) {
			t.Errorf("job %s, queued before the urgent job came, started before it on %s", id, uw)
		}
	}
	// Across both workers (one machine, one clock): the urgent job started
	// before every other job, and each job started no later than any job
	// submitted two or more places after it. Two neighbours may start in
	// either order, as each takes whichever worker frees first.
	start := func(id string) time.Time { return jobs[id].GetStartedAt().AsTime() }
	ustart := start(urgent.GetJobId())
	for i, id := range ids {
		if start(id).Before(ustart) {
			t.Errorf("job #%d started at %v, before the urgent job at %v", i, start(id), ustart)
		}
	}
	latest := 0 // of jobs #0 to #j-2, the one that started last
	for j := 2; j < len(ids); j++ {
		if start(ids[j-2]).After(start(ids[latest])) {
			latest = j - 2
		}
		if start(ids[j]).Before(start(ids[latest])) {
			t.Errorf("job #%d started at %v, before job #%d, submitted two or more places earlier, at %v", j, start(ids[j]), latest, start(ids[latest]))
		}
	}
}

func TestQueueIsFairBetweenOwners(t *testing.T) {
	c := startSecureClusterCapacity(t, 1, "w1", "w2")
	ac, bc, admin := c.client(t, alice), c.client(t, bob), c.client(t, root)
	blockers := fillWorkers(t, admin, 2)
	var aliceIDs, bobIDs []string
	for range 30 {
		aliceIDs = append(aliceIDs, startJob(t, ac, queuedSleep(nil)).GetJobId())
	}
	for range 10 {
		bobIDs = append(bobIDs, startJob(t, bc, queuedSleep(nil)).GetJobId())
	}
	stopAll(t, admin, blockers)
	a := finalJobs(t, ac, aliceIDs)
	b := finalJobs(t, bc, bobIDs)
	bobTenth := b[bobIDs[9]].GetStartedAt().AsTime()
	aliceTwentieth := a[aliceIDs[19]].GetStartedAt().AsTime()
	if !bobTenth.Before(aliceTwentieth) {
		t.Errorf("bob's tenth job started at %v, not before alice's twentieth at %v: owners did not take turns", bobTenth, aliceTwentieth)
	}
	for id, st := range b {
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("bob's job %s ended %v (%s)", id, st.GetState(), st.GetReason())
		}
	}
	for id, st := range a {
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("alice's job %s ended %v (%s)", id, st.GetState(), st.GetReason())
		}
	}
}

func TestQueueStopCancelsAndTimeoutEnds(t *testing.T) {
	sched := startScheduler(t, "", nil)
	startWorkerWith(t, "w1", sched, workerSetup{capacity: 1})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")

	blocker := startJob(t, sched.client, &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"100"}})
	marker := filepath.Join(t.TempDir(), "ran")
	cancelled := startJob(t, sched.client, &batonv1.StartJobRequest{
		Command: "sh", Args: []string{"-c", "touch " + marker}, QueueTimeout: noLimit,
	})
	if st := cancelled.GetJobs()[0]; st.GetState() != batonv1.JobState_JOB_STATE_QUEUED || st.GetQueuePosition() != 1 {
		t.Fatalf("job behind a full worker is %v at position %d, want QUEUED at 1", st.GetState(), st.GetQueuePosition())
	}
	expiring := startJob(t, sched.client, &batonv1.StartJobRequest{
		Command: "sh", Path: "hello.sh", QueueTimeout: durationpb.New(300 * time.Millisecond),
	})

	stop, err := sched.client.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: cancelled.GetJobId()}))
	if err != nil {
		t.Fatalf("StopJob of a queued job: %v", err)
	}
	if st := stop.Msg.GetStatus(); st.GetState() != batonv1.JobState_JOB_STATE_STOPPED || st.GetStoppedBy() == "" || st.GetStartedAt() != nil {
		t.Fatalf("stopped queued job = %v, stopped_by %q, started_at %v; want STOPPED, stopped_by set, never started", st.GetState(), st.GetStoppedBy(), st.GetStartedAt())
	}
	if r := stop.Msg.GetStatus().GetReason(); r != "stopped while queued; it never ran" {
		t.Errorf("stopped queued job's reason = %q, want %q", r, "stopped while queued; it never ran")
	}

	timedOut := finalJobs(t, sched.client, []string{expiring.GetJobId()})[expiring.GetJobId()]
	if timedOut.GetState() != batonv1.JobState_JOB_STATE_TIMED_OUT || timedOut.GetReason() != "queued 300ms without a free slot; it never ran" {
		t.Errorf("job whose queue timeout passed = %v %q", timedOut.GetState(), timedOut.GetReason())
	}

	// With the slot free, the cancelled job still never runs.
	if _, err := sched.client.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: blocker.GetJobId()})); err != nil {
		t.Fatal(err)
	}
	after := startJob(t, sched.client, &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", QueueTimeout: noLimit})
	if st := finalJobs(t, sched.client, []string{after.GetJobId()})[after.GetJobId()]; st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("a job after the slot freed ended %v (%s)", st.GetState(), st.GetReason())
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the stopped queued job's command ran")
	}
	if st := queryJob(t, sched.client, cancelled.GetJobId()).GetStatus(); st.GetState() != batonv1.JobState_JOB_STATE_STOPPED || st.GetReason() != "stopped while queued; it never ran" {
		t.Errorf("the cancelled job is now %v %q", st.GetState(), st.GetReason())
	}
}

func TestQueueWithoutTimeoutFailsAtOnce(t *testing.T) {
	sched := startScheduler(t, "", nil)
	startWorkerWith(t, "w1", sched, workerSetup{capacity: 1})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	startJob(t, sched.client, &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"100"}})
	_, err := sched.client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"}))
	wantCode(t, "StartJob without a queue timeout on a full worker", err, connect.CodeResourceExhausted)
	for _, bad := range []*durationpb.Duration{durationpb.New(-2 * time.Second), durationpb.New(-time.Millisecond), durationpb.New(31 * 24 * time.Hour)} {
		_, err := sched.client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", QueueTimeout: bad}))
		wantCode(t, "StartJob with queue_timeout "+bad.AsDuration().String(), err, connect.CodeInvalidArgument)
	}
	_, err = sched.client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", QueueTimeout: noLimit, Priority: new(int32(101))}))
	wantCode(t, "StartJob with priority 101", err, connect.CodeInvalidArgument)
	res, err := sched.client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(res.Msg.GetJobs()); n != 1 {
		t.Errorf("refused starts left %d jobs, want only the running one", n)
	}
}

// fillWorkers starts n long jobs that take every slot of n workers of
// capacity 1, and returns their ids; stopAll ends them.
func fillWorkers(t *testing.T, c batonv1connect.SchedulerServiceClient, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		ids = append(ids, startJob(t, c, &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"100"}}).GetJobId())
	}
	return ids
}

// stopAll stops the jobs ids.
func stopAll(t *testing.T, c batonv1connect.SchedulerServiceClient, ids []string) {
	t.Helper()
	for _, id := range ids {
		if _, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id})); err != nil {
			t.Fatalf("StopJob(%s): %v", id, err)
		}
	}
}

// queuePositions returns the queued jobs' positions, by id.
func queuePositions(t *testing.T, c batonv1connect.SchedulerServiceClient) map[string]int32 {
	t.Helper()
	res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{States: []batonv1.JobState{batonv1.JobState_JOB_STATE_QUEUED}, PageSize: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int32{}
	for _, j := range res.Msg.GetJobs() {
		out[j.GetJobId()] = j.GetQueuePosition()
	}
	return out
}

func TestQueueSurvivesSchedulerKill(t *testing.T) {
	db := filepath.Join(t.TempDir(), "baton.db")
	sched := startScheduler(t, db, nil)
	w := startWorkerWith(t, "w1", sched, workerSetup{capacity: 1})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	blockers := fillWorkers(t, sched.client, 1)
	// Each job writes its number to one file as it starts: the file is
	// the order the jobs ran in, each as many times as it ran.
	ran := filepath.Join(t.TempDir(), "ran")
	var ids []string
	for i := range 20 {
		ids = append(ids, startJob(t, sched.client, &batonv1.StartJobRequest{
			Command: "sh", Args: []string{"-c", `echo "$N" >> ` + ran + `; sleep 0.05`},
			Env: map[string]string{"N": strconv.Itoa(i)}, QueueTimeout: noLimit,
		}).GetJobId())
	}
	before := queuePositions(t, sched.client)
	if len(before) != 20 {
		t.Fatalf("%d jobs queued before the kill, want 20", len(before))
	}
	sched.kill()

	again := startScheduler(t, db, nil)
	w.sched.point(again.client)
	after := queuePositions(t, again.client)
	for _, id := range ids {
		if after[id] != before[id] {
			t.Errorf("job %s was at %d before the restart and at %d after", id, before[id], after[id])
		}
	}
	waitWorkers(t, again.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	stopAll(t, again.client, blockers)
	jobs := finalJobs(t, again.client, ids)
	for _, id := range ids {
		if st := jobs[id]; st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("job %s ended %v (%s)", id, st.GetState(), st.GetReason())
		}
	}
	out, err := os.ReadFile(ran)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 20 {
		want = append(want, strconv.Itoa(i))
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, want) {
		t.Errorf("jobs ran as %v, want each once, in the order queued: %v", got, want)
	}
}

func TestQueueRunJobSaysQueuedThenRuns(t *testing.T) {
	sched := startScheduler(t, "", nil)
	startWorkerWith(t, "w1", sched, workerSetup{capacity: 1})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	blocker := startJob(t, sched.client, &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"0.5"}})

	r := runJob(t.Context(), sched.client, &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", QueueTimeout: noLimit}})
	if r.err != nil {
		t.Fatalf("RunJob: %v", r.err)
	}
	if r.order != "qscf" {
		t.Fatalf("RunJob sent %q, want queued, started, output, final status", r.order)
	}
	if r.queued.GetState() != batonv1.JobState_JOB_STATE_QUEUED || r.queued.GetQueuePosition() != 1 || r.queued.GetJobId() != r.final.GetJobId() {
		t.Errorf("queued message = %v at %d for %s", r.queued.GetState(), r.queued.GetQueuePosition(), r.queued.GetJobId())
	}
	if r.out.String() != "hello\n" || r.final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("run = %q, %v", r.out.String(), r.final.GetState())
	}
	if b := queryJob(t, sched.client, blocker.GetJobId()).GetStatus(); !b.GetEndedAt().AsTime().Before(r.started.GetStartedAt().AsTime()) {
		t.Errorf("the queued run started at %v, before the blocker ended at %v", r.started.GetStartedAt().AsTime(), b.GetEndedAt().AsTime())
	}

	// A run that times out in the queue ends with its status and no start.
	startJob(t, sched.client, &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"5"}})
	r = runJob(t.Context(), sched.client, &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", QueueTimeout: durationpb.New(200 * time.Millisecond)}})
	if r.err != nil || r.order != "qf" || r.final.GetState() != batonv1.JobState_JOB_STATE_TIMED_OUT {
		t.Fatalf("RunJob timing out in the queue: %q, %v, err %v; want queued then TIMED_OUT", r.order, r.final.GetState(), r.err)
	}
}

func TestQueueFanOutWaitsOnFullWorkers(t *testing.T) {
	sched := startScheduler(t, "", nil)
	for _, n := range []string{"w1", "w2"} {
		startWorkerWith(t, n, sched, workerSetup{capacity: 1})
	}
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1", "w2")
	blocker := startJob(t, sched.client, &batonv1.StartJobRequest{WorkerId: "w2", Command: "sh", Path: "sleep.sh", Args: []string{"0.5"}})
	res := startJob(t, sched.client, &batonv1.StartJobRequest{All: true, Command: "sh", Path: "hello.sh", QueueTimeout: noLimit})
	if len(res.GetJobs()) != 2 {
		t.Fatalf("fan-out made %d jobs, want one per worker", len(res.GetJobs()))
	}
	got := map[string]batonv1.JobState{}
	for _, st := range res.GetJobs() {
		got[st.GetWorkerId()] = st.GetState()
	}
	if got["w1"] == batonv1.JobState_JOB_STATE_QUEUED || got["w2"] != batonv1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("fan-out jobs = %v; want w1's started and w2's queued on w2", got)
	}
	ids := []string{blocker.GetJobId()}
	for _, st := range res.GetJobs() {
		ids = append(ids, st.GetJobId())
	}
	for id, st := range finalJobs(t, sched.client, ids) {
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("job %s ended %v (%s)", id, st.GetState(), st.GetReason())
		}
		if id == res.GetJobs()[1].GetJobId() && st.GetWorkerId() != res.GetJobs()[1].GetWorkerId() {
			t.Errorf("the job queued on %s ran on %s", res.GetJobs()[1].GetWorkerId(), st.GetWorkerId())
		}
	}
}

func TestQueuePriorityAboveUsersIsAdminsOnly(t *testing.T) {
	c := startSecureClusterCapacity(t, 1, "w1")
	ac, admin := c.client(t, alice), c.client(t, root)
	_, err := ac.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", QueueTimeout: noLimit, Priority: new(int32(90))}))
	wantCode(t, "a user's StartJob with priority 90", err, connect.CodePermissionDenied)
	r := runJob(t.Context(), ac, &batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", Priority: new(int32(51))}})
	wantCode(t, "a user's RunJob with priority 51", r.err, connect.CodePermissionDenied)
	if r.order != "" {
		t.Errorf("a refused RunJob sent %q", r.order)
	}
	for _, p := range []int32{0, 50} {
		res := startJob(t, ac, &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", QueueTimeout: noLimit, Priority: new(p)})
		if got := res.GetJobs()[0].GetSpec().GetPriority(); got != p {
			t.Errorf("a user's job asked for priority %d and got %d", p, got)
		}
	}
	res := startJob(t, admin, &batonv1.StartJobRequest{Command: "sh", Path: "hello.sh", QueueTimeout: noLimit, Priority: new(int32(100))})
	if got := res.GetJobs()[0].GetSpec().GetPriority(); got != 100 {
		t.Errorf("an admin's job asked for priority 100 and got %d", got)
	}
}

func TestQueueRefusesUnknownAndDrainingWorkers(t *testing.T) {
	sched := startScheduler(t, "", nil)
	startWorkerWith(t, "w1", sched, workerSetup{capacity: 1})
	startWorkerWith(t, "w2", sched, workerSetup{capacity: 1})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1", "w2")
	if _, err := sched.client.DrainWorker(t.Context(), connect.NewRequest(&batonv1.DrainWorkerRequest{WorkerId: "w2"})); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		_, err := sched.client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "ghost", Command: "sh", Path: "hello.sh", QueueTimeout: noLimit}))
		wantCode(t, "StartJob for an unknown worker, "+when, err, connect.CodeNotFound)
		_, err = sched.client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w2", Command: "sh", Path: "hello.sh", QueueTimeout: noLimit}))
		wantCode(t, "StartJob for a draining worker, "+when, err, connect.CodeFailedPrecondition)
	}
	check("with the queue empty")
	startJob(t, sched.client, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh", Args: []string{"100"}})
	if st := startJob(t, sched.client, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh", QueueTimeout: noLimit}).GetJobs()[0]; st.GetState() != batonv1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("a job for the busy w1 is %v, want QUEUED", st.GetState())
	}
	check("with jobs queued")
}

func TestStartOnAnUnreachableWorkerNamesTheAddress(t *testing.T) {
	sched := startScheduler(t, "", nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	if _, err := sched.client.RegisterWorker(t.Context(), connect.NewRequest(&batonv1.RegisterWorkerRequest{Name: "w9", Address: addr})); err != nil {
		t.Fatal(err)
	}
	_, err = sched.client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w9", Command: "sh", Path: "hello.sh"}))
	wantCode(t, "StartJob on a worker nobody listens for", err, connect.CodeUnavailable)
	if msg := err.Error(); !strings.Contains(msg, addr) || !strings.Contains(msg, "refused") {
		t.Errorf("the error %q does not name the address dialled (%s) and why", msg, addr)
	}
}

// hangingCalls is a worker interceptor that, while on, holds StartJob and
// QueryJob calls until their deadline, as a worker that stopped answering.
type hangingCalls struct{ on atomic.Bool }

func (h *hangingCalls) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if p := req.Spec().Procedure; h.on.Load() && (strings.HasSuffix(p, "/StartJob") || strings.HasSuffix(p, "/QueryJob")) {
			<-ctx.Done()
			return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
		}
		return next(ctx, req)
	}
}
func (h *hangingCalls) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}
func (h *hangingCalls) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

func TestUnknownStartIsSettledAtTheNextHeartbeat(t *testing.T) {
	sched := startScheduler(t, "", func(o *scheduler.Options) {
		o.WorkerCallTimeout = 300 * time.Millisecond
		o.HeartbeatInterval = 200 * time.Millisecond
	})
	hang := &hangingCalls{}
	startWorkerWith(t, "w1", sched, workerSetup{interceptors: []connect.Interceptor{hang}})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	hang.on.Store(true)
	_, err := sched.client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"}))
	wantCode(t, "StartJob on a worker that does not answer", err, connect.CodeUnavailable)
	list := func() *batonv1.JobStatus {
		res, err := sched.client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{}))
		if err != nil || len(res.Msg.GetJobs()) != 1 {
			t.Fatalf("ListJobs: %v, %d jobs", err, len(res.Msg.GetJobs()))
		}
		return res.Msg.GetJobs()[0]
	}
	if st := list(); st.GetState() != batonv1.JobState_JOB_STATE_LOST || !strings.Contains(st.GetReason(), "outcome unknown") {
		t.Fatalf("the job is %v %q, want LOST with its outcome unknown", st.GetState(), st.GetReason())
	}
	// Another worker's word about the job settles nothing: only w1's does.
	if _, err := sched.client.RegisterWorker(t.Context(), connect.NewRequest(&batonv1.RegisterWorkerRequest{Name: "w2", Address: "127.0.0.1:1"})); err != nil {
		t.Fatal(err)
	}
	id := list().GetJobId()
	if _, err := sched.client.Heartbeat(t.Context(), connect.NewRequest(&batonv1.HeartbeatRequest{WorkerId: "w2",
		Changes: []*batonv1.JobStatus{{JobId: id, WorkerId: "w2", State: batonv1.JobState_JOB_STATE_RUNNING}}})); err != nil {
		t.Fatal(err)
	}
	hang.on.Store(false)
	waitFor(t, "the unknown start to be settled", func() bool {
		return strings.HasPrefix(list().GetReason(), "never started")
	})
}

// TestUnknownStartIsSettledAtRegistration: a start that had no answer is
// settled when its worker registers again, here after a restart on the
// same data directory, with no heartbeat at all: the interval is an hour,
// and the old worker's last heartbeat never reached the scheduler.
func TestUnknownStartIsSettledAtRegistration(t *testing.T) {
	sm := metrics.NewScheduler()
	sched := startScheduler(t, "", func(o *scheduler.Options) {
		o.WorkerCallTimeout = 300 * time.Millisecond
		o.HeartbeatInterval = time.Hour
		o.Metrics = sm
	})
	dataDir := filepath.Join(t.TempDir(), "data")
	hang := &hangingCalls{}
	old := startWorkerWith(t, "w1", sched, workerSetup{interceptors: []connect.Interceptor{hang}, dataDir: dataDir})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	hang.on.Store(true)
	_, err := sched.client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"}))
	wantCode(t, "StartJob on a worker that does not answer", err, connect.CodeUnavailable)
	list := func() *batonv1.JobStatus {
		res, err := sched.client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{}))
		if err != nil || len(res.Msg.GetJobs()) != 1 {
			t.Fatalf("ListJobs: %v, %d jobs", err, len(res.Msg.GetJobs()))
		}
		return res.Msg.GetJobs()[0]
	}
	if st := list(); st.GetState() != batonv1.JobState_JOB_STATE_LOST || !strings.Contains(st.GetReason(), "outcome unknown") {
		t.Fatalf("the job is %v %q, want LOST with its outcome unknown", st.GetState(), st.GetReason())
	}
	heartbeats := func() float64 {
		families, err := sm.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]*dto.MetricFamily{}
		for _, f := range families {
			byName[f.GetName()] = f
		}
		v, ok := value(byName, "baton_scheduler_heartbeats_received_total")
		if !ok {
			t.Fatal("baton_scheduler_heartbeats_received_total missing")
		}
		return v
	}
	// The worker stops without reaching the scheduler (no last heartbeat,
	// no deregistration) and starts again on its data directory.
	old.sched.pause(true)
	old.stop()
	startWorkerWith(t, "w1", sched, workerSetup{dataDir: dataDir})
	want := `never started: its start had no answer, and worker "w1" does not have it`
	waitFor(t, "the unknown start to be settled by the registration", func() bool {
		return list().GetReason() == want
	})
	if st := list(); st.GetState() != batonv1.JobState_JOB_STATE_LOST || st.GetStartedAt() != nil {
		t.Errorf("the settled job is %v, started_at %v; want LOST, never started", st.GetState(), st.GetStartedAt())
	}
	if n := heartbeats(); n != 0 {
		t.Errorf("the scheduler received %v heartbeats; want none, so that the registration settled the start", n)
	}
}

// TestQueuedJobsAreTheirOwners: another user can neither see, stop nor
// follow a job while it waits in the queue, and does not learn of it
// from the queue listing.
func TestQueuedJobsAreTheirOwners(t *testing.T) {
	c := startSecureClusterCapacity(t, 1, "w1")
	ac, bc, admin := c.client(t, alice), c.client(t, bob), c.client(t, root)
	blockers := fillWorkers(t, admin, 1)
	id := startJob(t, ac, queuedSleep(nil)).GetJobId()

	_, err := bc.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
	wantCode(t, "bob stops alice's queued job", err, connect.CodeNotFound)
	_, err = bc.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: id}))
	wantCode(t, "bob queries alice's queued job", err, connect.CodeNotFound)
	stream, err := bc.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Follow: true}))
	if err == nil {
		for stream.Receive() {
		}
		err = stream.Err()
		stream.Close()
	}
	wantCode(t, "bob follows alice's queued job", err, connect.CodeNotFound)
	if got := queuePositions(t, bc); len(got) != 0 {
		t.Errorf("bob's queue listing shows %v", got)
	}
	if st := queryJob(t, ac, id).GetStatus(); st.GetState() != batonv1.JobState_JOB_STATE_QUEUED || st.GetQueuePosition() != 1 {
		t.Errorf("alice's job is %v at %d after bob's attempts, want QUEUED at 1", st.GetState(), st.GetQueuePosition())
	}
	stopAll(t, admin, blockers)
}
