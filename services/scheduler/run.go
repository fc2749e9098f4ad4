package scheduler

import (
	"context"
	"errors"
	"sync"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// The path of a RunJob: what StartJob does for one job (a used key answers
// with its job; placement; the PENDING record; the start on the worker; the
// record of its answer), but the worker is asked with its own RunJob, so
// that one stream on each hop carries the start, the output and the final
// status.

// errStartTimedOut cuts a worker's RunJob stream that did not say within
// WorkerCallTimeout whether it started the job.
var errStartTimedOut = errors.New("the worker did not answer the start in time")

// RunJob starts a job and relays its run, as StartJob and a following
// StreamJobOutput would.
func (h *handler) RunJob(ctx context.Context, req *connect.Request[batonv1.RunJobRequest], stream *connect.ServerStream[batonv1.RunJobResponse]) error {
	err := h.s.runJob(ctx, req.Msg, ownerName(caller(ctx)), stream.Send)
	if ce, ok := err.(*connect.Error); ok {
		// Mapped already, by the relay of the job's output.
		return ce
	}
	return mapError(err)
}

// runSend sends one message of a run to the client.
type runSend = func(*batonv1.RunJobResponse) error

// startedMsg is the first message of a run: the job's status as the caller
// may see it.
func startedMsg(ctx context.Context, st *batonv1.JobStatus) *batonv1.RunJobResponse {
	return &batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Started{Started: redacted(caller(ctx), st)}}
}

func (s *Scheduler) runJob(ctx context.Context, req *batonv1.RunJobRequest, owner string, send runSend) error {
	start := req.GetJob()
	if start.GetArray() != nil {
		return newError(errBadAfter, "job.array is not allowed: RunJob follows one job; start an array with StartJob")
	}
	if err := checkScript(start); err != nil {
		return err
	}
	if err := checkKey(start); err != nil {
		return err
	}
	if err := s.checkPriority(ctx, start); err != nil {
		return err
	}
	key := start.GetIdempotencyKey()
	if key != "" {
		res, err := s.byKey(ctx, owner, key)
		if err != nil {
			return err
		}
		if res != nil {
			return s.runExisting(ctx, res, req.GetStream(), send)
		}
	}
	if err := s.checkAfter(ctx, start, owner); err != nil {
		return err
	}
	if len(start.GetAfter()) > 0 || waits(start) && !s.q.empty() {
		return s.runQueued(ctx, req, owner, send)
	}
	slots, err := s.reg.place(start)
	if err != nil {
		if waits(start) && queueable(err) {
			return s.runQueued(ctx, req, owner, send)
		}
		return err
	}
	defer releaseAll(slots)
	slot := slots[0]
	t := slot.target
	job, forget, err := s.recordPending(ctx, t, start, owner, "", key)
	if errors.Is(err, store.ErrConflict) && key != "" {
		// A concurrent call with the same key won: follow its job, without
		// holding a slot for the whole of it.
		releaseAll(slots)
		j, gerr := s.store.GetJobByIdempotencyKey(ctx, owner, key)
		if gerr != nil {
			return gerr
		}
		res, gerr := s.existing(ctx, j)
		if gerr != nil {
			return gerr
		}
		return s.runExisting(ctx, res, req.GetStream(), send)
	}
	if err != nil {
		return err
	}
	defer forget()

	rctx, cancel := s.relayContext(ctx, t)
	defer cancel(nil)
	ws, st, err := s.startRun(rctx, cancel, t, &batonv1.WorkerServiceRunJobRequest{
		Job:    workerStartRequest(start, job.ID, owner, ""),
		Stream: req.GetStream(),
	})
	if ws != nil {
		defer ws.Close()
	}
	if err != nil {
		// The stream may have broken after the worker started the job: it
		// is asked, as for a StartJob, and a started job is followed with
		// StreamJobOutput from byte 0.
		if st, err = s.settleStart(ctx, t, job, err); err != nil {
			if waits(start) && queueable(err) {
				// The worker was full after all: the record is gone, and
				// the job waits its turn instead.
				forget()
				releaseAll(slots)
				return s.runQueued(ctx, req, owner, send)
			}
			return err
		}
		ws = nil
	}
	st = s.started(ctx, slot, job, st)
	forget()
	if err := send(startedMsg(ctx, st)); err != nil {
		return err
	}
	if ws == nil {
		return s.follow(ctx, job, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: runID(job), Follow: true, Stream: req.GetStream()}, relayTo(send))
	}
	err = s.relay(rctx, job, outputEvents(ws), ws.Err, relayTo(send))
	return s.followRetries(ctx, job.ID, runID(job), err, 0, req.GetStream(), relayTo(send))
}

// runQueued queues the run's job, tells the caller so, and once the job
// runs follows it as any other run; a job that ends without running (a
// stop, its queue timeout, a refusal) ends the run with its status. A
// caller that hangs up leaves the job queued: it runs when its turn comes.
func (s *Scheduler) runQueued(ctx context.Context, req *batonv1.RunJobRequest, owner string, send runSend) error {
	start := req.GetJob()
	st, w, err := s.enqueue(ctx, start, owner, "", start.GetIdempotencyKey(), start.GetWorkerId())
	if errors.Is(err, store.ErrConflict) && start.GetIdempotencyKey() != "" {
		res, gerr := s.byKey(ctx, owner, start.GetIdempotencyKey())
		if gerr != nil || res == nil {
			return cmpErr(gerr, err)
		}
		return s.runExisting(ctx, res, req.GetStream(), send)
	}
	if err != nil {
		return err
	}
	if err := send(&batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Queued{Queued: redacted(caller(ctx), st)}}); err != nil {
		return err
	}
	return s.awaitQueued(ctx, w.id, w.done, req.GetStream(), send)
}

// awaitQueued waits for a queued job to leave the queue, then follows it.
func (s *Scheduler) awaitQueued(ctx context.Context, id string, done <-chan struct{}, stream batonv1.OutputStream, send runSend) error {
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stopping.Done():
		return newError(errWorkerUnavailable, "the scheduler is shutting down; job %s stays queued", id)
	}
	j, err := s.store.GetJob(ctx, id)
	if err != nil {
		return err
	}
	if terminal(j.Status.GetState()) && j.Status.GetStartedAt() == nil {
		st := withIdentity(j, j.Status)
		return send(&batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Status{Status: redacted(caller(ctx), st)}})
	}
	if err := send(startedMsg(ctx, withIdentity(j, j.Status))); err != nil {
		return err
	}
	return s.follow(ctx, j, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: runID(j), Follow: true, Stream: stream}, relayTo(send))
}

// startRun asks worker t to run a job and reads the started status its
// RunJob sends first. It returns the stream to relay the rest of, or nil
// when the job is to be followed with StreamJobOutput: the worker predates
// RunJob (it was started with StartJob instead), or it answered just as
// its time ran out and the stream was cut. An error means the start's
// outcome is for settleStart to find out.
//
// The worker must say within WorkerCallTimeout whether it started the job,
// as it must answer a StartJob; the run itself has no bound.
func (s *Scheduler) startRun(ctx context.Context, cancel context.CancelCauseFunc, t target, req *batonv1.WorkerServiceRunJobRequest) (*connect.ServerStreamForClient[batonv1.WorkerServiceRunJobResponse], *batonv1.JobStatus, error) {
	var (
		mu       sync.Mutex
		answered bool
	)
	timer := time.AfterFunc(s.opts.WorkerCallTimeout, func() {
		mu.Lock()
		defer mu.Unlock()
		if !answered {
			cancel(errStartTimedOut)
		}
	})
	defer timer.Stop()
	ws, err := t.client.RunJob(ctx, connect.NewRequest(req))
	var st *batonv1.JobStatus
	if err == nil {
		st, err = firstStatus(ws)
	}
	mu.Lock()
	answered = true
	timedOut := errors.Is(context.Cause(ctx), errStartTimedOut)
	mu.Unlock()
	switch {
	case connect.CodeOf(err) == connect.CodeUnimplemented:
		// A worker of an older version, in a rolling upgrade.
		closeStream(ws)
		cctx, done := context.WithTimeout(context.WithoutCancel(ctx), s.opts.WorkerCallTimeout)
		defer done()
		res, err := t.client.StartJob(cctx, connect.NewRequest(req.GetJob()))
		if err != nil {
			return nil, nil, err
		}
		return nil, res.Msg.GetStatus(), nil
	case err != nil:
		closeStream(ws)
		return nil, nil, err
	case timedOut:
		closeStream(ws)
		return nil, st, nil
	}
	return ws, st, nil
}

func closeStream(ws *connect.ServerStreamForClient[batonv1.WorkerServiceRunJobResponse]) {
	if ws != nil {
		_ = ws.Close()
	}
}

// runExisting follows the job a used idempotency key started. A job whose
// start is still in flight (a concurrent call with the key is starting it)
// is waited for, up to WorkerCallTimeout: its worker does not know it yet.
func (s *Scheduler) runExisting(ctx context.Context, res *batonv1.StartJobResponse, stream batonv1.OutputStream, send runSend) error {
	if res.GetGroupId() != "" {
		return newError(errKeyOfGroup, "the idempotency key started fan-out group %s; follow its jobs with StreamJobOutput", res.GetGroupId())
	}
	j, err := s.store.GetJob(ctx, res.GetJobId())
	if err != nil {
		return err
	}
	if j.Status.GetState() == batonv1.JobState_JOB_STATE_PENDING {
		if j, err = s.awaitStart(ctx, j.ID); err != nil {
			return err
		}
	}
	if j.Status.GetState() == batonv1.JobState_JOB_STATE_QUEUED {
		if err := send(&batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Queued{Queued: redacted(caller(ctx), s.queuedStatus(j))}}); err != nil {
			return err
		}
		return s.awaitQueued(ctx, j.ID, s.q.leaves(j.ID), stream, send)
	}
	if err := send(startedMsg(ctx, j.Status)); err != nil {
		return err
	}
	return s.follow(ctx, j, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: runID(j), Follow: true, Stream: stream}, relayTo(send))
}

// awaitStart waits for job id to leave PENDING, the state of a start in
// flight, for as long as a worker may take to answer it.
func (s *Scheduler) awaitStart(ctx context.Context, id string) (store.Job, error) {
	deadline := time.Now().Add(s.opts.WorkerCallTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return store.Job{}, ctx.Err()
		case <-tick.C:
		}
		j, err := s.store.GetJob(ctx, id)
		if err != nil {
			return store.Job{}, err
		}
		if j.Status.GetState() != batonv1.JobState_JOB_STATE_PENDING {
			return j, nil
		}
		if time.Now().After(deadline) {
			return store.Job{}, newError(errWorkerUnavailable, "job %s is still being started; retry", id)
		}
	}
}

// relayTo adapts send to what relay and follow call. The message is reused:
// Send marshals it before returning.
func relayTo(send runSend) func(*batonv1.OutputChunk, *batonv1.JobStatus) error {
	msg := &batonv1.RunJobResponse{}
	return func(chunk *batonv1.OutputChunk, st *batonv1.JobStatus) error {
		if chunk != nil {
			msg.Event = &batonv1.RunJobResponse_Chunk{Chunk: chunk}
		} else {
			msg.Event = &batonv1.RunJobResponse_Status{Status: st}
		}
		return send(msg)
	}
}

// firstStatus reads the started status a worker's RunJob sends first.
func firstStatus(ws *connect.ServerStreamForClient[batonv1.WorkerServiceRunJobResponse]) (*batonv1.JobStatus, error) {
	if !ws.Receive() {
		if err := ws.Err(); err != nil {
			return nil, err
		}
		return nil, errors.New("the worker ended the run without starting the job")
	}
	st := ws.Msg().GetStarted()
	if st == nil {
		return nil, errors.New("the worker sent something else before the job's start")
	}
	return st, nil
}
