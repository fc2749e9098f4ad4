package interceptors

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
)

// AccessLog logs one line per RPC when it ends: procedure, protocol, peer,
// code and duration. Internal errors carry their detail here, once; the
// caller sees only a generic message. It is safe for concurrent use.
type AccessLog struct {
	logger *slog.Logger
}

// NewAccessLog returns an access-log interceptor writing to logger.
func NewAccessLog(logger *slog.Logger) *AccessLog {
	return &AccessLog{logger: logger}
}

// WrapUnary implements connect.Interceptor.
func (a *AccessLog) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		res, err := next(ctx, req)
		a.log(ctx, req.Spec(), req.Peer(), req.Header().Get("User-Agent"), start, err)
		return res, err
	}
}

// WrapStreamingClient implements connect.Interceptor; clients are not logged.
func (a *AccessLog) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (a *AccessLog) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		a.log(ctx, conn.Spec(), conn.Peer(), conn.RequestHeader().Get("User-Agent"), start, err)
		return err
	}
}

// routine are procedures whose successful calls are logged at debug level:
// 10,000 workers heartbeating every 5 s would otherwise be 2,000 info
// lines a second.
var routine = map[string]bool{
	batonv1connect.SchedulerServiceHeartbeatProcedure: true,
}

func (a *AccessLog) log(ctx context.Context, spec connect.Spec, peer connect.Peer, agent string, start time.Time, err error) {
	code := "ok"
	level := slog.LevelInfo
	switch c := connect.CodeOf(err); {
	case err == nil && routine[spec.Procedure]:
		level = slog.LevelDebug
	case err != nil && (c == connect.CodeInternal || c == connect.CodeUnknown || hasDetail(err)):
		level = slog.LevelError
	}
	if !a.logger.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("procedure", spec.Procedure),
		slog.String("protocol", peer.Protocol),
		slog.String("peer", peer.Addr),
	}
	if p, ok := identity.FromContext(ctx); ok {
		attrs = append(attrs, slog.String("principal", p.String()))
	}
	if obo := identity.OnBehalfOf(ctx); obo != "" {
		attrs = append(attrs, slog.String("on_behalf_of", obo))
	}
	if err != nil {
		c := connect.CodeOf(err)
		code = c.String()
		if c == connect.CodeInternal || c == connect.CodeUnknown || hasDetail(err) {
			attrs = append(attrs, slog.String("error", errorDetail(err)))
		} else {
			msg := err.Error()
			if ce := new(connect.Error); errors.As(err, &ce) {
				msg = ce.Message()
			}
			attrs = append(attrs, slog.String("error", msg))
		}
	}
	attrs = append(attrs,
		slog.String("code", code),
		slog.Duration("duration", time.Since(start)),
		slog.String("user_agent", agent),
	)
	a.logger.LogAttrs(ctx, level, "rpc", attrs...)
}

// hasDetail reports whether err carries a cause the caller was not shown.
func hasDetail(err error) bool {
	return errors.As(err, new(*internalError))
}

// errorDetail finds the detail the caller was not shown (see Internal).
func errorDetail(err error) string {
	if ie := new(internalError); errors.As(err, &ie) {
		return ie.cause.Error()
	}
	return err.Error()
}

// Internal returns a CodeInternal error that shows callers only msg, while
// the access log records cause: internal details (paths, driver errors) stay
// out of responses and are logged exactly once.
func Internal(msg string, cause error) *connect.Error {
	return Hidden(connect.CodeInternal, msg, cause)
}

// Hidden is Internal with another code: a server-side failure the caller
// can do something about (retry later, for unavailable), told in msg, with
// the cause in the log only.
func Hidden(code connect.Code, msg string, cause error) *connect.Error {
	return connect.NewError(code, &internalError{msg: msg, cause: cause})
}

type internalError struct {
	msg   string
	cause error
}

func (e *internalError) Error() string { return e.msg }
