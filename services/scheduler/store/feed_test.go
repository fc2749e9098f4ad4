package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// feedWait bounds every wait for the feed to report a write.
const feedWait = 10 * time.Second

// errEnough stops a reader of the feed that has what it wanted.
var errEnough = errors.New("enough")

// follow runs Changes from after on its own goroutine and hands each
// change to the channel it returns, until the test ends.
func follow(t *testing.T, s store.Store, after int64) <-chan store.Change {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	out := make(chan store.Change)
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		err = s.Changes(ctx, after, func(c store.Change) error {
			select {
			case out <- c:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Changes = %v, want context.Canceled when the test ends", err)
		}
	})
	return out
}

// next returns the next change from ch, failing the test if none comes
// within feedWait.
func next(t *testing.T, ch <-chan store.Change, what string) store.Change {
	t.Helper()
	return nextWithin(t, ch, what, feedWait)
}

func nextWithin(t *testing.T, ch <-chan store.Change, what string, wait time.Duration) store.Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatalf("the feed ended before reporting %s", what)
		}
		return c
	case <-time.After(wait):
		t.Fatalf("the feed did not report %s within %v", what, wait)
		return store.Change{}
	}
}

// readUntil returns the changes after after, up to and including the
// first one of job until.
func readUntil(t *testing.T, s store.Store, after int64, until string) []store.Change {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), feedWait)
	defer cancel()
	var got []store.Change
	err := s.Changes(ctx, after, func(c store.Change) error {
		got = append(got, c)
		if c.JobID == until {
			return errEnough
		}
		return nil
	})
	if !errors.Is(err, errEnough) {
		t.Fatalf("Changes(%d) = %v after %d changes, want them up to job %s", after, err, len(got), until)
	}
	return got
}

// mustJobsRev returns the store's JobsRev.
func mustJobsRev(t *testing.T, s store.Store) int64 {
	t.Helper()
	rev, err := s.JobsRev(t.Context())
	if err != nil {
		t.Fatalf("JobsRev: %v", err)
	}
	return rev
}

// want is what the feed should report of one write.
type want struct {
	id      string
	deleted bool
	state   batonv1.JobState
	stop    string
}

func (w want) check(t *testing.T, what string, c store.Change) {
	t.Helper()
	switch {
	case c.JobID != w.id || c.Deleted != w.deleted:
		t.Fatalf("%s: change of job %s (deleted %v), want job %s (deleted %v)", what, c.JobID, c.Deleted, w.id, w.deleted)
	case w.deleted:
		if c.Job.ID != "" || c.Job.Status != nil {
			t.Fatalf("%s: a delete came with job %+v, want the zero Job", what, c.Job)
		}
	case c.Job.ID != w.id || c.Job.Status.GetState() != w.state || c.Job.StopRequestedBy != w.stop:
		t.Fatalf("%s: job %s %v stop %q, want %s %v stop %q", what, c.Job.ID, c.Job.Status.GetState(), c.Job.StopRequestedBy, w.id, w.state, w.stop)
	}
}

// checkOrder fails the test unless the changes are in Rev order after
// from. Only etcd reports several changes at one Rev, those one
// transaction wrote.
func checkOrder(t *testing.T, from int64, changes []store.Change) {
	t.Helper()
	prev := from
	for _, c := range changes {
		if c.Rev <= from || c.Rev < prev {
			t.Fatalf("change of job %s at rev %d follows rev %d (reading from %d)", c.JobID, c.Rev, prev, from)
		}
		prev = c.Rev
	}
}

// TestFeedReportsEveryJobWrite makes one write of each kind and waits for
// a reader that was already following the feed to report it, then reads
// the feed again from the start and from the middle.
func TestFeedReportsEveryJobWrite(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, _ := b.open(t)
		start := mustJobsRev(t, s)
		live := follow(t, s, start)

		ended := time.Now().Add(-time.Hour)
		running, lost, queued := batonv1.JobState_JOB_STATE_RUNNING, batonv1.JobState_JOB_STATE_LOST, batonv1.JobState_JOB_STATE_QUEUED
		j1, j2, j3, j5 := newJob(1, "w1", "alice"), newJob(2, "w1", "alice"), newJob(3, "w2", "bob"), newJob(5, "w1", "alice")
		j4 := queuedJob(4, "alice", store.QueuePlace{Priority: 50, Round: 1, Seq: 1})
		steps := []struct {
			name  string
			write func() error
			want  []want
		}{
			{"CreateJob", func() error { return s.CreateJob(ctx, j1) }, []want{{id: j1.ID, state: running}}},
			{"RequestStop", func() error { return s.RequestStop(ctx, j1.ID, "carol") }, []want{{id: j1.ID, state: running, stop: "carol"}}},
			{"ClearStop", func() error { return s.ClearStop(ctx, j1.ID) }, []want{{id: j1.ID, state: running}}},
			{"ApplyWorkerReport", func() error {
				return s.ApplyWorkerReport(ctx, "w1", j1.ID, terminal(j1, batonv1.JobState_JOB_STATE_SUCCEEDED, ended))
			}, []want{{id: j1.ID, state: batonv1.JobState_JOB_STATE_SUCCEEDED}}},
			{"CreateJob", func() error { return s.CreateJob(ctx, j2) }, []want{{id: j2.ID, state: running}}},
			{"UpdateJobStatus", func() error {
				return s.UpdateJobStatus(ctx, j2.ID, terminal(j2, batonv1.JobState_JOB_STATE_FAILED, ended))
			}, []want{{id: j2.ID, state: batonv1.JobState_JOB_STATE_FAILED}}},
			{"CreateJob", func() error { return s.CreateJob(ctx, j3) }, []want{{id: j3.ID, state: running}}},
			{"MarkWorkerJobsLost", func() error {
				n, err := s.MarkWorkerJobsLost(ctx, "w2", "worker gone", ended)
				if err == nil && n != 1 {
					t.Fatalf("MarkWorkerJobsLost = %d, want 1", n)
				}
				return err
			}, []want{{id: j3.ID, state: lost}}},
			{"CreateJob queued", func() error { return s.CreateJob(ctx, j4) }, []want{{id: j4.ID, state: queued}}},
			{"AssignJob", func() error { _, err := s.AssignJob(ctx, j4.ID, "w3"); return err },
				[]want{{id: j4.ID, state: batonv1.JobState_JOB_STATE_PENDING}}},
			{"RequeueJob", func() error { _, err := s.RequeueJob(ctx, j4.ID); return err }, []want{{id: j4.ID, state: queued}}},
			{"CreateJob", func() error { return s.CreateJob(ctx, j5) }, []want{{id: j5.ID, state: running}}},
			{"DeleteJob", func() error { return s.DeleteJob(ctx, j5.ID) }, []want{{id: j5.ID, deleted: true}}},
			{"PruneJobs", func() error {
				n, err := s.PruneJobs(ctx, time.Now().Add(-time.Minute))
				if err == nil && n != 3 {
					t.Fatalf("PruneJobs = %d, want 3", n)
				}
				return err
			}, []want{{id: j1.ID, deleted: true}, {id: j2.ID, deleted: true}, {id: j3.ID, deleted: true}}},
		}
		var seen []store.Change
		for _, st := range steps {
			if err := st.write(); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			var got []store.Change
			for range st.want {
				got = append(got, next(t, live, st.name))
			}
			// A prune's deletes come in no set order.
			slices.SortFunc(got, func(a, b store.Change) int { return compareIDs(a.JobID, b.JobID) })
			for i, w := range st.want {
				w.check(t, st.name, got[i])
			}
			seen = append(seen, got...)
		}
		checkOrder(t, start, seen)
		if end := mustJobsRev(t, s); end < seen[len(seen)-1].Rev {
			t.Fatalf("JobsRev = %d after a change at rev %d", end, seen[len(seen)-1].Rev)
		}

		// A marker job bounds the reads below: every change before it
		// has been reported once it is.
		marker := newJob(9, "w9", "alice")
		mustCreateJob(t, ctx, s, marker)
		if c := next(t, live, "the marker"); c.JobID != marker.ID {
			t.Fatalf("change of job %s, want the marker's", c.JobID)
		}

		// From the start and from the middle (the lost marking), a
		// reader sees the latest change of each job changed since, and
		// only those, in order.
		for _, from := range []int64{start, seen[7].Rev} {
			got := readUntil(t, s, from, marker.ID)
			checkOrder(t, from, got)
			if last := got[len(got)-1]; last.JobID != marker.ID {
				t.Fatalf("from %d: the marker is not the last change", from)
			}
			latest := map[string]store.Change{}
			for _, c := range seen {
				if c.Rev > from {
					latest[c.JobID] = c
				}
			}
			gotLatest := map[string]store.Change{}
			for _, c := range got[:len(got)-1] {
				if c.Rev <= from {
					t.Fatalf("from %d: change of job %s at rev %d", from, c.JobID, c.Rev)
				}
				gotLatest[c.JobID] = c
			}
			if len(gotLatest) != len(latest) {
				t.Fatalf("from %d: changes of %d jobs, want %d: %+v", from, len(gotLatest), len(latest), got)
			}
			for id, w := range latest {
				g, ok := gotLatest[id]
				if !ok || g.Rev != w.Rev || g.Deleted != w.Deleted {
					t.Fatalf("from %d: latest change of job %s = %+v, want %+v", from, id, g, w)
				}
			}
		}
	})
}

func compareIDs(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestFeedEnds checks that Changes returns fn's error, and ctx's when it
// ends while the reader waits for a change.
func TestFeedEnds(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, _ := b.open(t)
		start := mustJobsRev(t, s)
		mustCreateJob(t, ctx, s, newJob(1, "w1", "alice"))
		errFn := errors.New("reader failed")
		calls := 0
		bctx, bcancel := context.WithTimeout(ctx, feedWait)
		defer bcancel()
		err := s.Changes(bctx, start, func(store.Change) error { calls++; return errFn })
		if !errors.Is(err, errFn) || calls != 1 {
			t.Fatalf("Changes = %v after %d calls, want fn's error after 1", err, calls)
		}

		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- s.Changes(wctx, mustJobsRev(t, s), func(c store.Change) error {
				return errors.New("no change was made")
			})
		}()
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Changes after cancel = %v, want context.Canceled", err)
			}
		case <-time.After(feedWait):
			t.Fatal("Changes did not return after its ctx was cancelled")
		}

		tctx, tcancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer tcancel()
		err = s.Changes(tctx, mustJobsRev(t, s), func(c store.Change) error { return nil })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Changes past its deadline = %v, want context.DeadlineExceeded", err)
		}
	})
}

// TestFeedAcrossReopen checks that a store opened again carries on the
// feed from where the one before left it.
func TestFeedAcrossReopen(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, handle := b.open(t)
		start := mustJobsRev(t, s)
		mustCreateJob(t, ctx, s, newJob(1, "w1", "alice"))
		mustCreateJob(t, ctx, s, newJob(2, "w1", "alice"))
		if err := s.DeleteJob(ctx, jobID(2)); err != nil {
			t.Fatal(err)
		}
		before := mustJobsRev(t, s)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s2, err := b.reopen(t, handle)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		if got := mustJobsRev(t, s2); got != before && b.name == "sqlite" {
			t.Fatalf("JobsRev after reopen = %d, want %d", got, before)
		}
		mustCreateJob(t, ctx, s2, newJob(3, "w1", "alice"))
		got := readUntil(t, s2, before, jobID(3))
		if len(got) != 1 || got[0].Rev <= before {
			t.Fatalf("changes after reopen = %+v, want job 3's after rev %d", got, before)
		}
		all := readUntil(t, s2, start, jobID(3))
		checkOrder(t, start, all)
		var kinds []string
		for _, c := range all {
			kinds = append(kinds, c.JobID[len(c.JobID)-1:]+map[bool]string{true: "-", false: "+"}[c.Deleted])
		}
		if b.name == "sqlite" && !slices.Equal(kinds, []string{"1+", "2-", "3+"}) {
			t.Fatalf("changes from the start = %v, want [1+ 2- 3+]", kinds)
		}
		if b.name == "etcd" && !slices.Equal(kinds, []string{"1+", "2+", "2-", "3+"}) {
			t.Fatalf("changes from the start = %v, want [1+ 2+ 2- 3+]", kinds)
		}
	})
}

// TestFeedCompacted checks ErrCompacted for a reader resuming from before
// what the store keeps. It compacts the test cluster's history, so it
// runs alone: not in parallel with the other tests.
func TestFeedCompacted(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, _ := b.open(t)
		from := mustJobsRev(t, s)
		mustCreateJob(t, ctx, s, newJob(1, "w1", "alice"))
		if err := s.DeleteJob(ctx, jobID(1)); err != nil {
			t.Fatal(err)
		}
		// Before anything is forgotten, the delete is reported (after
		// the create, on etcd, which keeps every revision).
		for after := from; ; {
			c := readUntil(t, s, after, jobID(1))[0]
			if c.Deleted {
				break
			}
			after = c.Rev
		}
		kept := mustJobsRev(t, s)
		switch s := s.(type) {
		case *store.SQLite:
			// Deletes are kept until a prune of the jobs ended before
			// some time trims those made before it.
			if _, err := s.PruneJobs(ctx, time.Now().Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
		case *store.Etcd:
			if _, err := testEtcd.cli.Compact(ctx, kept); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("no way to compact a %T", s)
		}
		cctx, cancel := context.WithTimeout(ctx, feedWait)
		defer cancel()
		err := s.Changes(cctx, from, func(c store.Change) error {
			return fmt.Errorf("a change from before the compaction was reported: %+v", c)
		})
		if !errors.Is(err, store.ErrCompacted) {
			t.Fatalf("Changes from before the compaction = %v, want ErrCompacted", err)
		}
		t.Logf("Changes: %v", err)
		// From JobsRev, the feed goes on.
		now := mustJobsRev(t, s)
		live := follow(t, s, now)
		mustCreateJob(t, ctx, s, newJob(2, "w1", "alice"))
		if c := next(t, live, "a write after the compaction"); c.JobID != jobID(2) || c.Rev <= now {
			t.Fatalf("change after the compaction = %+v, want job 2's after rev %d", c, now)
		}
	})
}

// TestFeedReportsEveryWorkerReport follows one job's life with a reader
// that keeps up, and checks that every report in it is a change, reported
// at once: well before the SQLite feed's slow poll (5s), so the commit
// itself must wake the reader.
func TestFeedReportsEveryWorkerReport(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, _ := b.open(t)
		live := follow(t, s, mustJobsRev(t, s))
		j := newJob(1, "w1", "alice")
		j.Status.State, j.Status.Pid, j.Status.StartedAt = batonv1.JobState_JOB_STATE_PENDING, 0, nil
		mustCreateJob(t, ctx, s, j)
		next(t, live, "the create")
		for i, st := range []*batonv1.JobStatus{
			{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 42, StartedAt: timestamppb.Now()},
			{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 42, StdoutBytes: 10},
			{State: batonv1.JobState_JOB_STATE_SUCCEEDED, Pid: 42, ExitCode: new(int32(0)), EndedAt: timestamppb.Now()},
		} {
			if err := s.ApplyWorkerReport(ctx, "w1", j.ID, st); err != nil {
				t.Fatal(err)
			}
			c := nextWithin(t, live, "a report", 2*time.Second)
			if c.Job.Status.GetState() != st.State || c.Job.Status.GetPid() != 42 {
				t.Fatalf("report %d: change %v pid %d, want %v pid 42", i, c.Job.Status.GetState(), c.Job.Status.GetPid(), st.State)
			}
		}
	})
}
