package client

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"

	"connectrpc.com/connect"
)

// TestResetConnectionIsUnavailable: a scheduler that goes away mid-call
// (killed, its machine lost) resets the connection, which Connect reads
// as canceled; the client says unavailable, unreachable, with the reset
// still in the chain, unless the caller itself canceled.
func TestResetConnectionIsUnavailable(t *testing.T) {
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	i := &errorInterceptor{baseURLs: []string{"http://127.0.0.1:1"}}

	err := i.mapError(t.Context(), connect.NewError(connect.CodeCanceled, reset))
	var e *Error
	if !errors.As(err, &e) || e.Code != connect.CodeUnavailable || !e.Unreachable {
		t.Fatalf("a reset connection: %#v, want unavailable and unreachable", err)
	}
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("%v: errors.Is unavailable %v, ECONNRESET %v; want both", err, errors.Is(err, ErrUnavailable), errors.Is(err, syscall.ECONNRESET))
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err = i.mapError(ctx, connect.NewError(connect.CodeCanceled, reset))
	if !errors.As(err, &e) || e.Code != connect.CodeCanceled {
		t.Errorf("a reset after the caller canceled: %v, want canceled", err)
	}
}
