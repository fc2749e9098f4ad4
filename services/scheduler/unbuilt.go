package scheduler

import (
	"errors"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// refuseUnbuilt refuses the StartJob fields this scheduler does not carry
// out yet, rather than starting a job that silently ignores them.
func refuseUnbuilt(req *batonv1.StartJobRequest) error {
	switch {
	case req.GetRetry() != nil:
		return connect.NewError(connect.CodeUnimplemented, errors.New("retry is not supported by this scheduler"))
	case len(req.GetAfter()) > 0:
		return connect.NewError(connect.CodeUnimplemented, errors.New("after is not supported by this scheduler"))
	case len(req.GetScript()) > 0 || req.GetScriptName() != "":
		return connect.NewError(connect.CodeUnimplemented, errors.New("script is not supported by this scheduler"))
	case req.GetArray() != nil:
		return connect.NewError(connect.CodeUnimplemented, errors.New("array is not supported by this scheduler"))
	}
	return nil
}
