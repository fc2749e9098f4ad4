package worker

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/services/internal/epoch"
	"github.com/baton-run/baton/services/internal/interceptors"
	"github.com/baton-run/baton/services/jobrun"
	"github.com/baton-run/baton/services/keeper"
)

// codes maps the runtime's errors to Connect codes, first match wins.
var codes = []struct {
	err  error
	code connect.Code
}{
	{jobrun.ErrInvalidSpec, connect.CodeInvalidArgument},
	{jobrun.ErrScriptNotFound, connect.CodeNotFound},
	{jobrun.ErrNotFound, connect.CodeNotFound},
	{jobrun.ErrCommandNotAllowed, connect.CodePermissionDenied},
	{jobrun.ErrExec, connect.CodeFailedPrecondition},
	{jobrun.ErrLimitsUnsupported, connect.CodeFailedPrecondition},
	{jobrun.ErrCapacity, connect.CodeResourceExhausted},
	{jobrun.ErrNoUID, connect.CodeResourceExhausted},
	{jobrun.ErrConflict, connect.CodeAlreadyExists},
	{jobrun.ErrClosed, connect.CodeUnavailable},
	{keeper.ErrUnavailable, connect.CodeUnavailable},
	{errBadPageToken, connect.CodeInvalidArgument},
	{epoch.ErrMalformed, connect.CodeInvalidArgument},
	{errStaleLeader, connect.CodeFailedPrecondition},
	{context.Canceled, connect.CodeCanceled},
	{context.DeadlineExceeded, connect.CodeDeadlineExceeded},
}

// mapError is the one place where the worker's errors become Connect errors.
// Known errors keep their message, which jobrun writes for users and keeps
// free of host paths; anything else becomes a generic Internal error.
func mapError(err error) error {
	if err == nil {
		return nil
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return connect.NewError(c.code, err)
		}
	}
	return interceptors.Internal("internal error in the worker; see its log", err)
}
