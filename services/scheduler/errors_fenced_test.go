package scheduler

import (
	"fmt"
	"testing"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/services/scheduler/store"
)

// A deposed leader's refused write is the caller's cue to try another
// replica, not an internal failure.
func TestAFencedWriteIsUnavailable(t *testing.T) {
	err := mapError(fmt.Errorf("recording the job: %w", store.ErrFenced))
	if got := connect.CodeOf(err); got != connect.CodeUnavailable {
		t.Fatalf("a fenced write maps to %v, want unavailable: %v", got, err)
	}
}
