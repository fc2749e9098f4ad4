package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// fillForCopy writes a representative store through the contract: two
// workers, finished, running, lost, queued and being-started jobs, a
// fan-out group and an empty one, idempotency keys, a stop request, a
// retried job waiting for its next attempt and one running it, scripts,
// and schedules with fires, missed ones and a paused one.
func fillForCopy(t *testing.T, s store.Store) {
	t.Helper()
	ctx := t.Context()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range []store.Worker{
		{ID: "w1", Name: "alpha", Address: "10.0.0.1:7001", State: batonv1.WorkerState_WORKER_STATE_READY,
			Labels: map[string]string{"zone": "eu-1"}, Capacity: 4, RunningJobs: 2, LastHeartbeat: epoch, RegisteredAt: epoch.Add(-time.Hour)},
		{ID: "w2", Name: "beta", Address: "10.0.0.2:7001", State: batonv1.WorkerState_WORKER_STATE_DOWN, RegisteredAt: epoch.Add(-time.Hour)},
	} {
		must(s.UpsertWorker(ctx, w))
	}

	// Finished, with an idempotency key.
	done := newJob(1, "w1", "alice")
	done.IdempotencyKey = "nightly-1"
	mustCreateJob(t, ctx, s, done)
	must(s.UpdateJobStatus(ctx, done.ID, terminal(done, batonv1.JobState_JOB_STATE_FAILED, epoch.Add(time.Second))))

	// A fan-out group with a finished and a running job, and a group
	// whose jobs have not been created.
	must(s.CreateGroup(ctx, store.Group{ID: "g1", Owner: "bob", IdempotencyKey: "fan-1", CreatedAt: epoch}))
	must(s.CreateGroup(ctx, store.Group{ID: "g-empty", Owner: "bob", CreatedAt: epoch.Add(time.Millisecond)}))
	for i, w := range []string{"w1", "w2"} {
		j := newJob(2+i, w, "bob")
		j.GroupID = "g1"
		mustCreateJob(t, ctx, s, j)
	}
	must(s.UpdateJobStatus(ctx, jobID(2), terminal(newJob(2, "w1", "bob"), batonv1.JobState_JOB_STATE_SUCCEEDED, epoch.Add(time.Second))))

	// Running, with a stop waiting for delivery; and one lost.
	mustCreateJob(t, ctx, s, newJob(4, "w1", "alice"))
	must(s.RequestStop(ctx, jobID(4), "user/alice"))
	mustCreateJob(t, ctx, s, newJob(5, "w2", "carol"))
	if _, err := s.MarkWorkerJobsLost(ctx, "w2", "worker w2 stopped answering", epoch.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}

	// Queued: one pinned to w2 with a deadline and a script, one for any
	// worker that AssignJob handed to w1 (PENDING, its place kept).
	queued := func(i int, worker string, priority int32, script string) store.Job {
		j := newJob(i, "", "dave")
		j.Status = &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_QUEUED, Spec: &batonv1.JobSpec{Command: "sh", Priority: priority, Worker: worker}}
		j.Queue = &store.QueuePlace{WorkerID: worker, Priority: priority, Round: 1, Seq: int64(i), Deadline: epoch.Add(time.Hour)}
		j.WorkerID = worker
		j.Script = []byte(script)
		return j
	}
	mustCreateJob(t, ctx, s, queued(6, "w2", 70, "echo pinned\n"))
	mustCreateJob(t, ctx, s, queued(7, "", 50, "echo any\n"))
	if _, err := s.AssignJob(ctx, jobID(7), "w1"); err != nil {
		t.Fatal(err)
	}

	// Retried: job 8's first attempt failed and it waits for its second;
	// job 9's second attempt runs on w2 under a run id of its own.
	retried := func(i int, script string) store.Job {
		j := newJob(i, "w1", "erin")
		j.Status.Spec = &batonv1.JobSpec{Command: "sh", Retry: &batonv1.RetryPolicy{Attempts: 3, InitialBackoff: durationpb.New(time.Minute)}}
		j.Script = []byte(script)
		mustCreateJob(t, ctx, s, j)
		must(s.ApplyWorkerReport(ctx, "w1", j.ID, failed(3)))
		return j
	}
	retried(8, "exit 3\n")
	retried(9, "exit 4\n")
	j9, err := s.AssignJob(ctx, jobID(9), "w2")
	if err != nil {
		t.Fatal(err)
	}
	must(s.ApplyWorkerReport(ctx, "w2", j9.Status.GetRunId(), &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 99, StartedAt: timestamppb.New(epoch)}))

	// Schedules: one that fired (a started fire with its job, misses, a
	// skip and a manual fire), and a paused one that never fired.
	sc := testSchedule("sched-1", "alice", "nightly")
	must(s.CreateSchedule(ctx, sc, 0))
	fire := startedFire(sc, epoch.Add(10*time.Second), fireJob(10, "alice", "schedule/sched-1/10", ""))
	fire.Missed, fire.MissedCount = []time.Time{epoch.Add(time.Second), epoch.Add(2 * time.Second)}, 5
	if _, err := s.RecordFire(ctx, fire); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordFire(ctx, store.FireRecord{ScheduleID: sc.ID, HistoryLimit: 20,
		Fire: store.Fire{Time: epoch.Add(20 * time.Second), Outcome: batonv1.FireOutcome_FIRE_OUTCOME_SKIPPED, Reason: "the last fire still runs"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordFire(ctx, store.FireRecord{ScheduleID: sc.ID, HistoryLimit: 20,
		Fire: store.Fire{Time: epoch.Add(25 * time.Second), Manual: true, Outcome: batonv1.FireOutcome_FIRE_OUTCOME_STARTED, JobID: jobID(11)},
		Jobs: []store.Job{fireJob(11, "alice", "schedule/sched-1/manual-25", "")}}); err != nil {
		t.Fatal(err)
	}
	must(s.CreateSchedule(ctx, testSchedule("sched-2", "bob", "weekly"), 0))
	if _, err := s.PauseSchedule(ctx, "bob", "weekly", true, epoch.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
}

// contractView is everything the contract's reads return of a store,
// rendered as JSON lines so that two stores compare line by line.
func contractView(t *testing.T, s store.Store) []string {
	t.Helper()
	ctx := t.Context()
	var out []string
	add := func(what string, v any, err error) {
		t.Helper()
		if err != nil {
			v = "error: " + errorKind(err)
		}
		b, merr := json.Marshal(v)
		if merr != nil {
			t.Fatalf("%s: %v", what, merr)
		}
		out = append(out, what+" = "+string(b))
	}

	workers, err := s.ListWorkers(ctx)
	add("ListWorkers", workers, err)
	workerIDs := []string{"", "w1", "w2", "w-none"}
	for _, id := range workerIDs {
		w, err := s.GetWorker(ctx, id)
		add("GetWorker "+id, w, err)
		jobs, err := s.JobsOnWorker(ctx, id, false)
		add("JobsOnWorker "+id, jobs, err)
		jobs, err = s.JobsOnWorker(ctx, id, true)
		add("JobsOnWorker nonterminal "+id, jobs, err)
		jobs, err = s.PendingStops(ctx, id)
		add("PendingStops "+id, jobs, err)
	}

	filters := []store.JobFilter{{}, {Owner: "bob"}, {GroupID: "g1"}, {WorkerID: "w1"}, {Owner: "erin", WorkerID: ""}}
	for st := range int32(len(batonv1.JobState_name)) {
		filters = append(filters, store.JobFilter{States: []batonv1.JobState{batonv1.JobState(st)}})
	}
	var all []store.Job
	for _, f := range filters {
		f.PageSize = 2
		var pages []store.Job
		for {
			jobs, next, err := s.ListJobs(ctx, f)
			if err != nil {
				add(fmt.Sprintf("ListJobs %+v", f), nil, err)
				break
			}
			pages = append(pages, jobs...)
			if next == "" {
				break
			}
			f.PageToken = next
		}
		f.PageToken = ""
		add(fmt.Sprintf("ListJobs %+v", f), pages, nil)
		if len(f.States) == 0 && f.Owner == "" && f.GroupID == "" && f.WorkerID == "" {
			all = pages
		}
	}
	if len(all) == 0 {
		t.Fatal("the store lists no jobs")
	}
	for _, j := range all {
		got, err := s.GetJob(ctx, j.ID)
		add("GetJob "+j.ID, got, err)
		got, err = s.GetQueuedJob(ctx, j.ID)
		add("GetQueuedJob "+j.ID, got, err)
		if j.IdempotencyKey != "" {
			got, err = s.GetJobByIdempotencyKey(ctx, j.Owner, j.IdempotencyKey)
			add("GetJobByIdempotencyKey "+j.IdempotencyKey, got, err)
		}
	}
	queued, err := s.ListQueued(ctx)
	add("ListQueued", queued, err)

	for _, id := range []string{"g1", "g-empty", "g-none"} {
		g, err := s.GetGroup(ctx, id)
		add("GetGroup "+id, g, err)
		p, err := s.GroupProgress(ctx, id)
		add("GroupProgress "+id, p, err)
	}
	g, err := s.GetGroupByIdempotencyKey(ctx, "bob", "fan-1")
	add("GetGroupByIdempotencyKey", g, err)

	schedules, err := s.AllSchedules(ctx)
	add("AllSchedules", schedules, err)
	page, next, err := s.ListSchedules(ctx, store.ScheduleFilter{PageSize: 1})
	add("ListSchedules", []any{page, next}, err)
	for _, sc := range schedules {
		got, err := s.GetSchedule(ctx, sc.Owner, sc.Name)
		add("GetSchedule "+sc.Name, got, err)
		fires, err := s.ScheduleFires(ctx, sc.ID, 100)
		add("ScheduleFires "+sc.Name, fires, err)
	}
	if len(schedules) == 0 {
		t.Fatal("the store lists no schedules")
	}
	return out
}

// hiddenView is what only writes show of a store: the scripts AssignJob
// hands out, and how reports naming a retried attempt, and the run id of
// the one running, are taken.
func hiddenView(t *testing.T, s store.Store) []string {
	t.Helper()
	ctx := t.Context()
	var out []string
	for _, id := range []string{jobID(6), jobID(8)} {
		j, err := s.AssignJob(ctx, id, "w2")
		if err != nil {
			t.Fatalf("AssignJob %s: %v", id, err)
		}
		out = append(out, fmt.Sprintf("script of %s = %q", id, j.Script))
	}
	j9, err := s.GetJob(ctx, jobID(9))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ worker, run string }{
		{"w1", jobID(9)}, {"w1", jobID(8)}, {"w2", j9.Status.GetRunId()},
	} {
		err := s.ApplyWorkerReport(ctx, r.worker, r.run, &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING})
		out = append(out, fmt.Sprintf("report of %s on %s = %s", r.run, r.worker, errorKind(err)))
	}
	return out
}

// errorKind names the sentinel err wraps, for comparing two stores'
// errors whose wording differs.
func errorKind(err error) string {
	for _, s := range []error{store.ErrNotFound, store.ErrConflict, store.ErrRetiredRun, store.ErrNotOnWorker, store.ErrInvalidPageToken} {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	if err != nil {
		return "other: " + err.Error()
	}
	return "ok"
}

// TestCopySQLiteToEtcd copies a representative SQLite store into etcd
// and compares every read of the contract, and what the hidden parts
// (scripts, retired attempts, run ids) do, on both sides.
func TestCopySQLiteToEtcd(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	src, path := openStore(t)
	fillForCopy(t, src)
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	dst := openEtcd(t, fmt.Sprintf("/test/copy-%d/", testEtcd.prefixes.Add(1)), nil)

	counts, err := store.CopySQLiteToEtcd(ctx, path, dst)
	if err != nil {
		t.Fatalf("CopySQLiteToEtcd: %v", err)
	}
	want := store.RecordCounts{Workers: 2, Groups: 2, Jobs: 11, Schedules: 2, Fires: 5}
	if counts != want {
		t.Errorf("copied %s, want %s", counts, want)
	}

	// The source was read without being opened as a store: its term is
	// still the one fillForCopy's store had.
	again, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.Term() != src.Term()+1 {
		t.Errorf("reopened at term %d after a store at term %d: the copy took a term", again.Term(), src.Term())
	}

	compareLines(t, "contract reads", contractView(t, again), contractView(t, dst))
	compareLines(t, "hidden state", hiddenView(t, again), hiddenView(t, dst))
}

func compareLines(t *testing.T, what string, sqlite, etcd []string) {
	t.Helper()
	if slices.Equal(sqlite, etcd) {
		return
	}
	for i := range max(len(sqlite), len(etcd)) {
		var a, b string
		if i < len(sqlite) {
			a = sqlite[i]
		}
		if i < len(etcd) {
			b = etcd[i]
		}
		if a != b {
			t.Errorf("%s differ:\nsqlite: %s\netcd:   %s", what, a, b)
		}
	}
}

// TestCopyRefusesAStoreInUseOrANonEmptyTarget: a SQLite file a scheduler
// has open is not read (ErrInUse), and is not fenced by the attempt; a
// target holding any record is not written (ErrNotEmpty).
func TestCopyRefusesAStoreInUseOrANonEmptyTarget(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	src, path := openStore(t)
	if err := src.UpsertWorker(ctx, store.Worker{ID: "w1", Name: "alpha"}); err != nil {
		t.Fatal(err)
	}
	dst := openEtcd(t, fmt.Sprintf("/test/copy-%d/", testEtcd.prefixes.Add(1)), nil)

	short, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := store.CopySQLiteToEtcd(short, path, dst); !errors.Is(err, store.ErrInUse) {
		t.Fatalf("copy of a store a scheduler has open = %v, want ErrInUse", err)
	}
	if err := src.UpsertWorker(ctx, store.Worker{ID: "w2", Name: "beta"}); err != nil {
		t.Fatalf("the open store can no longer write after the refused copy: %v", err)
	}
	if n, err := dst.CountRecords(ctx); err != nil || !n.Empty() {
		t.Fatalf("after a refused copy the target holds %v (%v)", n, err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}

	if err := dst.UpsertWorker(ctx, store.Worker{ID: "w9", Name: "other"}); err != nil {
		t.Fatal(err)
	}
	_, err := store.CopySQLiteToEtcd(ctx, path, dst)
	if !errors.Is(err, store.ErrNotEmpty) || !strings.Contains(err.Error(), "1 worker") {
		t.Fatalf("copy into a target holding a worker = %v, want ErrNotEmpty naming it", err)
	}
	if ws, err := dst.ListWorkers(ctx); err != nil || len(ws) != 1 {
		t.Fatalf("after a refused copy the target lists %v (%v)", ws, err)
	}
}
