package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"connectrpc.com/connect"
)

// Error is a call's failure: the scheduler's answer, or the client's own
// account of a call that got none. errors.Is matches it against the
// sentinel of its code (ErrNotFound, ...); errors.As reaches the
// *connect.Error beneath it, so connect.CodeOf works on it too.
type Error struct {
	// Code says what kind of failure it is, as the scheduler maps its
	// errors: not_found for an unknown job, worker or script,
	// resource_exhausted for a full cluster, unavailable for a worker or
	// scheduler that cannot be reached, and so on.
	Code connect.Code
	// Message says what went wrong, in the scheduler's words when it
	// answered.
	Message string
	// Unreachable says the call got no answer because the scheduler
	// could not be reached or the connection to it broke; Message then
	// names the scheduler's URL (each of them, with several).
	Unreachable bool
	err         error
}

func (e *Error) Error() string { return e.Code.String() + ": " + e.Message }

// Unwrap returns the *connect.Error the call failed with.
func (e *Error) Unwrap() error { return e.err }

// Is reports whether target is the sentinel of e's code.
func (e *Error) Is(target error) bool {
	c, ok := target.(codeError)
	return ok && connect.Code(c) == e.Code
}

// codeError is the type of the sentinels: one per code.
type codeError connect.Code

func (c codeError) Error() string { return connect.Code(c).String() }

// Sentinels for errors.Is, one per code the scheduler answers with.
var (
	// ErrInvalidArgument: the request breaks a rule of the API (a field
	// out of range, a path that leaves the scripts directory, a fan-out
	// given to Run).
	ErrInvalidArgument error = codeError(connect.CodeInvalidArgument)
	// ErrNotFound: no such job, group, worker or script.
	ErrNotFound error = codeError(connect.CodeNotFound)
	// ErrAlreadyExists: the record exists already.
	ErrAlreadyExists error = codeError(connect.CodeAlreadyExists)
	// ErrPermissionDenied: the caller may not do this (a command off the
	// allow-list, another owner's job, a priority above its limit).
	ErrPermissionDenied error = codeError(connect.CodePermissionDenied)
	// ErrUnauthenticated: the scheduler does not know the caller.
	ErrUnauthenticated error = codeError(connect.CodeUnauthenticated)
	// ErrFailedPrecondition: the cluster is not in a state that allows it
	// (a draining worker, a selector no ready worker matches).
	ErrFailedPrecondition error = codeError(connect.CodeFailedPrecondition)
	// ErrResourceExhausted: every matching worker is full and the job
	// may not wait (its queue_timeout is zero), or the queue is.
	ErrResourceExhausted error = codeError(connect.CodeResourceExhausted)
	// ErrUnavailable: the scheduler, or the job's worker, cannot be
	// reached now; a later try may succeed.
	ErrUnavailable error = codeError(connect.CodeUnavailable)
)

// newError is the client's own error of a code.
func newError(code connect.Code, msg string) *Error {
	return &Error{Code: code, Message: msg, err: connect.NewError(code, errors.New(msg))}
}

// errorInterceptor turns every call's *connect.Error into an *Error, and
// names the scheduler's URLs when it cannot be reached.
type errorInterceptor struct {
	baseURLs []string
	// tls is the client's TLS config, for diagnoseTLS; nil for h2c.
	tls *tls.Config
}

// mapError returns err as an *Error when it is a *connect.Error. The
// end of a stream (io.EOF) and errors of the caller's own making are
// returned as they are.
func (i *errorInterceptor) mapError(ctx context.Context, err error) error {
	var ce *connect.Error
	if err == nil || errors.Is(err, io.EOF) || !errors.As(err, &ce) {
		return err
	}
	if e := new(Error); errors.As(err, &e) {
		return err
	}
	e := &Error{Code: ce.Code(), Message: ce.Message(), err: err}
	if connect.IsWireError(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return e
	}
	if e.Code == connect.CodeCanceled && ctx.Err() == nil && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		// Connect reads a reset connection as the peer having gone away
		// on purpose, canceled: a server's view of its client. Here the
		// caller's context is live and the scheduler went away (killed,
		// or its machine lost), which is unavailable: try again.
		e.Code = connect.CodeUnavailable
		e.err = connect.NewError(e.Code, err)
	}
	// No answer from the scheduler: a TLS mismatch shows as one of
	// several transport errors, so it is asked for once more, plainly.
	for _, base := range i.baseURLs {
		if why := diagnoseTLS(ctx, base, i.tls); why != "" {
			e.Code, e.Unreachable = connect.CodeUnavailable, true
			e.Message = fmt.Sprintf("cannot talk to the scheduler at %s: %s", base, why)
			e.err = connect.NewError(e.Code, &explained{msg: e.Message, cause: err})
			return e
		}
	}
	var op *net.OpError
	if e.Code == connect.CodeUnavailable && errors.As(err, &op) {
		e.Unreachable = true
		e.Message = fmt.Sprintf("cannot reach the scheduler at %s (%v); is it running?", i.baseURLs[0], op.Err)
		if len(i.baseURLs) > 1 {
			e.Message = fmt.Sprintf("cannot reach any scheduler at %s (last: %v); are they running?", strings.Join(i.baseURLs, ", "), op.Err)
		}
		// The cause stays in the chain, for errors.Is(err, syscall.ECONNRESET).
		e.err = connect.NewError(ce.Code(), &explained{msg: e.Message, cause: err})
	}
	return e
}

// explained is an error with a message of the client's own and its cause
// beneath it.
type explained struct {
	msg   string
	cause error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.cause }

// WrapUnary maps a unary call's error.
func (i *errorInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		return res, i.mapError(ctx, err)
	}
}

// WrapStreamingClient maps a stream's errors, as each call of it returns
// them.
func (i *errorInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		return &errorConn{StreamingClientConn: next(ctx, spec), i: i, ctx: ctx}
	}
}

// WrapStreamingHandler leaves handlers alone: the interceptor is for clients.
func (i *errorInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

var _ connect.Interceptor = (*errorInterceptor)(nil)

// errorConn is a client stream whose errors are mapped.
type errorConn struct {
	connect.StreamingClientConn
	i   *errorInterceptor
	ctx context.Context
}

func (c *errorConn) Send(msg any) error {
	return c.i.mapError(c.ctx, c.StreamingClientConn.Send(msg))
}

func (c *errorConn) Receive(msg any) error {
	return c.i.mapError(c.ctx, c.StreamingClientConn.Receive(msg))
}

func (c *errorConn) CloseRequest() error {
	return c.i.mapError(c.ctx, c.StreamingClientConn.CloseRequest())
}

func (c *errorConn) CloseResponse() error {
	return c.i.mapError(c.ctx, c.StreamingClientConn.CloseResponse())
}
