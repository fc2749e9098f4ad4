package keeper

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/services/jobrun"
)

// errorKindKey carries, in an error's metadata, which of the runtime's
// errors the keeper returned, so that the worker's side sees the same
// sentinel (errors.Is) with the same message.
const errorKindKey = "Keeper-Error"

// kinds are the runtime's errors a keeper passes on, by name.
var kinds = map[string]error{
	"not-found":           jobrun.ErrNotFound,
	"invalid-spec":        jobrun.ErrInvalidSpec,
	"script-not-found":    jobrun.ErrScriptNotFound,
	"command-not-allowed": jobrun.ErrCommandNotAllowed,
	"exec":                jobrun.ErrExec,
	"capacity":            jobrun.ErrCapacity,
	"conflict":            jobrun.ErrConflict,
	"closed":              jobrun.ErrClosed,
	"limits-unsupported":  jobrun.ErrLimitsUnsupported,
	"no-uid":              jobrun.ErrNoUID,
	"canceled":            context.Canceled,
	"deadline-exceeded":   context.DeadlineExceeded,
}

// ErrUnavailable means the keeper could not be reached.
var ErrUnavailable = errors.New("the worker's keeper is not reachable")

// toConnect is how the keeper returns a runtime error.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	for name, kind := range kinds {
		if errors.Is(err, kind) {
			ce := connect.NewError(connect.CodeUnknown, err)
			ce.Meta().Set(errorKindKey, name)
			return ce
		}
	}
	ce := connect.NewError(connect.CodeInternal, err)
	ce.Meta().Set(errorKindKey, "internal")
	return ce
}

// remoteError is a runtime error the keeper returned.
type remoteError struct {
	kind error
	msg  string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// fromConnect turns what a keeper call returned back into the runtime's
// error; a call that did not reach the keeper is ErrUnavailable.
func fromConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err
	}
	kind := ce.Meta().Get(errorKindKey)
	if sentinel, ok := kinds[kind]; ok {
		return &remoteError{kind: sentinel, msg: ce.Message()}
	}
	switch {
	case kind != "":
		return errors.New(ce.Message()) // the keeper's own failure
	case ce.Code() == connect.CodeCanceled:
		return context.Canceled
	case ce.Code() == connect.CodeDeadlineExceeded:
		return context.DeadlineExceeded
	case ce.Code() == connect.CodeUnimplemented:
		return err // an older keeper
	}
	// Not an answer of the keeper: the call did not reach it, or its
	// connection broke (it was killed, or executes a new build).
	return &remoteError{kind: ErrUnavailable, msg: ErrUnavailable.Error() + ": " + ce.Message()}
}
