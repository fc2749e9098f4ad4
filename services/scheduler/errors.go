package scheduler

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/internal/interceptors"
	"github.com/baton-run/baton/services/scheduler/store"
)

// Kinds of scheduler errors; a userError wraps one with a message for the
// caller.
var (
	errUnknownWorker     = errors.New("unknown worker")
	errWorkerUnavailable = errors.New("worker unavailable")
	errDraining          = errors.New("worker draining")
	errNoWorkers         = errors.New("no ready worker")
	errNoCapacity        = errors.New("no capacity")
	errNoMatch           = errors.New("no matching worker")
	errWrongWorker       = errors.New("job not on that worker")
	errNotRegistered     = errors.New("worker not registered")
	errKeyOfGroup        = errors.New("idempotency key of a group")
	errQueueFull         = errors.New("too many jobs queued")
	errPriority          = errors.New("priority not allowed")
)

// userError is an error kind with a message meant for the caller.
type userError struct {
	kind error
	msg  string
}

func (e *userError) Error() string { return e.msg }
func (e *userError) Unwrap() error { return e.kind }

func newError(kind error, format string, a ...any) error {
	return &userError{kind: kind, msg: fmt.Sprintf(format, a...)}
}

func errWorkerNotFound(id string) error {
	return newError(errUnknownWorker, "worker %q is not known", id)
}

func errWorkerGone(id string, st batonv1.WorkerState) error {
	return newError(errWorkerUnavailable, "worker %q is %s", id, stateWord(st))
}

// workerError is a failed call to a worker.
type workerError struct {
	worker string
	// addr is the address dialled, when known.
	addr string
	err  error
}

func (e *workerError) Error() string { return fmt.Sprintf("worker %q: %v", e.worker, e.err) }
func (e *workerError) Unwrap() error { return e.err }

// errTooLargeMsg says what to do about a request whose jobs the store
// cannot write in one transaction: a fan-out's jobs each carry its script.
const errTooLargeMsg = "the jobs of this request, with their scripts, are too large for the scheduler's store to write at once: send a large script to fewer workers per call, or keep it on the workers and name its path"

// codes maps the scheduler's own errors to Connect codes, first match wins.
var codes = []struct {
	err  error
	code connect.Code
}{
	{errUnknownWorker, connect.CodeNotFound},
	{errWorkerUnavailable, connect.CodeUnavailable},
	{errStopKept, connect.CodeUnavailable},
	{errDraining, connect.CodeFailedPrecondition},
	{errNoWorkers, connect.CodeUnavailable},
	{errNoCapacity, connect.CodeResourceExhausted},
	{errQueueFull, connect.CodeResourceExhausted},
	{errPriority, connect.CodePermissionDenied},
	{errBadAfter, connect.CodeInvalidArgument},
	{errBadScript, connect.CodeInvalidArgument},
	{errBadSchedule, connect.CodeInvalidArgument},
	{store.ErrLimit, connect.CodeResourceExhausted},
	// A selector no ready worker matches will not succeed on retry.
	{errNoMatch, connect.CodeFailedPrecondition},
	{errKeyOfGroup, connect.CodeFailedPrecondition},
	{errStartTimedOut, connect.CodeUnavailable},
	{errWrongWorker, connect.CodeNotFound},
	{errNotRegistered, connect.CodeNotFound},
	{store.ErrNotFound, connect.CodeNotFound},
	{store.ErrInvalidPageToken, connect.CodeInvalidArgument},
	{store.ErrConflict, connect.CodeAlreadyExists},
	{context.Canceled, connect.CodeCanceled},
	{context.DeadlineExceeded, connect.CodeDeadlineExceeded},
}

// mapError is the one place where the scheduler's errors become Connect
// errors. A worker's error is mapped code by code, never passed through.
func mapError(err error) error {
	if err == nil {
		return nil
	}
	if we := new(workerError); errors.As(err, &we) {
		return mapWorkerError(we)
	}
	if errors.Is(err, store.ErrFenced) {
		return interceptors.Hidden(connect.CodeUnavailable, "this scheduler replica is no longer the leader: try again, another replica leads now", err)
	}
	if errors.Is(err, store.ErrUnavailable) {
		return interceptors.Hidden(connect.CodeUnavailable, "the scheduler cannot write its store right now; try again later", err)
	}
	if errors.Is(err, store.ErrTooLarge) {
		return interceptors.Hidden(connect.CodeResourceExhausted, errTooLargeMsg, err)
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return connect.NewError(c.code, err)
		}
	}
	return interceptors.Internal("internal error in the scheduler; see its log", err)
}

// mapWorkerError maps what a worker answered. Errors about the request
// keep the worker's code and message; a worker that cannot be reached, or
// that fails in a way the caller cannot act on, is Unavailable or Internal.
func mapWorkerError(we *workerError) error {
	msg := we.err.Error()
	if ce := new(connect.Error); errors.As(we.err, &ce) {
		msg = ce.Message()
	}
	switch code := connect.CodeOf(we.err); code {
	case connect.CodeInvalidArgument, connect.CodeNotFound, connect.CodePermissionDenied,
		connect.CodeFailedPrecondition, connect.CodeAlreadyExists:
		return connect.NewError(code, fmt.Errorf("worker %q: %s", we.worker, msg))
	case connect.CodeResourceExhausted:
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("worker %q is full: %s", we.worker, msg))
	case connect.CodeInternal:
		return interceptors.Internal(fmt.Sprintf("worker %q failed; see its log", we.worker), we)
	default:
		// Unavailable, DeadlineExceeded, Canceled by our own timeout,
		// Unknown transport failures and anything unexpected: say where
		// the scheduler dialled and what it got, which is what an
		// operator fixes (the worker's advertised address, a firewall, a
		// certificate).
		at := ""
		if we.addr != "" {
			at = " at " + we.addr
		}
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("worker %q%s could not be reached: %s (%s)", we.worker, at, msg, code))
	}
}

// stateWord names a worker state in messages.
func stateWord(st batonv1.WorkerState) string {
	switch st {
	case batonv1.WorkerState_WORKER_STATE_READY:
		return "ready"
	case batonv1.WorkerState_WORKER_STATE_DRAINING:
		return "draining"
	case batonv1.WorkerState_WORKER_STATE_DOWN:
		return "down"
	case batonv1.WorkerState_WORKER_STATE_LEFT:
		return "gone (deregistered)"
	case batonv1.WorkerState_WORKER_STATE_RESTARTING:
		return "restarting"
	}
	return "unknown"
}
