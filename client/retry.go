package client

import (
	"context"
	"errors"
	"io"
	"net/http/httptrace"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
)

// Trying again: the scheduler ends streams with unavailable when it shuts
// down or a job's worker goes away, and comes back after a restart. About
// a minute of tries, at most 3 s apart, covers a restart of either.
const (
	resumeAttempts = 20
	resumeFirst    = 200 * time.Millisecond
	resumeMax      = 3 * time.Second
)

// backoff spaces the tries of one call. Not safe for concurrent use.
type backoff struct {
	attempt int
	delay   time.Duration
}

func newBackoff() *backoff { return &backoff{delay: resumeFirst} }

// reset starts the count again: the last try made progress.
func (b *backoff) reset() { b.attempt, b.delay = 0, resumeFirst }

// wait sleeps before the next try. It fails when the tries are spent or
// ctx ends first.
func (b *backoff) wait(ctx context.Context) error {
	if b.attempt >= resumeAttempts {
		return errors.New("no tries left")
	}
	b.attempt++
	if err := sleep(ctx, b.delay); err != nil {
		return err
	}
	b.delay = min(2*b.delay, resumeMax)
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// resumable reports whether a follow that ended with err is worth picking
// up again: the scheduler said so (it shuts down, the worker went away), or
// the connection broke mid-message, as it does when the scheduler is
// killed (Connect's client then says "internal: protocol error").
func resumable(err error) bool {
	return connect.CodeOf(err) == connect.CodeUnavailable ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// retryStart reports whether a start that failed with err is tried again
// with the same idempotency key. known says the scheduler has named the
// job already (it is queued); unknown says an earlier try went out and got
// no answer, so that the scheduler may have started the job.
func retryStart(err error, known, unknown bool) bool {
	switch {
	case known:
		// The job exists: it is followed for as long as a follow would be.
		return resumable(err)
	case !unknown:
		// The scheduler answered, or never had the request (one that is
		// not running is told at once): this is the outcome.
		return false
	case connect.IsWireError(err):
		// The scheduler answered a try after the lost one; only "try
		// again later" is tried again.
		return connect.CodeOf(err) == connect.CodeUnavailable
	}
	return true
}

// lost reports whether a try that failed with err went out (sent) and got
// no answer: the scheduler may have acted on it.
func lost(err error, sent *sentFlag) bool {
	return sent.Load() && !connect.IsWireError(err)
}

// sentFlag records whether a try wrote its request.
type sentFlag struct{ atomic.Bool }

// trace returns ctx with a trace that sets the flag once the request is
// written.
func (s *sentFlag) trace(ctx context.Context) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { s.Store(true) },
	})
}
