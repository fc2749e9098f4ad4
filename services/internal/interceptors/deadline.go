package interceptors

import (
	"context"
	"time"

	"connectrpc.com/connect"
)

// Deadline gives every unary call a deadline no later than max from its
// start, whether the client sent none or one far in the future. Streams are
// exempt: following a job's output may rightly last for hours. It is safe for
// concurrent use.
type Deadline struct {
	max time.Duration
}

// NewDeadline returns an interceptor capping unary calls at max.
func NewDeadline(max time.Duration) *Deadline {
	return &Deadline{max: max}
}

// WrapUnary implements connect.Interceptor.
func (d *Deadline) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > d.max {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d.max)
			defer cancel()
		}
		return next(ctx, req)
	}
}

// WrapStreamingClient implements connect.Interceptor.
func (d *Deadline) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (d *Deadline) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
