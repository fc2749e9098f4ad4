package keeper

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"

	keeperv1 "github.com/baton-run/baton/gen/baton/keeper/v1"
	"github.com/baton-run/baton/services/jobrun"
)

// TestErrorsCrossTheSocket: what the runtime returns reaches the worker
// as the same sentinel with the same message; what the keeper did not
// answer is ErrUnavailable.
func TestErrorsCrossTheSocket(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		sent := fmt.Errorf("%w: details for the user", kind)
		got := fromConnect(toConnect(sent))
		if !errors.Is(got, kind) || got.Error() != sent.Error() {
			t.Errorf("%v came back as %v", sent, got)
		}
	}
	if got := fromConnect(toConnect(errors.New("disk on fire"))); errors.Is(got, ErrUnavailable) || got.Error() != "disk on fire" {
		t.Errorf("the keeper's own failure came back as %v", got)
	}
	cut := connect.NewError(connect.CodeInternal, errors.New("protocol error: incomplete envelope: unexpected EOF"))
	if got := fromConnect(cut); !errors.Is(got, ErrUnavailable) {
		t.Errorf("a cut stream came back as %v", got)
	}
	if got := fromConnect(connect.NewError(connect.CodeUnimplemented, errors.New("no such method"))); connect.CodeOf(got) != connect.CodeUnimplemented {
		t.Errorf("an older keeper's unimplemented came back as %v", got)
	}
	if got := fromConnect(connect.NewError(connect.CodeCanceled, errors.New("x"))); !errors.Is(got, context.Canceled) {
		t.Errorf("canceled came back as %v", got)
	}
	if got := fromConnect(connect.NewError(connect.CodeDeadlineExceeded, errors.New("x"))); !errors.Is(got, context.DeadlineExceeded) {
		t.Errorf("deadline came back as %v", got)
	}
	plain := errors.New("not a connect error")
	if got := fromConnect(plain); got != plain {
		t.Errorf("a plain error came back as %v", got)
	}
	if fromConnect(nil) != nil || toConnect(nil) != nil {
		t.Error("nil is not nil")
	}
	if got := brokenStream(nil); !errors.Is(got, ErrUnavailable) {
		t.Errorf("a stream ended early: %v", got)
	}
	if st := stateFromProto(99); st != jobrun.StateLost {
		t.Errorf("an unknown state reads as %v", st)
	}
}

// TestOversizeRequestIsRefused: the keeper reads no request larger than
// maxRequest, and starts nothing for one.
func TestOversizeRequestIsRefused(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	c := open(t, opts, nil)
	big := jobrun.Spec{Command: "true", Args: []string{strings.Repeat("x", maxRequest)}}
	_, err := c.rpc.Start(t.Context(), connect.NewRequest(&keeperv1.StartRequest{Id: "big", Spec: specToProto(big)}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("a start of %d bytes: %v", maxRequest, err)
	}
	if _, err := c.Status(t.Context(), "big"); !errors.Is(err, jobrun.ErrNotFound) {
		t.Errorf("the oversize job: %v", err)
	}
}
