// Package epoch carries the leader's epoch on the calls a scheduler makes to
// its workers, so that a worker can refuse a leader that has been deposed
// (HA.md, "Workers fence too"). The epoch is the leader's term: it only
// grows from one leader to the next.
package epoch

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"connectrpc.com/connect"
)

// Header carries the epoch, in decimal, on a call to a worker. A call
// without it comes from a scheduler that runs alone, unfenced.
const Header = "Baton-Epoch"

// ErrMalformed is returned by Parse for a header that is not one positive
// decimal number.
var ErrMalformed = errors.New("the " + Header + " header must be one positive decimal number")

// maxDigits bounds the header's value: math.MaxInt64 has 19 digits.
const maxDigits = 19

// Parse returns the epoch h carries, or 0 when it carries none.
func Parse(h http.Header) (int64, error) {
	vs := h.Values(Header)
	switch len(vs) {
	case 0:
		return 0, nil
	case 1:
	default:
		return 0, ErrMalformed
	}
	v := vs[0]
	if v == "" || len(v) > maxDigits {
		return 0, ErrMalformed
	}
	// strconv.ParseInt would also take a sign; the scheduler never sends one.
	for i := range len(v) {
		if v[i] < '0' || v[i] > '9' {
			return 0, ErrMalformed
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, ErrMalformed
	}
	return n, nil
}

// NewClientInterceptor returns a client interceptor that sends epoch n in
// Header on every call, unary and streaming. n must be positive. It is
// safe for concurrent use.
func NewClientInterceptor(n int64) connect.Interceptor {
	return stamp(strconv.FormatInt(n, 10))
}

// stamp is the header's value, formatted once.
type stamp string

// WrapUnary implements connect.Interceptor.
func (s stamp) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set(Header, string(s))
		return next(ctx, req)
	}
}

// WrapStreamingClient implements connect.Interceptor.
func (s stamp) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set(Header, string(s))
		return conn
	}
}

// WrapStreamingHandler implements connect.Interceptor.
func (s stamp) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
