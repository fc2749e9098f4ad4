package worker

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/jobrun"
)

// Registration timing. The scheduler decides the heartbeat interval; these
// bound how the worker retries until it hears one.
const (
	minRetry        = 500 * time.Millisecond
	maxRetry        = 30 * time.Second
	defaultInterval = 5 * time.Second
	callTimeout     = 10 * time.Second
	coalesceChanges = 200 * time.Millisecond
	// maxReportedJobs bounds the jobs one registration lists, and
	// maxChangesPerBeat the changes one heartbeat carries, so that neither
	// message nears the scheduler's message size limit whatever the number
	// of jobs. The scheduler asks after any running job a registration
	// leaves out, and a heartbeat with more to say is followed at once.
	maxReportedJobs   = 5000
	maxChangesPerBeat = 500
)

// Run keeps the worker registered with the scheduler until ctx ends, then
// deregisters it (as restarting after LeaveForRestart). Without a
// scheduler it just waits for ctx. Registration
// failures are retried with jittered exponential backoff; a heartbeat
// answered NotFound (the scheduler forgot us) leads to a new registration.
func (w *Worker) Run(ctx context.Context) error {
	if w.opts.Scheduler == nil {
		<-ctx.Done()
		return nil
	}
	retry := minRetry
	for {
		id, interval, err := w.register(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			w.logger.WarnContext(ctx, "registration failed; retrying", "code", connect.CodeOf(err).String(), "error", err, "retry_in", retry)
			if !sleep(ctx, jitter(retry)) {
				return nil
			}
			retry = min(retry*2, maxRetry)
			continue
		}
		retry = minRetry
		w.logger.InfoContext(ctx, "registered with the scheduler", "worker_id", id, "heartbeat_interval", interval)
		w.heartbeat(ctx, id, interval)
		if ctx.Err() != nil {
			w.leave(id)
			return nil
		}
	}
}

// register introduces the worker with the jobs it runs. Ended jobs are
// not listed: the scheduler knows the ends it acknowledged, the changes not
// yet acknowledged follow in the next heartbeats, and the scheduler asks
// after any job it holds as running that the list leaves out. However many
// jobs the worker keeps, the registration stays small.
func (w *Worker) register(ctx context.Context) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	req := &batonv1.RegisterWorkerRequest{
		Name:     w.opts.Name,
		Address:  w.opts.Address,
		Labels:   w.opts.Labels,
		Capacity: int32(w.opts.Runner.Capacity),
	}
	live, _, err := w.runner.Page(ctx, jobrun.Query{Live: true, Limit: maxReportedJobs})
	if err != nil {
		return "", 0, err
	}
	for _, st := range live {
		req.Jobs = append(req.Jobs, reportOf(st, w.opts.Name))
	}
	res, err := w.opts.Scheduler.RegisterWorker(ctx, connect.NewRequest(req))
	if err != nil {
		return "", 0, err
	}
	w.changes.jobsWaiting.Store(res.Msg.GetJobsWaiting())
	return res.Msg.GetWorkerId(), intervalOf(res.Msg.GetHeartbeatInterval().AsDuration()), nil
}

// reportOf is what the worker tells the scheduler about a job: its state,
// not its spec, owner or group, which are the scheduler's own record.
func reportOf(st jobrun.Status, workerID string) *batonv1.JobStatus {
	r := statusToProto(st, workerID)
	r.Spec, r.Owner, r.GroupId = nil, "", ""
	return r
}

// heartbeat reports at the scheduler's interval until ctx ends or the
// scheduler no longer knows the worker.
func (w *Worker) heartbeat(ctx context.Context, id string, interval time.Duration) {
	timer := time.NewTimer(interval)
	defer timer.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-w.changes.notify():
			// Report job changes promptly instead of at the next tick, but
			// at most one heartbeat per coalesceChanges, so that a burst
			// of changes gathers into one; except a slot freed on a worker
			// the scheduler takes for full: a queued job may wait for it.
			if !w.gather(ctx, last) {
				return
			}
		}
		last = time.Now()
		next, more, err := w.beat(ctx, id)
		for more && err == nil && ctx.Err() == nil {
			next, more, err = w.beat(ctx, id)
		}
		if connect.CodeOf(err) == connect.CodeNotFound {
			w.logger.WarnContext(ctx, "scheduler does not know this worker; registering again", "worker_id", id)
			return
		}
		if err != nil && ctx.Err() == nil {
			w.logger.WarnContext(ctx, "heartbeat failed", "worker_id", id, "code", connect.CodeOf(err).String(), "error", err)
		}
		if next > 0 {
			interval = next
		}
		timer.Reset(interval)
	}
}

// gather waits until changes are due: coalesceChanges after the last
// heartbeat, or at once for a job's end while jobs wait in the
// scheduler's queue (the end frees a slot one of them may take). It
// reports false when ctx ends first.
func (w *Worker) gather(ctx context.Context, last time.Time) bool {
	t := time.NewTimer(coalesceChanges - time.Since(last))
	defer t.Stop()
	for !w.changes.jobsWaiting.Load() || w.changes.ends() == 0 {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-w.changes.notify():
		}
	}
	return true
}

// beat sends one heartbeat with job changes not yet acknowledged, at most
// maxChangesPerBeat of them; more reports that others are still waiting.
func (w *Worker) beat(ctx context.Context, id string) (interval time.Duration, more bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	pending := w.changes.snapshot()
	if len(pending) > maxChangesPerBeat {
		pending, more = pending[:maxChangesPerBeat], true
	}
	req := &batonv1.HeartbeatRequest{
		WorkerId:    id,
		RunningJobs: int32(w.runner.Running()),
		Changes:     make([]*batonv1.JobStatus, 0, len(pending)),
	}
	for _, st := range pending {
		req.Changes = append(req.Changes, reportOf(st.status, w.opts.Name))
	}
	res, err := w.opts.Scheduler.Heartbeat(ctx, connect.NewRequest(req))
	w.opts.Metrics.HeartbeatSent(err)
	if err != nil {
		return 0, false, err
	}
	w.changes.ack(pending)
	w.changes.jobsWaiting.Store(res.Msg.GetJobsWaiting())
	return intervalOf(res.Msg.GetHeartbeatInterval().AsDuration()), more, nil
}

// LeaveForRestart makes the deregistration Run sends when its context ends
// say the worker is restarting: its jobs keep running and it comes back
// soon, so the scheduler marks it RESTARTING rather than LEFT and keeps its
// jobs as they are for its restart grace. Call it before ending Run's
// context; it cannot be undone. It is safe for concurrent use.
func (w *Worker) LeaveForRestart() {
	w.changes.restarting.Store(true)
}

// leave reports the last job changes (the jobs Close stopped) and tells the
// scheduler the worker is leaving, or restarting. It uses a fresh context
// since the worker's own is already done.
func (w *Worker) leave(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for more := true; more; {
		var err error
		if _, more, err = w.beat(ctx, id); err != nil {
			w.logger.Warn("final heartbeat failed", "worker_id", id, "code", connect.CodeOf(err).String(), "error", err)
			break
		}
	}
	restarting := w.changes.restarting.Load()
	_, err := w.opts.Scheduler.DeregisterWorker(ctx, connect.NewRequest(&batonv1.DeregisterWorkerRequest{WorkerId: id, Restarting: restarting}))
	if err != nil {
		w.logger.Warn("deregistration failed", "worker_id", id, "restarting", restarting, "code", connect.CodeOf(err).String(), "error", err)
		return
	}
	w.logger.Info("deregistered from the scheduler", "worker_id", id, "restarting", restarting)
}

func intervalOf(d time.Duration) time.Duration {
	if d <= 0 {
		return defaultInterval
	}
	return d
}

// jitter spreads retries of many workers over [d/2, d).
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until ctx ends; it reports whether the full time passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// changeSet collects what the worker has yet to tell the scheduler: job
// status changes until a heartbeat delivers them (a job changed again after
// a snapshot stays pending), and whether its deregistration is for a
// restart. It is safe for concurrent use.
type changeSet struct {
	mu      sync.Mutex
	seq     uint64
	pending map[string]change
	wake    chan struct{}
	// restarting is set by LeaveForRestart and sent by leave.
	restarting atomic.Bool
	// jobsWaiting is the scheduler's last word on whether jobs wait in its
	// queue.
	jobsWaiting atomic.Bool
}

type change struct {
	seq    uint64
	status jobrun.Status
}

func newChangeSet() *changeSet {
	return &changeSet{pending: make(map[string]change), wake: make(chan struct{}, 1)}
}

// add records a change; it never blocks (jobrun calls it from job goroutines).
func (c *changeSet) add(st jobrun.Status) {
	c.mu.Lock()
	c.seq++
	c.pending[st.ID] = change{seq: c.seq, status: st}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// ends counts the pending changes that are a job's end.
func (c *changeSet) ends() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, ch := range c.pending {
		if ch.status.State.Terminal() {
			n++
		}
	}
	return n
}

// notify fires after changes were added.
func (c *changeSet) notify() <-chan struct{} { return c.wake }

func (c *changeSet) snapshot() []change {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]change, 0, len(c.pending))
	for _, ch := range c.pending {
		out = append(out, ch)
	}
	return out
}

// ack drops the delivered changes that were not superseded meanwhile.
func (c *changeSet) ack(delivered []change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range delivered {
		if cur, ok := c.pending[d.status.ID]; ok && cur.seq == d.seq {
			delete(c.pending, d.status.ID)
		}
	}
}
