package interceptors

import (
	"context"

	"connectrpc.com/connect"
)

// Detach runs the named unary procedures on a context that the caller's
// hang-up does not end. A stop is the case in point: `baton run` detaching
// on a second Ctrl-C closes its connection right after the request is
// written, and Connect refuses to call a handler whose context has already
// ended, so without this the stop would be dropped before the handler saw
// it. The call keeps the caller's values (identity, headers) and its
// deadline, if it had one; the Deadline interceptor caps it either way.
type Detach struct {
	procedures map[string]bool
}

// NewDetach returns an interceptor that detaches the given procedures
// (full names, e.g. "/baton.v1.SchedulerService/StopJob").
func NewDetach(procedures ...string) *Detach {
	d := &Detach{procedures: make(map[string]bool, len(procedures))}
	for _, p := range procedures {
		d.procedures[p] = true
	}
	return d
}

// WrapUnary implements connect.Interceptor.
func (d *Detach) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if !d.procedures[req.Spec().Procedure] {
			return next(ctx, req)
		}
		detached := context.WithoutCancel(ctx)
		if dl, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			detached, cancel = context.WithDeadline(detached, dl)
			defer cancel()
		}
		return next(detached, req)
	}
}

// WrapStreamingClient implements connect.Interceptor.
func (d *Detach) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (d *Detach) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
