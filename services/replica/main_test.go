package replica_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain checks that replicas, their terms and the etcd members leave
// no goroutine behind once stopped. A member's peer connections (lease
// renewals forwarded to raft's leader, version checks) end only at their
// read timeout, rafthttp.ConnReadTimeout (5 s), so the check is given
// longer than goleak's own retries.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(15 * time.Second)
		for {
			err := goleak.Find(
				// A hard-stopped member's peer handler may wait forever on
				// its backend when a peer asked its version at the crash:
				// etcd's goroutine, left by the crash the test made.
				goleak.IgnoreAnyFunction("go.etcd.io/etcd/server/v3/etcdserver/api/etcdhttp.newPeerHandler.versionHandler.func1"),
			)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
				code = 1
				break
			}
		}
	}
	os.Exit(code)
}
