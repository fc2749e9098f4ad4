package jobrun

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// A test that needs a worker it can kill -9 runs this binary again as
	// that worker (see startWorkerChild).
	if os.Getenv(hogEnv) != "" {
		os.Exit(runHog())
	}
	if role := os.Getenv(childRoleEnv); role != "" {
		os.Exit(runWorkerChild(role))
	}
	goleak.VerifyTestMain(m)
}
