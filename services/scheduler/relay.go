package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"syscall"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// errStreamWorkerDown is the cause of a relay cut because its worker went
// DOWN, LEFT or RESTARTING.
var (
	errStreamWorkerDown  = errors.New("worker went down")
	errSchedulerStopping = errors.New("scheduler shutting down")
)

// StreamJobOutput relays a job's output from its worker. The relay ends
// with Unavailable when the worker is marked DOWN (or leaves, or restarts)
// meanwhile, or its stream fails; a client that goes away cancels the
// worker's stream.
func (h *handler) StreamJobOutput(ctx context.Context, req *connect.Request[batonv1.StreamJobOutputRequest], stream *connect.ServerStream[batonv1.StreamJobOutputResponse]) error {
	j, err := h.s.jobFor(ctx, req.Msg.GetJobId(), "")
	if err != nil {
		return mapError(err)
	}
	msg := &batonv1.StreamJobOutputResponse{}
	send := func(chunk *batonv1.OutputChunk, st *batonv1.JobStatus) error {
		if chunk != nil {
			msg.Event = &batonv1.StreamJobOutputResponse_Chunk{Chunk: chunk}
		} else {
			msg.Event = &batonv1.StreamJobOutputResponse_Status{Status: st}
		}
		return stream.Send(msg)
	}
	if n := req.Msg.GetAttempt(); n > 0 {
		return h.s.followAttempt(ctx, j, n, req.Msg, send)
	}
	return h.s.followFrom(ctx, j, req.Msg.GetOffset(), req.Msg.GetFollow(), req.Msg.GetStream(), send)
}

// follow relays job j's output, as req asks for it, from its worker to
// send: chunks, then the job's status. A job retried while it is followed
// is followed on into its next attempt (see followFrom). Errors come
// mapped to Connect codes.
func (s *Scheduler) follow(ctx context.Context, j store.Job, req *batonv1.WorkerServiceStreamJobOutputRequest, send func(*batonv1.OutputChunk, *batonv1.JobStatus) error) error {
	return s.followFrom(ctx, j, req.GetOffset(), req.GetFollow(), req.GetStream(), send)
}

// followRun relays the output of job j's current attempt from its worker
// to send, its offsets moved on by base (the bytes of the attempts before
// it). With req.Follow, the end of an attempt that the job's retry policy
// runs again is not sent: followRun returns errRetried instead.
func (s *Scheduler) followRun(ctx context.Context, j store.Job, req *batonv1.WorkerServiceStreamJobOutputRequest, base int64, send func(*batonv1.OutputChunk, *batonv1.JobStatus) error) error {
	t, ok := s.reg.target(j.WorkerID)
	if !ok {
		return mapError(errWorkerNotFound(j.WorkerID))
	}
	if !active(t.state) {
		return mapError(newError(errWorkerUnavailable, "worker %q is %s; QueryJob reports the job's last known status", t.id, stateWord(t.state)))
	}
	ctx, cancel := s.relayContext(ctx, t)
	defer cancel(nil)
	ws, err := t.client.StreamJobOutput(ctx, connect.NewRequest(req))
	if err != nil {
		return relayError(ctx, t.id, err)
	}
	defer ws.Close()
	return s.relay(ctx, j, outputEvents(ws), ws.Err, shifted(base, req.GetFollow(), send))
}

// shifted moves the offsets of the chunks passed to send on by base.
func shifted(base int64, follow bool, send func(*batonv1.OutputChunk, *batonv1.JobStatus) error) func(*batonv1.OutputChunk, *batonv1.JobStatus) error {
	if base == 0 {
		return send
	}
	return func(chunk *batonv1.OutputChunk, st *batonv1.JobStatus) error {
		if chunk != nil {
			chunk.Offset += base
		}
		return send(chunk, st)
	}
}

// relayContext is ctx, cut when t goes DOWN, LEFT or RESTARTING (cause
// errStreamWorkerDown) or the scheduler shuts down (errSchedulerStopping).
// A client that goes away cancels it too, and with it the worker's stream.
func (s *Scheduler) relayContext(ctx context.Context, t target) (context.Context, context.CancelCauseFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	stopAfter := context.AfterFunc(s.stopping, func() { cancel(errSchedulerStopping) })
	go func() {
		select {
		case <-t.gone:
			cancel(errStreamWorkerDown)
		case <-ctx.Done():
		}
	}()
	return ctx, func(cause error) {
		stopAfter()
		cancel(cause)
	}
}

// relay forwards a worker's output events for job j to send. The final
// status is recorded before it is sent (the next heartbeat would bring it
// too, but a ListJobs right after the stream must agree) and reaches the
// client as the caller may see it.
func (s *Scheduler) relay(ctx context.Context, j store.Job, events iter.Seq2[*batonv1.OutputChunk, *batonv1.JobStatus], streamErr func() error, send func(*batonv1.OutputChunk, *batonv1.JobStatus) error) error {
	for chunk, st := range events {
		if st != nil {
			st = withIdentity(j, st)
			if err := s.store.ApplyWorkerReport(context.WithoutCancel(ctx), j.WorkerID, runID(j), st); err != nil {
				s.logger.ErrorContext(ctx, "recording a streamed final status failed", "job_id", j.ID, "error", err)
			}
			if terminal(st.GetState()) {
				s.reg.ended(j.WorkerID, runID(j))
				if s.retried(ctx, j) {
					return errRetried
				}
			}
			st = redacted(caller(ctx), st)
		}
		if err := send(chunk, st); err != nil {
			// The client went away; the caller's cancel ends the worker's
			// stream.
			return err
		}
		s.opts.Metrics.OutputRelayed(len(chunk.GetData()))
	}
	if err := streamErr(); err != nil {
		return relayError(ctx, j.WorkerID, err)
	}
	if cause := context.Cause(ctx); errors.Is(cause, errStreamWorkerDown) || errors.Is(cause, errSchedulerStopping) {
		return relayError(ctx, j.WorkerID, nil)
	}
	return nil
}

// outputEvents are the chunks and the final status of a worker's output
// stream: a StreamJobOutput, or a RunJob after its first message.
func outputEvents[T any, M interface {
	*T
	GetChunk() *batonv1.OutputChunk
	GetStatus() *batonv1.JobStatus
}](ws *connect.ServerStreamForClient[T]) iter.Seq2[*batonv1.OutputChunk, *batonv1.JobStatus] {
	return func(yield func(*batonv1.OutputChunk, *batonv1.JobStatus) bool) {
		for ws.Receive() {
			msg := M(ws.Msg())
			if chunk := msg.GetChunk(); chunk != nil && !yield(chunk, nil) {
				return
			}
			if st := msg.GetStatus(); st != nil && !yield(nil, st) {
				return
			}
		}
	}
}

// relayError maps the end of a failed relay.
func relayError(ctx context.Context, worker string, err error) error {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errStreamWorkerDown):
		return connect.NewError(connect.CodeUnavailable, errors.New("the job's worker went down, left or is restarting; QueryJob reports the job's last known status"))
	case errors.Is(cause, errSchedulerStopping):
		return connect.NewError(connect.CodeUnavailable, errors.New("the scheduler is shutting down; resume the stream from the last offset"))
	case cause != nil:
		// The client cancelled or its deadline passed.
		return mapError(cause)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
		// The worker's stream broke mid-way: its process went away (a
		// restart leaves its jobs running), and the follow resumes.
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("the stream from worker %q broke; resume from the last offset", worker))
	}
	return mapError(&workerError{worker: worker, err: err})
}
