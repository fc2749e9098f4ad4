package serving

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any test leaves a goroutine behind: a
// connection, handler or attacker the hardening tests forgot to end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
