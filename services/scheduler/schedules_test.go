package scheduler_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
)

func createSchedule(t *testing.T, c batonv1connect.SchedulerServiceClient, sc *batonv1.Schedule) *batonv1.Schedule {
	t.Helper()
	res, err := c.CreateSchedule(t.Context(), connect.NewRequest(&batonv1.CreateScheduleRequest{Schedule: sc}))
	if err != nil {
		t.Fatalf("CreateSchedule %s: %v", sc.GetName(), err)
	}
	return res.Msg.GetSchedule()
}

func getSchedule(t *testing.T, c batonv1connect.SchedulerServiceClient, name string) *batonv1.Schedule {
	t.Helper()
	res, err := c.GetSchedule(t.Context(), connect.NewRequest(&batonv1.GetScheduleRequest{Schedule: &batonv1.ScheduleRef{Name: name}}))
	if err != nil {
		t.Fatalf("GetSchedule %s: %v", name, err)
	}
	return res.Msg.GetSchedule()
}

// waitSchedule polls GetSchedule until ok holds.
func waitSchedule(t *testing.T, c batonv1connect.SchedulerServiceClient, name, what string, ok func(*batonv1.Schedule) bool) *batonv1.Schedule {
	t.Helper()
	deadline := time.Now().Add(2 * waitTimeout)
	for {
		sc := getSchedule(t, c, name)
		if ok(sc) {
			return sc
		}
		if time.Now().After(deadline) {
			t.Fatalf("schedule %s: not %s; last %v", name, what, sc)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sleeper is a schedule that fires every second a job sleeping longer.
func sleeper(name string, overlap batonv1.OverlapPolicy) *batonv1.Schedule {
	return &batonv1.Schedule{
		Name: name, Cron: "@every 1s", Overlap: overlap, HistoryLimit: 100,
		Job: &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"30"}},
	}
}

// TestScheduleOverlapForbid fires a job that outlasts the period: the
// next fires are skipped and say why, and no second job starts.
func TestScheduleOverlapForbid(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	createSchedule(t, sched.client, sleeper("forbid", batonv1.OverlapPolicy_OVERLAP_POLICY_FORBID))
	sc := waitSchedule(t, sched.client, "forbid", "skipping", func(sc *batonv1.Schedule) bool { return sc.GetSkips() >= 2 })
	if sc.GetFires() != 1 {
		t.Errorf("fires %d while the first job runs, want 1", sc.GetFires())
	}
	var started string
	for _, f := range sc.GetRecent() {
		switch f.GetOutcome() {
		case batonv1.FireOutcome_FIRE_OUTCOME_STARTED:
			started = f.GetJobId()
		case batonv1.FireOutcome_FIRE_OUTCOME_SKIPPED:
			if !strings.Contains(f.GetReason(), "overlap forbid") {
				t.Errorf("skipped fire's reason %q", f.GetReason())
			}
		}
	}
	st := queryJob(t, sched.client, started).GetStatus()
	if st.GetState() != batonv1.JobState_JOB_STATE_RUNNING || st.GetSchedule() != "forbid" || st.GetFireTime() == nil {
		t.Errorf("the fire's job: %v schedule %q fire time %v", st.GetState(), st.GetSchedule(), st.GetFireTime())
	}
}

// TestScheduleOverlapReplace fires a job that outlasts the period: each
// fire stops the running job first, stopped by the schedule, then starts
// its own.
func TestScheduleOverlapReplace(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	createSchedule(t, sched.client, sleeper("replace", batonv1.OverlapPolicy_OVERLAP_POLICY_REPLACE))
	sc := waitSchedule(t, sched.client, "replace", "replacing", func(sc *batonv1.Schedule) bool { return sc.GetFires() >= 3 })
	if _, err := sched.client.PauseSchedule(t.Context(), connect.NewRequest(&batonv1.PauseScheduleRequest{Schedule: &batonv1.ScheduleRef{Name: "replace"}})); err != nil {
		t.Fatal(err)
	}
	sc = getSchedule(t, sched.client, "replace")
	var jobs []string
	for _, f := range slices.Backward(sc.GetRecent()) {
		if f.GetOutcome() == batonv1.FireOutcome_FIRE_OUTCOME_STARTED {
			jobs = append(jobs, f.GetJobId())
		}
	}
	if len(jobs) < 3 {
		t.Fatalf("started fires %d, want at least 3", len(jobs))
	}
	// Every job but the last was replaced by the next fire: stopped, by
	// the schedule, before the next one started.
	for i, id := range jobs[:len(jobs)-1] {
		st := queryJob(t, sched.client, id).GetStatus()
		if st.GetState() != batonv1.JobState_JOB_STATE_STOPPED || st.GetStoppedBy() != "schedule/replace" {
			t.Errorf("job %d of the schedule: %v stopped by %q, want STOPPED by schedule/replace", i, st.GetState(), st.GetStoppedBy())
			continue
		}
		next := queryJob(t, sched.client, jobs[i+1]).GetStatus()
		if next.GetStartedAt() != nil && next.GetStartedAt().AsTime().Before(st.GetEndedAt().AsTime()) {
			t.Errorf("job %d started at %v, before job %d ended at %v", i+1, next.GetStartedAt().AsTime(), i, st.GetEndedAt().AsTime())
		}
	}
}

// TestScheduleValidation checks what CreateSchedule refuses, with the
// field at fault named.
func TestScheduleValidation(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	job := &batonv1.StartJobRequest{Command: "true"}
	for _, tc := range []struct {
		name string
		sc   *batonv1.Schedule
		code connect.Code
		want string
	}{
		{"bad cron", &batonv1.Schedule{Name: "a", Cron: "61 * * * *", Job: job}, connect.CodeInvalidArgument, "cron"},
		{"bad zone", &batonv1.Schedule{Name: "a", Cron: "@hourly", TimeZone: "Nowhere/Land", Job: job}, connect.CodeInvalidArgument, "time_zone"},
		{"key", &batonv1.Schedule{Name: "a", Cron: "@hourly", Job: &batonv1.StartJobRequest{Command: "true", IdempotencyKey: "k"}}, connect.CodeInvalidArgument, "idempotency_key"},
		{"all and worker", &batonv1.Schedule{Name: "a", Cron: "@hourly", Job: &batonv1.StartJobRequest{Command: "true", All: true, WorkerId: "w1"}}, connect.CodeInvalidArgument, "worker_id"},
		{"after", &batonv1.Schedule{Name: "a", Cron: "@hourly", Job: &batonv1.StartJobRequest{Command: "true", After: []*batonv1.Dependency{{JobId: "0190b6a4-8b7e-7cc0-8000-000000000001"}}}}, connect.CodeInvalidArgument, "after"},
		{"array", &batonv1.Schedule{Name: "a", Cron: "@hourly", Job: &batonv1.StartJobRequest{Command: "true", Array: &batonv1.ArraySpec{Last: 3}}}, connect.CodeInvalidArgument, "array"},
		{"script name alone", &batonv1.Schedule{Name: "a", Cron: "@hourly", Job: &batonv1.StartJobRequest{Command: "bash", ScriptName: "x.sh"}}, connect.CodeInvalidArgument, "script"},
	} {
		_, err := sched.client.CreateSchedule(t.Context(), connect.NewRequest(&batonv1.CreateScheduleRequest{Schedule: tc.sc}))
		if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %v naming %q", tc.name, err, tc.code, tc.want)
		}
	}
	createSchedule(t, sched.client, &batonv1.Schedule{Name: "a", Cron: "@hourly", Job: job})
	_, err := sched.client.CreateSchedule(t.Context(), connect.NewRequest(&batonv1.CreateScheduleRequest{Schedule: &batonv1.Schedule{Name: "a", Cron: "@daily", Job: job}}))
	wantCode(t, "a second schedule of one name", err, connect.CodeAlreadyExists)
}

// TestScheduleAuthorization: bob cannot see, change or fire alice's
// schedule, and is told it does not exist; an admin reaches it by owner;
// a user may not give a schedule's job a priority above the users' limit.
func TestScheduleAuthorization(t *testing.T) {
	t.Parallel()
	c := startSecureCluster(t, "w1")
	alice := c.client(t, identity.Principal{Role: identity.RoleUser, Name: "alice"})
	bob := c.client(t, identity.Principal{Role: identity.RoleUser, Name: "bob"})
	admin := c.client(t, identity.Principal{Role: identity.RoleAdmin, Name: "root"})
	viewer := c.client(t, identity.Principal{Role: identity.RoleViewer, Name: "vic"})
	ctx := t.Context()
	createSchedule(t, alice, &batonv1.Schedule{Name: "nightly", Cron: "0 3 * * *", TimeZone: "Europe/Paris",
		Job: &batonv1.StartJobRequest{Command: "true", Env: map[string]string{"TOKEN": "secret"}}})

	ref := &batonv1.ScheduleRef{Name: "nightly", Owner: "user/alice"}
	for _, r := range []*batonv1.ScheduleRef{ref, {Name: "nightly"}} {
		_, err := bob.GetSchedule(ctx, connect.NewRequest(&batonv1.GetScheduleRequest{Schedule: r}))
		wantCode(t, "bob reads alice's schedule", err, connect.CodeNotFound)
		_, err = bob.TriggerSchedule(ctx, connect.NewRequest(&batonv1.TriggerScheduleRequest{Schedule: r}))
		wantCode(t, "bob fires alice's schedule", err, connect.CodeNotFound)
		_, err = bob.PauseSchedule(ctx, connect.NewRequest(&batonv1.PauseScheduleRequest{Schedule: r}))
		wantCode(t, "bob pauses alice's schedule", err, connect.CodeNotFound)
		_, err = bob.DeleteSchedule(ctx, connect.NewRequest(&batonv1.DeleteScheduleRequest{Schedule: r}))
		wantCode(t, "bob deletes alice's schedule", err, connect.CodeNotFound)
	}
	_, err := bob.UpdateSchedule(ctx, connect.NewRequest(&batonv1.UpdateScheduleRequest{Owner: "user/alice",
		Schedule: &batonv1.Schedule{Name: "nightly", Cron: "* * * * *", Job: &batonv1.StartJobRequest{Command: "true"}}}))
	wantCode(t, "bob updates alice's schedule", err, connect.CodeNotFound)
	for _, owner := range []string{"", "user/alice"} {
		res, err := bob.ListSchedules(ctx, connect.NewRequest(&batonv1.ListSchedulesRequest{Owner: owner}))
		if err != nil || len(res.Msg.GetSchedules()) != 0 {
			t.Errorf("bob lists schedules (owner %q): %v %v, want none", owner, res, err)
		}
	}
	_, err = viewer.GetSchedule(ctx, connect.NewRequest(&batonv1.GetScheduleRequest{Schedule: ref}))
	wantCode(t, "a viewer reads a schedule", err, connect.CodePermissionDenied)

	res, err := admin.GetSchedule(ctx, connect.NewRequest(&batonv1.GetScheduleRequest{Schedule: ref}))
	if err != nil || res.Msg.GetSchedule().GetOwner() != "user/alice" {
		t.Fatalf("admin reads alice's schedule: %v %v", res, err)
	}
	list, err := admin.ListSchedules(ctx, connect.NewRequest(&batonv1.ListSchedulesRequest{}))
	if err != nil || len(list.Msg.GetSchedules()) != 1 {
		t.Errorf("admin lists: %v %v", list, err)
	}
	// A fire runs as the schedule's owner, whoever asked for it.
	fired, err := admin.TriggerSchedule(ctx, connect.NewRequest(&batonv1.TriggerScheduleRequest{Schedule: ref}))
	if err != nil {
		t.Fatal(err)
	}
	f := fired.Msg.GetFire()
	if f.GetOutcome() != batonv1.FireOutcome_FIRE_OUTCOME_STARTED || !f.GetManual() {
		t.Fatalf("manual fire: %v", f)
	}
	job, err := alice.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: f.GetJobId()}))
	if err != nil || job.Msg.GetStatus().GetOwner() != "user/alice" {
		t.Errorf("the fire's job as alice sees it: %v %v", job, err)
	}
	_, err = bob.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: f.GetJobId()}))
	wantCode(t, "bob reads the fire's job", err, connect.CodeNotFound)

	high := int32(90)
	_, err = alice.CreateSchedule(ctx, connect.NewRequest(&batonv1.CreateScheduleRequest{Schedule: &batonv1.Schedule{
		Name: "urgent", Cron: "@hourly", Job: &batonv1.StartJobRequest{Command: "true", Priority: &high}}}))
	wantCode(t, "a user's schedule with a high priority", err, connect.CodePermissionDenied)
}

func scheduleCall(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// TestSchedulePauseResume: a paused schedule does not fire, and resuming
// goes on from now: the times passed while paused are neither fired nor
// recorded as missed.
func TestSchedulePauseResume(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	ctx := t.Context()
	ref := &batonv1.ScheduleRef{Name: "tick"}
	createSchedule(t, sched.client, &batonv1.Schedule{Name: "tick", Cron: "@every 1s", HistoryLimit: 100,
		Job: &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"0"}}})
	waitSchedule(t, sched.client, "tick", "fired", func(sc *batonv1.Schedule) bool { return sc.GetFires() >= 1 })
	res, err := sched.client.PauseSchedule(ctx, connect.NewRequest(&batonv1.PauseScheduleRequest{Schedule: ref}))
	scheduleCall(t, "pause", err)
	if !res.Msg.GetSchedule().GetPaused() || res.Msg.GetSchedule().GetNextFireTime() != nil {
		t.Errorf("paused schedule: paused %v next %v", res.Msg.GetSchedule().GetPaused(), res.Msg.GetSchedule().GetNextFireTime())
	}
	pausedAt := time.Now()
	firesAtPause := getSchedule(t, sched.client, "tick").GetFires()
	time.Sleep(2500 * time.Millisecond)
	if got := getSchedule(t, sched.client, "tick").GetFires(); got != firesAtPause {
		t.Errorf("fires while paused: %d, then %d", firesAtPause, got)
	}
	_, err = sched.client.ResumeSchedule(ctx, connect.NewRequest(&batonv1.ResumeScheduleRequest{Schedule: ref}))
	scheduleCall(t, "resume", err)
	resumedAt := time.Now()
	sc := waitSchedule(t, sched.client, "tick", "firing again", func(sc *batonv1.Schedule) bool { return sc.GetFires() >= firesAtPause+2 })
	if sc.GetMisses() != 0 || sc.GetSkips() != 0 {
		t.Errorf("after a pause: misses %d skips %d, want none", sc.GetMisses(), sc.GetSkips())
	}
	for _, f := range sc.GetRecent() {
		if at := f.GetFireTime().AsTime(); at.After(pausedAt.Add(time.Second)) && at.Before(resumedAt) {
			t.Errorf("a fire at %v, while paused (%v to %v): %v", at, pausedAt, resumedAt, f.GetOutcome())
		}
	}
}

// TestScheduleFanOut fires a fan-out: one group, a job on each matching
// worker, each with the schedule's name and fire time.
func TestScheduleFanOut(t *testing.T) {
	t.Parallel()
	m := metrics.NewScheduler()
	sched := startScheduler(t, "", func(o *scheduler.Options) { o.Metrics = m })
	startWorker(t, "w1", sched, map[string]string{"pool": "a"})
	startWorker(t, "w2", sched, map[string]string{"pool": "a"})
	startWorker(t, "w3", sched, map[string]string{"pool": "b"})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1", "w2", "w3")
	createSchedule(t, sched.client, &batonv1.Schedule{Name: "everywhere", Cron: "@yearly",
		Job: &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"0"}, All: true, Selector: map[string]string{"pool": "a"}}})
	res, err := sched.client.TriggerSchedule(t.Context(), connect.NewRequest(&batonv1.TriggerScheduleRequest{Schedule: &batonv1.ScheduleRef{Name: "everywhere"}}))
	scheduleCall(t, "trigger", err)
	f := res.Msg.GetFire()
	if f.GetOutcome() != batonv1.FireOutcome_FIRE_OUTCOME_STARTED || f.GetGroupId() == "" || !f.GetManual() {
		t.Fatalf("fan-out fire: %v", f)
	}
	q, err := sched.client.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{GroupId: f.GetGroupId()}))
	scheduleCall(t, "query group", err)
	var workers []string
	for _, j := range q.Msg.GetJobs() {
		workers = append(workers, j.GetWorkerId())
		if j.GetSchedule() != "everywhere" || !j.GetFireTime().AsTime().Equal(f.GetFireTime().AsTime()) {
			t.Errorf("job %s: schedule %q fire time %v", j.GetJobId(), j.GetSchedule(), j.GetFireTime())
		}
	}
	slices.Sort(workers)
	if !slices.Equal(workers, []string{"w1", "w2"}) {
		t.Errorf("the fan-out's jobs are on %v, want w1 and w2", workers)
	}
	// The fire is counted on /metrics, by owner and name.
	fams, err := m.Registry().Gather()
	scheduleCall(t, "gather", err)
	found := false
	for _, fam := range fams {
		if fam.GetName() != "baton_scheduler_schedule_fires_total" {
			continue
		}
		for _, mt := range fam.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			found = labels["name"] == "everywhere" && labels["owner"] == "anonymous" && mt.GetCounter().GetValue() == 1
		}
	}
	if !found {
		t.Error("baton_scheduler_schedule_fires_total{owner=\"anonymous\",name=\"everywhere\"} is not 1")
	}
}

// TestScheduleKeysAndListings: a caller's idempotency key may not look
// like a fire's, and a listing leaves out the content of a schedule's
// script, which GetSchedule gives.
func TestScheduleKeysAndListings(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	for _, key := range []string{"schedule/x/1", "schedule-manual/x/1"} {
		_, err := sched.client.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{Command: "true", IdempotencyKey: key}))
		wantCode(t, "StartJob with key "+key, err, connect.CodeInvalidArgument)
	}
	script := []byte("#!/bin/sh\necho from a schedule\n")
	createSchedule(t, sched.client, &batonv1.Schedule{Name: "s", Cron: "0 0 29 2 *", Job: &batonv1.StartJobRequest{Command: "sh", Script: script, ScriptName: "s.sh"}})
	list, err := sched.client.ListSchedules(t.Context(), connect.NewRequest(&batonv1.ListSchedulesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if got := list.Msg.GetSchedules(); len(got) != 1 || got[0].GetJob().GetScript() != nil || got[0].GetJob().GetScriptName() != "s.sh" {
		t.Errorf("listed: %v, want the schedule with its script named, not its content", got)
	}
	one, err := sched.client.GetSchedule(t.Context(), connect.NewRequest(&batonv1.GetScheduleRequest{Schedule: &batonv1.ScheduleRef{Name: "s"}}))
	if err != nil || string(one.Msg.GetSchedule().GetJob().GetScript()) != string(script) {
		t.Errorf("GetSchedule: script %q, %v", one.Msg.GetSchedule().GetJob().GetScript(), err)
	}
}

// TestConcurrentTriggersForbidOverlap: manual fires at once of a FORBID
// schedule start one job; the others see it and are skipped.
func TestConcurrentTriggersForbidOverlap(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", nil)
	startWorker(t, "w1", sched, nil)
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	sc := sleeper("once", batonv1.OverlapPolicy_OVERLAP_POLICY_FORBID)
	sc.Cron = "0 0 29 2 *" // fires only when triggered
	createSchedule(t, sched.client, sc)
	var wg sync.WaitGroup
	outcomes := make([]batonv1.FireOutcome, 8)
	for i := range outcomes {
		wg.Go(func() {
			res, err := sched.client.TriggerSchedule(t.Context(), connect.NewRequest(&batonv1.TriggerScheduleRequest{Schedule: &batonv1.ScheduleRef{Name: "once"}}))
			if err != nil {
				t.Errorf("TriggerSchedule: %v", err)
				return
			}
			outcomes[i] = res.Msg.GetFire().GetOutcome()
		})
	}
	wg.Wait()
	started := 0
	for _, o := range outcomes {
		if o == batonv1.FireOutcome_FIRE_OUTCOME_STARTED {
			started++
		}
	}
	if started != 1 {
		t.Errorf("8 triggers at once started %d jobs (%v), want 1", started, outcomes)
	}
}

// tooLargeFires refuses, as etcd does, a fire whose jobs carry more script
// bytes in all than limit: store.ErrTooLarge, nothing written.
type tooLargeFires struct {
	store.Store
	limit int
}

func (s tooLargeFires) RecordFire(ctx context.Context, rec store.FireRecord) (store.Schedule, error) {
	n := 0
	for _, j := range rec.Jobs {
		n += len(j.Script)
	}
	if n > s.limit {
		return store.Schedule{}, fmt.Errorf("%w: %d bytes of scripts", store.ErrTooLarge, n)
	}
	return s.Store.RecordFire(ctx, rec)
}

// TestScheduleFireTooLargeFails: a fan-out whose jobs, each with the
// script, are more than the store writes at once fails its fire and says
// why; the schedule goes on to its next fire instead of trying the same
// write for ever.
func TestScheduleFireTooLargeFails(t *testing.T) {
	t.Parallel()
	sched := startScheduler(t, "", func(o *scheduler.Options) { o.Store = tooLargeFires{Store: o.Store, limit: 1 << 20} })
	startWorker(t, "w1", sched, nil)
	startWorker(t, "w2", sched, nil)
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1", "w2")
	script := []byte("#!/bin/sh\n" + strings.Repeat("# padding\n", 60<<10))
	createSchedule(t, sched.client, &batonv1.Schedule{Name: "big", Cron: "@every 1s", HistoryLimit: 100,
		Job: &batonv1.StartJobRequest{Command: "sh", Script: script, All: true}})

	res, err := sched.client.TriggerSchedule(t.Context(), connect.NewRequest(&batonv1.TriggerScheduleRequest{Schedule: &batonv1.ScheduleRef{Name: "big"}}))
	scheduleCall(t, "trigger", err)
	if f := res.Msg.GetFire(); f.GetOutcome() != batonv1.FireOutcome_FIRE_OUTCOME_FAILED || !strings.Contains(f.GetReason(), "too large") {
		t.Fatalf("a fire too large for the store: %v, want FAILED saying it is too large", f)
	}
	sc := waitSchedule(t, sched.client, "big", "past two failed scheduled fires", func(sc *batonv1.Schedule) bool {
		n := 0
		for _, f := range sc.GetRecent() {
			if !f.GetManual() && f.GetOutcome() == batonv1.FireOutcome_FIRE_OUTCOME_FAILED {
				n++
			}
		}
		return n >= 2
	})
	for _, f := range sc.GetRecent() {
		if f.GetOutcome() != batonv1.FireOutcome_FIRE_OUTCOME_FAILED || !strings.Contains(f.GetReason(), "too large") {
			t.Errorf("fire at %v: %v %q, want FAILED as too large", f.GetFireTime().AsTime(), f.GetOutcome(), f.GetReason())
		}
	}
	jobs, err := sched.client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{}))
	scheduleCall(t, "list jobs", err)
	if n := len(jobs.Msg.GetJobs()); n != 0 {
		t.Errorf("%d jobs exist after fires that failed whole", n)
	}
}
