package scheduler

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/scheduler/store"
)

// Jobs that wait for other jobs (after) and arrays (one request, many
// indexed jobs, at most so many at once). Both are QUEUED jobs the queue
// holds (holds.go) until nothing but a slot is missing. What releases them
// is a job's end, as the store reports it: the ends are taken in order by
// one goroutine (followEnds), which reads what it needs from the store and
// tells the queue.

var errBadAfter = errors.New("bad dependency")

// endFeed passes the store's job ends to followEnds without ever blocking
// the store's writer.
type endFeed struct {
	mu    sync.Mutex
	ends  []store.JobEnd
	ready chan struct{}
}

func newEndFeed() *endFeed { return &endFeed{ready: make(chan struct{}, 1)} }

func (f *endFeed) push(e store.JobEnd) {
	f.mu.Lock()
	f.ends = append(f.ends, e)
	f.mu.Unlock()
	select {
	case f.ready <- struct{}{}:
	default:
	}
}

func (f *endFeed) take() []store.JobEnd {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.ends
	f.ends = nil
	return out
}

// jobEnded is the store's observer of job ends.
func (s *Scheduler) jobEnded(e store.JobEnd) {
	if e.Retried {
		// An attempt ended; the job waits for its next one.
		s.ends.push(e)
		return
	}
	s.opts.Metrics.JobFinished(e.State)
	if s.q.holding() {
		s.ends.push(e)
	}
}

// followEnds releases or ends the held jobs each job end concerns, until
// ctx ends.
func (s *Scheduler) followEnds(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.ends.ready:
		}
		for _, e := range s.ends.take() {
			s.afterEnd(context.WithoutCancel(ctx), e)
		}
	}
}

// afterEnd settles what waits for job e: jobs waiting for it, or for its
// group, and its array's turns.
func (s *Scheduler) afterEnd(ctx context.Context, e store.JobEnd) {
	if e.Retried {
		// The job has not ended, but its attempt gave back its array's
		// turn: the group's turns are given again below.
		s.queueRetry(ctx, e)
	} else {
		for _, w := range s.q.waitingOn(e.ID) {
			s.settleDep(ctx, w, dep{id: e.ID}, e.State, store.GroupProgress{})
		}
	}
	if e.GroupID == "" {
		return
	}
	waiting := s.q.waitingOn(e.GroupID)
	_, throttled := s.q.heldInArray(e.GroupID)
	if len(waiting) == 0 && !throttled {
		return
	}
	p, err := s.store.GroupProgress(ctx, e.GroupID)
	if err != nil {
		s.logger.ErrorContext(ctx, "reading a group's progress failed", "group_id", e.GroupID, "error", err)
		s.retryHoldsLater(e)
		return
	}
	for _, w := range waiting {
		s.settleDep(ctx, w, dep{id: e.GroupID, group: true}, 0, p)
	}
	if throttled {
		s.giveTurns(e.GroupID, p)
	}
}

// retryHoldsLater takes end e again in a while: what it concerns could
// not be read.
func (s *Scheduler) retryHoldsLater(e store.JobEnd) {
	time.AfterFunc(time.Second, func() { s.ends.push(e) })
}

// giveTurns releases as many of array's held jobs as it has free turns,
// with p its group's progress: the array's jobs not ended and not held
// for a turn have one.
func (s *Scheduler) giveTurns(array string, p store.GroupProgress) {
	held, _ := s.q.heldInArray(array)
	s.q.releaseTurns(array, p.Open-held)
}

// settleDep checks held job w's dependency d (its condition is w's) on a
// job that is in state, or a group with progress p: it releases w from d
// when d holds, and ends w when d never can.
func (s *Scheduler) settleDep(ctx context.Context, w *waiting, d dep, state batonv1.JobState, p store.GroupProgress) {
	for _, mine := range s.q.heldDeps(w) {
		if mine.id != d.id {
			continue
		}
		holds, never := mine.outcome(state, p)
		switch {
		case never:
			s.endHeld(ctx, w, "it never ran: it waited for "+mine.describe()+", which can no longer happen ("+whatEnded(mine, state, p)+")")
		case holds:
			s.q.depHolds(w, d.id)
		}
	}
}

// whatEnded says how the job or group a dependency names ended.
func whatEnded(d dep, state batonv1.JobState, p store.GroupProgress) string {
	if !d.group {
		return "job " + d.id + " ended " + store.StateWord(state)
	}
	return "group " + d.id + ": " + strconv.Itoa(p.Succeeded) + " succeeded, " + strconv.Itoa(p.Unsucceeded) + " did not, " + strconv.Itoa(p.Open) + " still open"
}

// settleHolds checks every dependency of held job w against the store:
// what ended before w was held is not reported again.
func (s *Scheduler) settleHolds(ctx context.Context, w *waiting) {
	for _, d := range s.q.heldDeps(w) {
		if d.group {
			p, err := s.store.GroupProgress(ctx, d.id)
			if err == nil {
				s.settleDep(ctx, w, d, 0, p)
				continue
			}
			if errors.Is(err, store.ErrNotFound) {
				// Pruned, with its jobs: they ended long ago.
				s.endHeld(ctx, w, "it never ran: group "+d.id+" it waited for is gone")
				return
			}
			s.logger.ErrorContext(ctx, "reading a group's progress failed", "group_id", d.id, "error", err)
			time.AfterFunc(time.Second, func() { s.settleHolds(ctx, w) })
			return
		}
		j, err := s.store.GetJob(ctx, d.id)
		switch {
		case err == nil:
			s.settleDep(ctx, w, d, j.Status.GetState(), store.GroupProgress{})
		case errors.Is(err, store.ErrNotFound):
			s.endHeld(ctx, w, "it never ran: job "+d.id+" it waited for is gone")
			return
		default:
			s.logger.ErrorContext(ctx, "reading a job waited for failed", "job_id", d.id, "error", err)
			time.AfterFunc(time.Second, func() { s.settleHolds(ctx, w) })
			return
		}
	}
}

// endHeld ends held job w, which never ran, as FAILED with reason; its
// end is in turn reported to whatever waits for it.
func (s *Scheduler) endHeld(ctx context.Context, w *waiting, reason string) {
	if !s.q.takeHeld(w) {
		return
	}
	if err := s.endQueued(ctx, w, batonv1.JobState_JOB_STATE_FAILED, "", reason); err != nil {
		s.logger.ErrorContext(ctx, "ending a job whose dependency cannot hold failed", "job_id", w.id, "error", err)
		s.q.restore(w, time.Time{})
		time.AfterFunc(time.Second, func() { s.settleHolds(ctx, w) })
		return
	}
	s.opts.Metrics.JobLeftQueue(w.place.Priority, metrics.QueueStopped, time.Since(w.queuedAt))
}

// checkAfter refuses dependencies on jobs or groups the caller cannot
// see, as not found: a dependency must not tell one user about another's
// jobs.
func (s *Scheduler) checkAfter(ctx context.Context, req *batonv1.StartJobRequest, owner string) error {
	if len(req.GetAfter()) > 0 && req.GetAll() {
		return newError(errBadAfter, "after and all cannot be combined: start the fan-out, then jobs after its group")
	}
	admin := caller(ctx).Role == identity.RoleAdmin
	for _, d := range req.GetAfter() {
		var who string
		var err error
		what := "job " + d.GetJobId()
		if d.GetGroupId() != "" {
			what = "group " + d.GetGroupId()
			var g store.Group
			g, err = s.store.GetGroup(ctx, d.GetGroupId())
			who = g.Owner
		} else {
			var j store.Job
			j, err = s.store.GetJob(ctx, d.GetJobId())
			who = j.Owner
		}
		switch {
		case errors.Is(err, store.ErrNotFound), err == nil && who != owner && !admin:
			return newError(errBadAfter, "after: %s not found", what)
		case err != nil:
			return err
		}
	}
	return nil
}

// startArray starts an array: one job per index, under a group that owns
// the key, each QUEUED with its index in BATON_ARRAY_INDEX; at most
// max_running of them are out of their hold at once.
func (s *Scheduler) startArray(ctx context.Context, req *batonv1.StartJobRequest, owner, key string) (*batonv1.StartJobResponse, error) {
	a := req.GetArray()
	if req.GetAll() {
		return nil, newError(errBadAfter, "array and all cannot be combined")
	}
	if err := s.reg.checkNamed(req.GetWorkerId()); err != nil {
		return nil, err
	}
	n := int(a.GetLast()-a.GetFirst()) + 1
	if err := s.q.roomFor(owner, n); err != nil {
		return nil, err
	}
	group, existing, err := s.newGroup(ctx, owner, key)
	if existing != nil || err != nil {
		return existing, err
	}
	results := make([]*batonv1.JobStatus, n)
	errs := make([]error, n)
	limit := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range n {
		index := a.GetFirst() + int32(i)
		limit <- struct{}{}
		wg.Go(func() {
			defer func() { <-limit }()
			one := proto.CloneOf(req)
			one.Env = maps.Clone(req.GetEnv())
			if one.Env == nil {
				one.Env = make(map[string]string)
			}
			one.Env["BATON_ARRAY_INDEX"] = strconv.Itoa(int(index))
			spec := specOf(one)
			spec.ArrayIndex = proto.Int32(index)
			spec.ArrayMaxRunning = a.GetMaxRunning()
			results[i], _, errs[i] = s.enqueueSpec(ctx, one, spec, owner, group, "", req.GetWorkerId())
		})
	}
	wg.Wait()
	if a.GetMaxRunning() > 0 {
		p, err := s.store.GroupProgress(ctx, group)
		if err != nil {
			return nil, err
		}
		s.giveTurns(group, p)
	}
	res := &batonv1.StartJobResponse{GroupId: group}
	var firstErr error
	for i, st := range results {
		if errs[i] != nil {
			firstErr = cmpErr(firstErr, errs[i])
			continue
		}
		res.Jobs = append(res.Jobs, st)
	}
	if len(res.Jobs) == 0 {
		return nil, firstErr
	}
	if firstErr != nil {
		s.logger.WarnContext(ctx, "array jobs not queued", "group_id", group, "queued", len(res.Jobs), "asked", n, "error", firstErr)
	}
	res.JobId = res.Jobs[0].GetJobId()
	// Statuses as they are now: the first turns were given after each
	// job was queued.
	for i, st := range res.Jobs {
		if j, err := s.store.GetJob(ctx, st.GetJobId()); err == nil {
			res.Jobs[i] = s.queuedStatus(j)
		}
	}
	return res, nil
}

// settleLoadedHolds settles the jobs held when the scheduler started: what
// they waited for may have ended while it was down, and arrays get their
// turns.
func (s *Scheduler) settleLoadedHolds(ctx context.Context) error {
	// A settle tried again later outlives New's context.
	ctx = context.WithoutCancel(ctx)
	for _, w := range s.q.heldJobs() {
		s.settleHolds(ctx, w)
	}
	for _, array := range s.q.arrayIDs() {
		p, err := s.store.GroupProgress(ctx, array)
		if err != nil {
			return err
		}
		s.giveTurns(array, p)
	}
	return nil
}

// queueRetry holds the next attempt of job e, which the store queued when
// e's attempt ended, until its backoff passed.
func (s *Scheduler) queueRetry(ctx context.Context, e store.JobEnd) {
	j, err := s.store.GetQueuedJob(ctx, e.ID)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrConflict):
		return // stopped, or ended, meanwhile
	case err != nil:
		s.logger.ErrorContext(ctx, "reading a job to retry failed", "job_id", e.ID, "error", err)
		s.retryHoldsLater(e)
		return
	}
	if j.Status.GetState() != batonv1.JobState_JOB_STATE_QUEUED {
		return
	}
	if s.q.retry(j, time.Now()) == nil {
		return // its next attempt is in the queue already
	}
	s.opts.Metrics.JobQueued(j.Queue.Priority)
}
