package replica_test

import (
	"slices"
	"testing"

	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/replica"
	"github.com/baton-run/baton/services/scheduler"
)

// TestWorkerCallsMatchThePolicy: every procedure the scheduler's policy
// lets workers call is one a follower never relays, and no other is, so
// that a worker's procedure added later cannot reach the leader through a
// follower as the anonymous admin.
func TestWorkerCallsMatchThePolicy(t *testing.T) {
	for proc, rule := range scheduler.Policy() {
		if worker := slices.Contains(rule.Roles, identity.RoleWorker); worker != replica.WorkerCalls[proc] {
			t.Errorf("%s: workers may call it %v, never relayed %v", proc, worker, replica.WorkerCalls[proc])
		}
	}
	for proc := range replica.WorkerCalls {
		if _, ok := scheduler.Policy()[proc]; !ok {
			t.Errorf("%s is never relayed but is not in the scheduler's policy", proc)
		}
	}
}
