package scheduler

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/scheduler/store"
)

// The path of a fire: one goroutine (runSchedules) sleeps until the
// soonest next fire time of any schedule. For a schedule that is due it
// records the times that passed beyond the catch-up deadline as missed,
// then fires each remaining due time, oldest first. A fire is one store
// transaction (store.RecordFire) that records the fire, moves the
// schedule's cursor to its time and creates its QUEUED job (or fan-out
// group and jobs) with an idempotency key made of the schedule's id and
// the fire time; the job then joins the queue, and the dispatcher places
// it as any other. A restart replays from the stored cursor: a time at or
// before it is refused by the store, so each fire time yields one job.

// Defaults of a schedule's optional fields.
const (
	DefaultCatchUp              = time.Minute
	DefaultHistoryLimit         = 20
	DefaultMaxSchedulesPerOwner = 1000
	// maxMissScan bounds the fire times a catch-up walks one by one; past
	// it the rest up to the deadline are skipped over uncounted.
	maxMissScan = 100_000
	// fireRetry is how soon a fire the store could not record is tried
	// again.
	fireRetry = time.Second
	// maxCatchUpFires bounds the fires one catch-up makes for a schedule.
	maxCatchUpFires = 100
)

// errBadSchedule is a schedule definition the scheduler cannot use.
var errBadSchedule = errors.New("invalid schedule")

// scheduleSet holds every schedule with its next fire time, soonest
// first. It is safe for concurrent use.
type scheduleSet struct {
	mu    sync.Mutex
	byKey map[string]*schedEntry
	soon  schedHeap
	// wake is signalled when a schedule is added, changed or removed.
	wake chan struct{}
	// firing holds a lock per schedule id: one fire of a schedule at a
	// time, so that a manual fire and a due one both see the other's job.
	firing sync.Map
}

// fireLock takes schedule id's fire lock and returns its release.
func (ss *scheduleSet) fireLock(id string) func() {
	v, _ := ss.firing.LoadOrStore(id, new(sync.Mutex))
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// schedEntry is one schedule as the firing loop knows it.
type schedEntry struct {
	sc   store.Schedule
	ft   *fireTimes // nil: its cron no longer parses; it never fires
	next time.Time  // zero: not due (paused, or no time left)
	idx  int        // index in soon, -1 when not in it
}

func newScheduleSet() *scheduleSet {
	return &scheduleSet{byKey: make(map[string]*schedEntry), wake: make(chan struct{}, 1)}
}

func scheduleKey(owner, name string) string { return owner + "\x00" + name }

// put adds sc, or replaces the entry of its name. With onlyKnown it
// replaces only an entry of the same schedule (same id) and only with a
// state that is not older: the firing loop's view never undoes a change
// an RPC made meanwhile, nor brings back a deleted schedule.
func (ss *scheduleSet) put(sc store.Schedule, onlyKnown bool) {
	ft, _ := parseFireTimes(sc.Definition.GetCron(), sc.Definition.GetTimeZone())
	ss.mu.Lock()
	defer ss.mu.Unlock()
	key := scheduleKey(sc.Owner, sc.Name)
	e := ss.byKey[key]
	if onlyKnown && (e == nil || e.sc.ID != sc.ID || older(sc, e.sc)) {
		return
	}
	if e == nil {
		e = &schedEntry{idx: -1}
		ss.byKey[key] = e
	}
	e.sc, e.ft = sc, ft
	ss.scheduleLocked(e, time.Time{})
}

// older reports whether a is an earlier state of the same schedule than b.
func older(a, b store.Schedule) bool {
	if !a.UpdatedAt.Equal(b.UpdatedAt) {
		return a.UpdatedAt.Before(b.UpdatedAt)
	}
	return a.Cursor.Before(b.Cursor) || a.Fires+a.Misses+a.Skips < b.Fires+b.Misses+b.Skips
}

// scheduleLocked sets e's next time (retryAt, if set, or the next fire
// time after its cursor) and its place in soon.
func (ss *scheduleSet) scheduleLocked(e *schedEntry, retryAt time.Time) {
	e.next = time.Time{}
	switch {
	case e.sc.Paused || e.ft == nil:
	case !retryAt.IsZero():
		e.next = retryAt
	default:
		e.next = e.ft.next(e.sc.Cursor)
	}
	switch {
	case e.next.IsZero() && e.idx >= 0:
		heap.Remove(&ss.soon, e.idx)
	case !e.next.IsZero() && e.idx >= 0:
		heap.Fix(&ss.soon, e.idx)
	case !e.next.IsZero():
		heap.Push(&ss.soon, e)
	}
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// retry makes the schedule of that id due again at at.
func (ss *scheduleSet) retry(sc store.Schedule, at time.Time) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if e := ss.byKey[scheduleKey(sc.Owner, sc.Name)]; e != nil && e.sc.ID == sc.ID {
		ss.scheduleLocked(e, at)
	}
}

// remove forgets the owner's schedule of that name.
func (ss *scheduleSet) remove(owner, name string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	key := scheduleKey(owner, name)
	if e := ss.byKey[key]; e != nil {
		if e.idx >= 0 {
			heap.Remove(&ss.soon, e.idx)
		}
		delete(ss.byKey, key)
	}
}

// due takes out the schedules due at now, and tells when the next one
// is (zero for none).
func (ss *scheduleSet) due(now time.Time) (out []schedEntry, next time.Time) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for ss.soon.Len() > 0 {
		e := ss.soon[0]
		if e.next.After(now) {
			return out, e.next
		}
		heap.Pop(&ss.soon)
		out = append(out, *e)
	}
	return out, time.Time{}
}

// counts returns every schedule's counters, for the metrics.
func (ss *scheduleSet) counts() []metrics.ScheduleCounts {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]metrics.ScheduleCounts, 0, len(ss.byKey))
	for _, e := range ss.byKey {
		out = append(out, metrics.ScheduleCounts{Owner: e.sc.Owner, Name: e.sc.Name, Fires: e.sc.Fires, Misses: e.sc.Misses, Skips: e.sc.Skips})
	}
	return out
}

// fireTimesOf returns the parsed cron of the owner's schedule of that
// name, or nil.
func (ss *scheduleSet) fireTimesOf(owner, name string) *fireTimes {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if e := ss.byKey[scheduleKey(owner, name)]; e != nil {
		return e.ft
	}
	return nil
}

// schedHeap orders schedule entries by next fire time.
type schedHeap []*schedEntry

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h schedHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}

func (h *schedHeap) Push(x any) {
	e := x.(*schedEntry)
	e.idx = len(*h)
	*h = append(*h, e)
}

func (h *schedHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.idx = -1
	*h = old[:len(old)-1]
	return e
}

// loadSchedules fills the set from the store and reports the schedules'
// counters to the metrics.
func (s *Scheduler) loadSchedules(ctx context.Context) error {
	s.scheds = newScheduleSet()
	all, err := s.store.AllSchedules(ctx)
	if err != nil {
		return err
	}
	for _, sc := range all {
		s.scheds.put(sc, false)
	}
	if m := s.opts.Metrics; m != nil {
		return m.ObserveSchedules(s.scheds.counts)
	}
	return nil
}

// runSchedules fires schedules as they come due until ctx ends. It is the
// only goroutine that fires scheduled times; it waits on one timer, set
// to the soonest next fire time of all schedules.
func (s *Scheduler) runSchedules(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// A REPLACE schedule's fire waits for the stop of its earlier job,
	// which may take a worker's whole grace period: it fires apart, so
	// that no other schedule waits for it. Its entry is out of the set
	// until catchUp puts it back, and the store refuses a time fired
	// twice.
	var apart sync.WaitGroup
	defer apart.Wait()
	for {
		due, next := s.scheds.due(time.Now())
		for _, e := range due {
			if ctx.Err() != nil {
				return
			}
			if e.sc.Definition.GetOverlap() == batonv1.OverlapPolicy_OVERLAP_POLICY_REPLACE {
				apart.Go(func() { s.catchUp(ctx, e) })
				continue
			}
			s.catchUp(ctx, e)
		}
		if len(due) > 0 {
			continue // firing took time: look again
		}
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case <-s.scheds.wake:
		case <-timer.C:
		}
	}
}

// catchUp deals with every fire time of e that is due: those past the
// catch-up deadline are recorded as missed, the others fired oldest first.
func (s *Scheduler) catchUp(ctx context.Context, e schedEntry) {
	ctx = context.WithoutCancel(ctx)
	sc, ft := e.sc, e.ft
	now := time.Now()
	deadline := now.Add(-catchUpOf(sc.Definition))
	// One catch-up fires at most maxCatchUpFires times, the latest: the
	// times before them count as missed.
	if recent := latestTimes(ft, sc.Cursor, now.Add(time.Nanosecond), maxCatchUpFires); len(recent) == maxCatchUpFires && recent[0].After(deadline) {
		deadline = recent[0]
	}
	missed, count, through := missedTimes(ft, sc.Cursor, deadline)
	if count > 0 {
		upd, err := s.store.RecordFire(ctx, store.FireRecord{
			ScheduleID: sc.ID, Fire: store.Fire{Time: through}, Missed: missed, MissedCount: count,
			HistoryLimit: historyLimitOf(sc.Definition),
		})
		if !s.afterFire(ctx, sc, upd, err) {
			return
		}
		s.logger.WarnContext(ctx, "schedule missed fire times: the scheduler was not running within the catch-up deadline",
			"owner", sc.Owner, "schedule", sc.Name, "missed", count, "through", through)
		sc = upd
	}
	for t := ft.next(sc.Cursor); !t.IsZero() && !t.After(now); t = ft.next(t) {
		_, upd, err := s.fire(ctx, sc, t, false)
		if !s.afterFire(ctx, sc, upd, err) {
			return
		}
		sc = upd
	}
	s.scheds.put(sc, true)
}

// afterFire handles the outcome of a fire's transaction, and reports
// whether to go on with the schedule's next time.
func (s *Scheduler) afterFire(ctx context.Context, sc, upd store.Schedule, err error) bool {
	switch {
	case err == nil:
		return true
	case errors.Is(err, store.ErrNotFound):
		return false // deleted meanwhile
	case errors.Is(err, store.ErrConflict):
		// Recorded already, or paused meanwhile: the stored state says
		// what is next.
		if cur, gerr := s.store.GetSchedule(ctx, sc.Owner, sc.Name); gerr == nil {
			s.scheds.put(cur, true)
		} else if !errors.Is(gerr, store.ErrNotFound) {
			s.scheds.retry(sc, time.Now().Add(fireRetry))
		}
		return false
	default:
		s.logger.ErrorContext(ctx, "recording a schedule's fire failed; it is tried again", "owner", sc.Owner, "schedule", sc.Name, "error", err)
		s.scheds.retry(sc, time.Now().Add(fireRetry))
		return false
	}
}

// missedTimes walks the fire times after cursor and before deadline. It
// returns the latest store.MaxMissRecords of them, how many there were,
// and the last one (the cursor's new place).
func missedTimes(ft *fireTimes, cursor, deadline time.Time) (latest []time.Time, count int64, through time.Time) {
	if ft.every > 0 {
		// Elapsed-time schedules are counted, not walked.
		first := ft.next(cursor)
		if !first.Before(deadline) {
			return nil, 0, time.Time{}
		}
		count = int64(deadline.Sub(first)/ft.every) + 1
		through = first.Add(time.Duration(count-1) * ft.every)
		if !through.Before(deadline) {
			count--
			through = through.Add(-ft.every)
		}
		for i := max(count-store.MaxMissRecords, 0); i < count; i++ {
			latest = append(latest, first.Add(time.Duration(i)*ft.every))
		}
		return latest, count, through
	}
	for t := ft.next(cursor); !t.IsZero() && t.Before(deadline); t = ft.next(t) {
		count++
		through = t
		latest = append(latest, t)
		if len(latest) > store.MaxMissRecords {
			latest = slices.Delete(latest, 0, 1)
		}
		if count >= maxMissScan {
			// The rest up to the deadline are skipped over uncounted: the
			// cursor goes to the last time before the deadline.
			if last := latestTimes(ft, t, deadline, 1); len(last) > 0 {
				through = last[0]
			}
			break
		}
	}
	return latest, count, through
}

// latestTimes returns up to n of the latest fire times after from and
// before end, oldest first, without walking every time in between: it
// looks in windows ending at end, doubling until one holds n times.
func latestTimes(ft *fireTimes, from, end time.Time, n int) []time.Time {
	for d := time.Second; ; d *= 2 {
		start := end.Add(-d)
		if !start.After(from) {
			start = from
		}
		var ts []time.Time
		for t := ft.next(start); !t.IsZero() && t.Before(end); t = ft.next(t) {
			ts = append(ts, t)
			if len(ts) > n {
				ts = ts[1:]
			}
		}
		if len(ts) >= n || !start.After(from) {
			return ts
		}
	}
}

// fire fires schedule sc at time at: unless its overlap policy forbids it,
// it records the fire with its new QUEUED job (or group of jobs) in one
// transaction, then hands the jobs to the queue. A fire whose jobs cannot
// be made (no worker matches a fan-out, the owner's queue is full) is
// recorded FAILED. manual fires (TriggerSchedule) leave the cursor alone.
func (s *Scheduler) fire(ctx context.Context, sc store.Schedule, at time.Time, manual bool) (store.Fire, store.Schedule, error) {
	defer s.scheds.fireLock(sc.ID)()
	// Another fire of it may have started a job since sc was read.
	if cur, err := s.store.GetSchedule(ctx, sc.Owner, sc.Name); err == nil && cur.ID == sc.ID {
		sc.LastJobID, sc.LastGroupID = cur.LastJobID, cur.LastGroupID
	}
	def := sc.Definition
	f := store.Fire{Time: at, Manual: manual}
	rec := store.FireRecord{ScheduleID: sc.ID, HistoryLimit: historyLimitOf(def)}
	active := s.activeJobs(ctx, sc)
	switch {
	case len(active) > 0 && def.GetOverlap() == batonv1.OverlapPolicy_OVERLAP_POLICY_FORBID:
		f.Outcome = batonv1.FireOutcome_FIRE_OUTCOME_SKIPPED
		f.Reason = fmt.Sprintf("job %s of an earlier fire is still %s (overlap forbid)", active[0].ID, stateName(active[0].Status.GetState()))
	case len(active) > 0 && def.GetOverlap() == batonv1.OverlapPolicy_OVERLAP_POLICY_REPLACE:
		by := "schedule/" + sc.Name
		sctx, cancel := context.WithTimeout(ctx, maxCallDuration)
		var wg sync.WaitGroup
		for _, j := range active {
			wg.Go(func() {
				if _, err := s.stopAs(sctx, j, by); err != nil {
					s.logger.WarnContext(ctx, "stopping the job an overlapping fire replaces failed", "owner", sc.Owner, "schedule", sc.Name, "job_id", j.ID, "error", err)
				}
			})
		}
		wg.Wait()
		cancel()
	}
	if f.Outcome == batonv1.FireOutcome_FIRE_OUTCOME_UNSPECIFIED {
		if err := s.fireJobs(sc, at, manual, &rec); err != nil {
			f.Outcome = batonv1.FireOutcome_FIRE_OUTCOME_FAILED
			f.Reason = clip(err.Error(), 1024)
			rec.Group, rec.Jobs = nil, nil
		} else {
			f.Outcome = batonv1.FireOutcome_FIRE_OUTCOME_STARTED
			f.JobID = rec.Jobs[0].ID
			if rec.Group != nil {
				f.GroupID = rec.Group.ID
			}
		}
	}
	rec.Fire = f
	upd, err := s.store.RecordFire(ctx, rec)
	if errors.Is(err, store.ErrTooLarge) && len(rec.Jobs) > 0 {
		// Trying again would write the same jobs and fail the same, and
		// hold the schedule at this fire for ever: the fire fails instead.
		f = store.Fire{Time: at, Manual: manual, Outcome: batonv1.FireOutcome_FIRE_OUTCOME_FAILED, Reason: errTooLargeMsg}
		rec.Fire, rec.Group, rec.Jobs = f, nil, nil
		upd, err = s.store.RecordFire(ctx, rec)
	}
	if err != nil {
		return store.Fire{}, store.Schedule{}, err
	}
	now := time.Now()
	for _, j := range rec.Jobs {
		s.q.add(j, now)
		s.opts.Metrics.JobQueued(j.Queue.Priority)
	}
	if f.Outcome == batonv1.FireOutcome_FIRE_OUTCOME_SKIPPED || f.Outcome == batonv1.FireOutcome_FIRE_OUTCOME_FAILED {
		s.logger.InfoContext(ctx, "schedule fire not started", "owner", sc.Owner, "schedule", sc.Name, "fire_time", at, "outcome", f.Outcome.String(), "reason", f.Reason)
	}
	return f, upd, nil
}

// fireJobs makes the QUEUED jobs of a fire into rec: one job, or for a
// fan-out a group with a job on each ready worker that matches. The job
// (or group) carries the fire's idempotency key.
func (s *Scheduler) fireJobs(sc store.Schedule, at time.Time, manual bool, rec *store.FireRecord) error {
	req := sc.Definition.GetJob()
	key := fireKey(sc.ID, at, manual)
	now := time.Now()
	if !req.GetAll() {
		if err := s.reg.checkNamed(req.GetWorkerId()); err != nil {
			return err
		}
		j, err := s.fireJob(sc, at, req, key, "", req.GetWorkerId(), now)
		if err != nil {
			return err
		}
		rec.Jobs = []store.Job{j}
		return nil
	}
	workers := s.reg.readyMatching(req.GetSelector())
	if len(workers) == 0 {
		return errors.New("no ready worker matches the selector of this fan-out")
	}
	gid, err := uuid.NewV7()
	if err != nil {
		return err
	}
	rec.Group = &store.Group{ID: gid.String(), Owner: sc.Owner, IdempotencyKey: key, CreatedAt: now}
	for _, w := range workers {
		j, err := s.fireJob(sc, at, req, "", rec.Group.ID, w, now)
		if err != nil {
			return err
		}
		rec.Jobs = append(rec.Jobs, j)
	}
	return nil
}

// fireJob is one QUEUED job of a fire, with its place in the queue.
func (s *Scheduler) fireJob(sc store.Schedule, at time.Time, req *batonv1.StartJobRequest, key, group, worker string, now time.Time) (store.Job, error) {
	uid, err := uuid.NewV7()
	if err != nil {
		return store.Job{}, err
	}
	// A fire's job waits for a slot as its queue_timeout says; one that
	// sets none (or 0) may wait as long as the fire may be late.
	var deadline time.Time
	switch d := req.GetQueueTimeout().AsDuration(); {
	case d > 0:
		deadline = now.Add(d)
	case d == 0:
		deadline = now.Add(catchUpOf(sc.Definition))
	}
	place, err := s.q.place(sc.Owner, worker, req.GetSelector(), priorityOf(req), deadline)
	if err != nil {
		return store.Job{}, err
	}
	return store.Job{
		ID: uid.String(), WorkerID: worker, Owner: sc.Owner, GroupID: group, IdempotencyKey: key, CreatedAt: now,
		Queue: &place, Script: req.GetScript(),
		Status: &batonv1.JobStatus{
			State:    batonv1.JobState_JOB_STATE_QUEUED,
			Spec:     specOf(req),
			Reason:   s.reg.waitReason(worker, req.GetSelector()),
			Schedule: sc.Name,
			FireTime: timestamppb.New(at),
		},
	}, nil
}

// fireKey is the idempotency key of a fire's job: the schedule's id and
// the fire time, so that a fire time replayed after a restart finds its
// job already made.
func fireKey(id string, at time.Time, manual bool) string {
	kind := "schedule"
	if manual {
		kind = "schedule-manual"
	}
	return kind + "/" + id + "/" + strconv.FormatInt(at.UnixNano(), 10)
}

// activeJobs returns the jobs of sc's latest started fire that have not
// ended.
func (s *Scheduler) activeJobs(ctx context.Context, sc store.Schedule) []store.Job {
	var ids []string
	switch {
	case sc.LastGroupID != "":
		g, err := s.store.GetGroup(ctx, sc.LastGroupID)
		if err != nil {
			return nil
		}
		ids = g.JobIDs
	case sc.LastJobID != "":
		ids = []string{sc.LastJobID}
	}
	var out []store.Job
	for _, id := range ids {
		j, err := s.store.GetJob(ctx, id)
		if err == nil && !terminal(j.Status.GetState()) {
			out = append(out, j)
		}
	}
	return out
}

// readyMatching returns the ids of the ready workers whose labels hold
// selector, by id.
func (r *registry) readyMatching(selector map[string]string) []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []string
	r.readyMatchingLocked(selector, func(m *member) bool {
		out = append(out, m.w.ID)
		return true
	})
	slices.Sort(out)
	return out
}

func catchUpOf(def *batonv1.Schedule) time.Duration {
	if d := def.GetCatchUp().AsDuration(); d > 0 {
		return d
	}
	return DefaultCatchUp
}

func historyLimitOf(def *batonv1.Schedule) int {
	if n := def.GetHistoryLimit(); n > 0 {
		return int(n)
	}
	return DefaultHistoryLimit
}

// stateName is a job state in messages ("running").
func stateName(st batonv1.JobState) string {
	switch st {
	case batonv1.JobState_JOB_STATE_QUEUED:
		return "queued"
	case batonv1.JobState_JOB_STATE_PENDING:
		return "starting"
	case batonv1.JobState_JOB_STATE_RUNNING:
		return "running"
	}
	return st.String()
}
