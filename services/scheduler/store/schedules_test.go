package store_test

import (
	"errors"
	"testing"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

func testSchedule(id, owner, name string) store.Schedule {
	return store.Schedule{
		ID: id, Owner: owner, Name: name, CreatedAt: epoch, UpdatedAt: epoch, Cursor: epoch,
		Definition: &batonv1.Schedule{Name: name, Cron: "@every 1s", Job: &batonv1.StartJobRequest{Command: "true"}},
	}
}

// fireJob is the QUEUED job of a fire of schedule id at t.
func fireJob(i int, owner, key, group string) store.Job {
	return store.Job{
		ID: jobID(i), Owner: owner, IdempotencyKey: key, GroupID: group, CreatedAt: epoch,
		Queue:  &store.QueuePlace{Priority: 50, Round: 1, Seq: int64(i)},
		Status: &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_QUEUED, Spec: &batonv1.JobSpec{Command: "true"}, Schedule: "nightly"},
	}
}

func startedFire(sc store.Schedule, at time.Time, j store.Job) store.FireRecord {
	return store.FireRecord{
		ScheduleID:   sc.ID,
		Fire:         store.Fire{Time: at, Outcome: batonv1.FireOutcome_FIRE_OUTCOME_STARTED, JobID: j.ID},
		Jobs:         []store.Job{j},
		HistoryLimit: 20,
	}
}

// TestRecordFireOnce records the same fire twice, as a scheduler that
// replays after a restart would: the second is refused and one job exists.
func TestRecordFireOnce(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, path := b.open(t)
		ctx := t.Context()
		sc := testSchedule("sched-1", "user/alice", "nightly")
		if err := s.CreateSchedule(ctx, sc, 0); err != nil {
			t.Fatal(err)
		}
		at := epoch.Add(time.Second)
		upd, err := s.RecordFire(ctx, startedFire(sc, at, fireJob(1, sc.Owner, "schedule/sched-1/1", "")))
		if err != nil {
			t.Fatalf("first fire: %v", err)
		}
		if !upd.Cursor.Equal(at) || upd.Fires != 1 || upd.LastJobID != jobID(1) {
			t.Errorf("after the fire: cursor %v fires %d last job %q", upd.Cursor, upd.Fires, upd.LastJobID)
		}
		// The same fire time again, with another job id: refused.
		if _, err := s.RecordFire(ctx, startedFire(sc, at, fireJob(2, sc.Owner, "schedule/sched-1/1", ""))); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("second record of one fire: %v, want ErrConflict", err)
		}
		// A time before the cursor, with a fresh key: refused too.
		if _, err := s.RecordFire(ctx, startedFire(sc, epoch.Add(time.Millisecond), fireJob(3, sc.Owner, "schedule/sched-1/0", ""))); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("fire before the cursor: %v, want ErrConflict", err)
		}
		jobs, _, err := s.ListJobs(ctx, store.JobFilter{Owner: sc.Owner})
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) != 1 || jobs[0].ID != jobID(1) {
			t.Fatalf("jobs after recording one fire three times: %d, want 1", len(jobs))
		}
		queued, err := s.ListQueued(ctx)
		if err != nil || len(queued) != 1 {
			t.Fatalf("queued after one fire: %d (%v), want 1", len(queued), err)
		}
		// What a restarted scheduler reads: the cursor and the fire.
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s2, err := b.reopen(t, path)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		got, err := s2.GetSchedule(ctx, sc.Owner, sc.Name)
		if err != nil || !got.Cursor.Equal(at) {
			t.Fatalf("reopened: cursor %v (%v), want %v", got.Cursor, err, at)
		}
		fires, err := s2.ScheduleFires(ctx, sc.ID, 10)
		if err != nil || len(fires) != 1 || fires[0].JobID != jobID(1) {
			t.Fatalf("reopened: fires %+v (%v)", fires, err)
		}
	})
}

// TestRecordFireAllOrNothing makes the fire's last write fail (a job id
// already taken): the fire, the cursor, the group and the other jobs are
// not written either.
func TestRecordFireAllOrNothing(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		sc := testSchedule("sched-2", "user/alice", "fanout")
		if err := s.CreateSchedule(ctx, sc, 0); err != nil {
			t.Fatal(err)
		}
		mustCreateJob(t, ctx, s, newJob(9, "w1", "user/alice"))
		at := epoch.Add(time.Second)
		rec := store.FireRecord{
			ScheduleID: sc.ID,
			Fire:       store.Fire{Time: at, Outcome: batonv1.FireOutcome_FIRE_OUTCOME_STARTED, JobID: jobID(1), GroupID: "group-1"},
			Group:      &store.Group{ID: "group-1", Owner: sc.Owner, IdempotencyKey: "schedule/sched-2/1", CreatedAt: epoch},
			Jobs:       []store.Job{fireJob(1, sc.Owner, "", "group-1"), fireJob(9, sc.Owner, "", "group-1")},
		}
		if _, err := s.RecordFire(ctx, rec); err == nil {
			t.Fatal("a fire whose second job cannot be written was recorded")
		}
		got, err := s.GetSchedule(ctx, sc.Owner, sc.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Cursor.Equal(epoch) || got.Fires != 0 || got.LastGroupID != "" {
			t.Errorf("a failed fire moved the schedule: cursor %v fires %d group %q", got.Cursor, got.Fires, got.LastGroupID)
		}
		if fires, _ := s.ScheduleFires(ctx, sc.ID, 10); len(fires) != 0 {
			t.Errorf("a failed fire left %d fire records", len(fires))
		}
		if _, err := s.GetJob(ctx, jobID(1)); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a failed fire left its first job: %v", err)
		}
		if _, err := s.GetGroup(ctx, "group-1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a failed fire left its group: %v", err)
		}
		// The same fire, written right, lands whole.
		rec.Jobs[1] = fireJob(2, sc.Owner, "", "group-1")
		if _, err := s.RecordFire(ctx, rec); err != nil {
			t.Fatal(err)
		}
		if g, err := s.GetGroup(ctx, "group-1"); err != nil || len(g.JobIDs) != 2 {
			t.Errorf("group after the fire: %+v (%v)", g, err)
		}
	})
}

// TestRecordFireMissesBounded records thousands of missed times: all are
// counted, a bounded number kept.
func TestRecordFireMissesBounded(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		sc := testSchedule("sched-3", "user/alice", "often")
		if err := s.CreateSchedule(ctx, sc, 0); err != nil {
			t.Fatal(err)
		}
		var missed []time.Time
		for i := 1; i <= 5000; i++ {
			missed = append(missed, epoch.Add(time.Duration(i)*time.Second))
		}
		through := missed[len(missed)-1]
		upd, err := s.RecordFire(ctx, store.FireRecord{ScheduleID: sc.ID, Fire: store.Fire{Time: through}, Missed: missed, MissedCount: 5000, HistoryLimit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if upd.Misses != 5000 || !upd.Cursor.Equal(through) {
			t.Errorf("misses %d cursor %v, want 5000 and %v", upd.Misses, upd.Cursor, through)
		}
		fires, err := s.ScheduleFires(ctx, sc.ID, 10000)
		if err != nil {
			t.Fatal(err)
		}
		if len(fires) != store.MaxMissRecords || !fires[0].Time.Equal(through) || fires[0].Outcome != batonv1.FireOutcome_FIRE_OUTCOME_MISSED {
			t.Errorf("miss records: %d, newest %+v; want %d, the newest at %v", len(fires), fires[0], store.MaxMissRecords, through)
		}
	})
}

// TestScheduleLimitAndDelete checks the per-owner limit, name
// uniqueness, and that deleting a schedule keeps its jobs.
func TestScheduleLimitAndDelete(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		if err := s.CreateSchedule(ctx, testSchedule("a", "user/alice", "one"), 2); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateSchedule(ctx, testSchedule("b", "user/alice", "one"), 2); !errors.Is(err, store.ErrConflict) {
			t.Errorf("same name twice: %v, want ErrConflict", err)
		}
		if err := s.CreateSchedule(ctx, testSchedule("c", "user/bob", "one"), 2); err != nil {
			t.Errorf("same name, another owner: %v", err)
		}
		if err := s.CreateSchedule(ctx, testSchedule("d", "user/alice", "two"), 2); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateSchedule(ctx, testSchedule("e", "user/alice", "three"), 2); !errors.Is(err, store.ErrLimit) {
			t.Errorf("past the limit: %v, want ErrLimit", err)
		}
		sc := testSchedule("a", "user/alice", "one")
		if _, err := s.RecordFire(ctx, startedFire(sc, epoch.Add(time.Second), fireJob(1, sc.Owner, "k", ""))); err != nil {
			t.Fatal(err)
		}
		if _, err := s.DeleteSchedule(ctx, "user/alice", "one"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetSchedule(ctx, "user/alice", "one"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleted schedule: %v", err)
		}
		if _, err := s.GetJob(ctx, jobID(1)); err != nil {
			t.Errorf("the deleted schedule's job: %v", err)
		}
		list, next, err := s.ListSchedules(ctx, store.ScheduleFilter{PageSize: 1})
		if err != nil || len(list) != 1 || next == "" {
			t.Fatalf("first page: %d %q %v", len(list), next, err)
		}
		list2, next2, err := s.ListSchedules(ctx, store.ScheduleFilter{PageSize: 1, PageToken: next})
		if err != nil || len(list2) != 1 || next2 != "" || list2[0].ID == list[0].ID {
			t.Fatalf("second page: %+v %q %v", list2, next2, err)
		}
	})
}
