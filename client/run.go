package client

import (
	"context"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// Handlers are told how a job Run or Follow follows goes. Each may be nil.
// They are called one at a time, from the goroutine that called Run or
// Follow, which waits for them: a slow Output slows the stream, never
// drops from it.
type Handlers struct {
	// Queued is called when the job waits in the scheduler's queue for a
	// free slot (its request has a queue_timeout), with its status: its
	// id, so that Stop can cancel it, its queue_position and the reason
	// it waits. It is called again when its place or reason changes.
	Queued func(*batonv1.JobStatus)
	// Started is called once, when the job runs: its status names the
	// worker. Follow calls it only for a job it found queued.
	Started func(*batonv1.JobStatus)
	// Output is called with each piece of the job's output, stdout and
	// stderr interleaved in the order they were written; each byte comes
	// once, in order, across resumed streams. An error ends the call with
	// that error, as it is, and leaves the job running.
	Output func(*batonv1.OutputChunk) error
}

// Run starts one job and follows it to its final status, which it
// returns whatever the job's end (a job that failed is a status, not an
// error). The job is started and followed with one RunJob call; when that
// stream is cut, Run picks it up again (RunJob with the same key while
// the job has not started, StreamJobOutput from the last byte received
// once it runs) for about a minute of tries. A job whose worker went away
// ends LOST, and Run returns that status.
//
// With req.QueueTimeout set (NoQueueLimit waits without limit) a job that
// finds every matching worker full waits in the scheduler's queue:
// h.Queued is called, then h.Started once it runs. Without it, a full
// cluster is ErrResourceExhausted. A fan-out (req.All) is refused: Start
// it and Follow each job.
//
// When ctx ends, Run returns ctx's error and the job goes on: Stop it
// first to end it.
func (c *Client) Run(ctx context.Context, req *batonv1.StartJobRequest, h Handlers) (*batonv1.JobStatus, error) {
	req = c.keyed(req)
	key := req.GetIdempotencyKey()
	t := &tracker{h: h}
	unknown := false
	retry := newBackoff()
	for {
		var sent sentFlag
		callCtx := ctx
		if key != "" && t.jobID == "" {
			callCtx = sent.trace(ctx)
		}
		var (
			st       *batonv1.JobStatus
			progress bool
			sinkErr  error
		)
		stream, err := c.sched.RunJob(callCtx, connect.NewRequest(&batonv1.RunJobRequest{Job: req}))
		if err == nil {
			st, progress, err, sinkErr = t.drainRun(stream)
		}
		switch {
		case st != nil:
			return st, nil
		case sinkErr != nil:
			return nil, sinkErr
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		if err == nil {
			err = endedEarly()
		}
		if t.started || (t.jobID != "" && key == "") {
			// Once the job runs, or when no key can find it again, the
			// rest comes from StreamJobOutput.
			if !resumable(err) {
				return nil, err
			}
			return c.follow(ctx, t, &batonv1.StreamJobOutputRequest{JobId: t.jobID, Follow: true})
		}
		if progress {
			retry.reset()
		}
		unknown = unknown || lost(err, &sent)
		if key == "" || !retryStart(err, t.jobID != "", unknown) || retry.wait(ctx) != nil {
			return nil, err
		}
	}
}

// Follow follows a job's output from req.Offset (in the view req.Stream
// asks for: both streams interleaved by default) to the job's final
// status, which it returns. Streams cut as Run's can be are resumed as
// Run resumes them; a job that waits in the queue is waited for (h.Queued
// is called, then h.Started). req.Follow is ignored: Follow always
// follows. When ctx ends, Follow returns ctx's error.
func (c *Client) Follow(ctx context.Context, req *batonv1.StreamJobOutputRequest, h Handlers) (*batonv1.JobStatus, error) {
	t := &tracker{h: h, jobID: req.GetJobId(), offset: req.GetOffset()}
	return c.follow(ctx, t, &batonv1.StreamJobOutputRequest{JobId: req.GetJobId(), Stream: req.GetStream(), Follow: true})
}

// queuePoll is how often a follow asks about a job that waits in the
// queue: StreamJobOutput has nothing to give until it runs, and does not
// wait for it as RunJob does.
const queuePoll = time.Second

// follow streams t's job from t.offset until its final status.
func (c *Client) follow(ctx context.Context, t *tracker, req *batonv1.StreamJobOutputRequest) (*batonv1.JobStatus, error) {
	retry := newBackoff()
	for {
		if t.waiting {
			if st, err := c.awaitStart(ctx, t); st != nil || err != nil {
				return st, err
			}
		}
		req.Offset = t.offset
		var (
			st       *batonv1.JobStatus
			progress bool
			sinkErr  error
		)
		stream, err := c.sched.StreamJobOutput(ctx, connect.NewRequest(req))
		if err == nil {
			st, progress, err, sinkErr = t.drainOutput(stream)
		}
		switch {
		case st != nil:
			return st, nil
		case sinkErr != nil:
			return nil, sinkErr
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		if err == nil {
			err = endedEarly()
		}
		if progress {
			retry.reset()
		}
		// Where no stream reaches the job, its record says what it waits
		// for, or what became of it.
		if q, qerr := c.Query(ctx, t.jobID); qerr == nil {
			st := q.GetStatus()
			switch {
			case notYetRunning(st) && !t.started:
				t.waitingAs(st)
				continue
			case q.GetDone() && (st.GetState() == batonv1.JobState_JOB_STATE_LOST || st.GetStartedAt() == nil):
				// A worker that went away leaves its jobs LOST, and a job
				// stopped or timed out in the queue never ran: no stream
				// will ever bring their end.
				return st, nil
			}
		}
		if !resumable(err) || retry.wait(ctx) != nil {
			return nil, err
		}
	}
}

// awaitStart waits for t's job to leave the queue. It returns the job's
// final status if it ended there, without running.
func (c *Client) awaitStart(ctx context.Context, t *tracker) (*batonv1.JobStatus, error) {
	retry := newBackoff()
	for {
		q, err := c.Query(ctx, t.jobID)
		if err != nil {
			if !resumable(err) || retry.wait(ctx) != nil {
				return nil, err
			}
			continue
		}
		retry.reset()
		st := q.GetStatus()
		switch {
		case notYetRunning(st):
			t.waitingAs(st)
		case st.GetStartedAt() == nil && q.GetDone():
			return st, nil
		default:
			t.startedAs(st)
			return nil, nil
		}
		if err := sleep(ctx, queuePoll); err != nil {
			return nil, err
		}
	}
}

// notYetRunning reports whether a job waits in the queue, or is being
// started on its worker, which may not know it yet.
func notYetRunning(st *batonv1.JobStatus) bool {
	switch st.GetState() {
	case batonv1.JobState_JOB_STATE_QUEUED, batonv1.JobState_JOB_STATE_PENDING:
		return true
	}
	return false
}

// endedEarly is a stream that ended without an error and without the
// job's final status.
func endedEarly() error {
	return newError(connect.CodeUnavailable, "the output stream ended before the job's status")
}
