package scheduler_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(scaleLoadEnv) != "" {
		// The load process of BenchmarkScale10kWorkers ends with thousands
		// of connections closing; their goroutines are not the
		// scheduler's, and the run is the benchmark's, not a test.
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}
