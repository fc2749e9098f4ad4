package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"connectrpc.com/connect"
)

// Rule says who may call one procedure.
type Rule struct {
	// Roles may call the procedure. Anonymous (plaintext) callers may call
	// every procedure that has a rule.
	Roles []Role
	// Mutating calls are audited whatever their outcome; denials of every
	// call are audited.
	Mutating bool
	// Check, if set, looks at a unary request once the role matched, and
	// returns why p may not make it (a worker acting as another worker).
	Check func(p Principal, req any) error
}

// Policy maps full procedure names ("/baton.v1.SchedulerService/StartJob")
// to rules. A procedure without a rule is denied to everyone.
type Policy map[string]Rule

// Authorizer is a Connect interceptor enforcing a Policy on the principal
// the Authenticator found, before the request is validated or handled.
// Safe for concurrent use.
type Authorizer struct {
	policy Policy
	audit  *AuditLog
	logger *slog.Logger
}

// NewAuthorizer returns the interceptor. audit may be nil.
func NewAuthorizer(policy Policy, audit *AuditLog, logger *slog.Logger) *Authorizer {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Authorizer{policy: policy, audit: audit, logger: logger}
}

// WrapUnary implements connect.Interceptor.
func (a *Authorizer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		proc := req.Spec().Procedure
		p, rule, err := a.decide(ctx, proc)
		if err == nil && rule.Check != nil {
			if cerr := rule.Check(p, req.Any()); cerr != nil {
				err = connect.NewError(connect.CodePermissionDenied, cerr)
			}
		}
		if err != nil {
			a.record(ctx, p, proc, req.Peer().Addr, req.Any(), nil, err)
			return nil, err
		}
		res, err := next(ctx, req)
		if rule.Mutating {
			var msg any
			if res != nil {
				msg = res.Any()
			}
			a.record(ctx, p, proc, req.Peer().Addr, req.Any(), msg, err)
		}
		return res, err
	}
}

// WrapStreamingClient implements connect.Interceptor.
func (a *Authorizer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor. A stream is
// authorized on its principal alone: its request is not read yet.
func (a *Authorizer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		proc := conn.Spec().Procedure
		p, rule, err := a.decide(ctx, proc)
		if err != nil {
			a.record(ctx, p, proc, conn.Peer().Addr, nil, nil, err)
			return err
		}
		err = next(ctx, conn)
		if rule.Mutating {
			a.record(ctx, p, proc, conn.Peer().Addr, nil, nil, err)
		}
		return err
	}
}

// decide returns the caller and the rule that admits it, or the error
// that refuses it.
func (a *Authorizer) decide(ctx context.Context, proc string) (Principal, Rule, error) {
	p, ok := FromContext(ctx)
	if !ok {
		why := authErrorFrom(ctx)
		if why == nil {
			why = errors.New("no credentials")
		}
		return p, Rule{}, connect.NewError(connect.CodeUnauthenticated, why)
	}
	rule, ok := a.policy[proc]
	if !ok || !(p.Anonymous || slices.Contains(rule.Roles, p.Role)) {
		return p, rule, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s may not call %s", p, proc))
	}
	return p, rule, nil
}

// Getters that requests and responses of the API have; the audit takes
// ids from them.
type (
	jobIDGetter    interface{ GetJobId() string }
	groupIDGetter  interface{ GetGroupId() string }
	workerIDGetter interface{ GetWorkerId() string }
	nameGetter     interface{ GetName() string }
	commandGetter  interface{ GetCommand() string }
)

func (a *Authorizer) record(ctx context.Context, p Principal, proc, peer string, req, res any, err error) {
	rec := AuditRecord{
		Time:       time.Now().UTC(),
		Principal:  p.String(),
		OnBehalfOf: OnBehalfOf(ctx),
		Procedure:  proc,
		Peer:       peer,
		Decision:   "allow",
		Code:       "ok",
	}
	if p.IsZero() {
		rec.Principal = "unauthenticated"
	}
	if relay, ok := RelayOf(ctx); ok {
		rec.Peer, rec.RelayedBy = relay.Client, relay.By
	}
	for _, m := range []any{req, res} {
		if g, ok := m.(jobIDGetter); ok && g.GetJobId() != "" {
			rec.JobID = g.GetJobId()
		}
		if g, ok := m.(groupIDGetter); ok && g.GetGroupId() != "" {
			rec.GroupID = g.GetGroupId()
		}
		if g, ok := m.(workerIDGetter); ok && g.GetWorkerId() != "" {
			rec.WorkerID = g.GetWorkerId()
		}
		if g, ok := m.(commandGetter); ok {
			rec.Command = g.GetCommand()
		}
		if g, ok := m.(nameGetter); ok && rec.WorkerID == "" && g.GetName() != "" {
			rec.WorkerID = g.GetName()
		}
	}
	if err != nil {
		code := connect.CodeOf(err)
		rec.Code = code.String()
		if code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied {
			rec.Decision = "deny"
			var ce *connect.Error
			if errors.As(err, &ce) {
				rec.Reason = ce.Message()
			}
		}
	}
	if werr := a.audit.Record(rec); werr != nil {
		a.logger.ErrorContext(ctx, "writing the audit log failed", "error", werr)
	}
}
