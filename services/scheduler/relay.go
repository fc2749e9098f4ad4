package scheduler

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// errStreamWorkerDown is the cause of a relay cut because its worker went
// DOWN or LEFT.
var (
	errStreamWorkerDown  = errors.New("worker went down")
	errSchedulerStopping = errors.New("scheduler shutting down")
)

// StreamJobOutput relays a job's output from its worker. The relay ends
// with Unavailable when the worker is marked DOWN (or leaves) meanwhile, or
// its stream fails; a client that goes away cancels the worker's stream.
func (h *handler) StreamJobOutput(ctx context.Context, req *connect.Request[batonv1.StreamJobOutputRequest], stream *connect.ServerStream[batonv1.StreamJobOutputResponse]) error {
	s := h.s
	j, err := s.jobFor(ctx, req.Msg.GetJobId(), "")
	if err != nil {
		return mapError(err)
	}
	t, ok := s.reg.target(j.WorkerID)
	if !ok {
		return mapError(errWorkerNotFound(j.WorkerID))
	}
	if !active(t.state) {
		return mapError(newError(errWorkerUnavailable, "worker %q is %s; QueryJob reports the job's last known status", t.id, stateWord(t.state)))
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(s.stopping, func() { cancel(errSchedulerStopping) })()
	go func() {
		select {
		case <-t.gone:
			cancel(errStreamWorkerDown)
		case <-ctx.Done():
		}
	}()
	ws, err := t.client.StreamJobOutput(ctx, connect.NewRequest(&batonv1.WorkerServiceStreamJobOutputRequest{
		JobId:  req.Msg.GetJobId(),
		Offset: req.Msg.GetOffset(),
		Follow: req.Msg.GetFollow(),
		Stream: req.Msg.GetStream(),
	}))
	if err != nil {
		return h.relayError(ctx, t.id, err)
	}
	defer ws.Close()
	for ws.Receive() {
		msg := ws.Msg()
		out := &batonv1.StreamJobOutputResponse{}
		relayed := 0
		switch ev := msg.GetEvent().(type) {
		case *batonv1.WorkerServiceStreamJobOutputResponse_Chunk:
			out.Event = &batonv1.StreamJobOutputResponse_Chunk{Chunk: ev.Chunk}
			relayed = len(ev.Chunk.GetData())
		case *batonv1.WorkerServiceStreamJobOutputResponse_Status:
			st := withIdentity(j, ev.Status)
			// The final status is news the next heartbeat would bring: record
			// it now, so that a ListJobs right after the stream agrees.
			if err := s.store.ApplyWorkerReport(context.WithoutCancel(ctx), j.WorkerID, j.ID, st); err != nil {
				s.logger.ErrorContext(ctx, "recording a streamed final status failed", "job_id", j.ID, "error", err)
			}
			out.Event = &batonv1.StreamJobOutputResponse_Status{Status: redacted(caller(ctx), st)}
		default:
			continue
		}
		if err := stream.Send(out); err != nil {
			// The client went away; the deferred cancel ends the worker's
			// stream.
			return err
		}
		s.opts.Metrics.OutputRelayed(relayed)
	}
	if err := ws.Err(); err != nil {
		return h.relayError(ctx, t.id, err)
	}
	if cause := context.Cause(ctx); errors.Is(cause, errStreamWorkerDown) || errors.Is(cause, errSchedulerStopping) {
		return h.relayError(ctx, t.id, nil)
	}
	return nil
}

// relayError maps the end of a failed relay.
func (h *handler) relayError(ctx context.Context, worker string, err error) error {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errStreamWorkerDown):
		return connect.NewError(connect.CodeUnavailable, errors.New("the job's worker went down; QueryJob reports the job's last known status"))
	case errors.Is(cause, errSchedulerStopping):
		return connect.NewError(connect.CodeUnavailable, errors.New("the scheduler is shutting down; resume the stream from the last offset"))
	case cause != nil:
		// The client cancelled or its deadline passed.
		return mapError(cause)
	}
	return mapError(&workerError{worker: worker, err: err})
}
