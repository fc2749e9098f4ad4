package replica_test

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/replica"
)

// TestFollowerNamesTheLeader calls every replica, in each protocol, as a
// client that does not know which one leads: the leader serves, a
// follower refuses as unavailable and names the leader, and a replica
// that knows of no leader yet refuses without naming one.
func TestFollowerNamesTheLeader(t *testing.T) {
	c := newCluster(t, 2*time.Second)
	c.start(t, 0)
	leader, _ := c.waitLeader(t, 0, 20*time.Second)
	follower := c.start(t, 1)
	waitFor(t, "the follower knowing the leader", 10*time.Second, func() bool {
		addr, _, _ := follower.r.Leader()
		return addr == leader.addr
	})
	// Replica 2 never campaigns, so it never learns of a leader.
	unaware := c.nodes[2]

	protocols := []struct {
		name string
		opts []connect.ClientOption
	}{
		{name: "connect"},
		{name: "grpc", opts: []connect.ClientOption{connect.WithGRPC()}},
		{name: "grpc-web", opts: []connect.ClientOption{connect.WithGRPCWeb()}},
	}
	replicas := []struct {
		name string
		r    *replica.Replica
		// code is what a call gets (0: it succeeds), and header what it
		// names in replica.LeaderHeader.
		code   connect.Code
		header string
	}{
		{name: "leader", r: leader.r},
		{name: "follower", r: follower.r, code: connect.CodeUnavailable, header: leader.addr},
		{name: "no leader known", r: unaware.r, code: connect.CodeUnavailable},
	}
	for _, rc := range replicas {
		srv := httptest.NewUnstartedServer(rc.r.Handler())
		srv.EnableHTTP2 = true
		srv.StartTLS()
		t.Cleanup(srv.Close)
		for _, p := range protocols {
			t.Run(rc.name+"/"+p.name, func(t *testing.T) {
				client := batonv1connect.NewSchedulerServiceClient(srv.Client(), srv.URL, p.opts...)
				_, err := client.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
				if rc.code == 0 {
					if err != nil {
						t.Fatalf("ListWorkers: %v", err)
					}
					return
				}
				if got := connect.CodeOf(err); got != rc.code {
					t.Fatalf("ListWorkers: %v, want code %v", err, rc.code)
				}
				var cerr *connect.Error
				if !errors.As(err, &cerr) {
					t.Fatalf("ListWorkers: %T is not a *connect.Error", err)
				}
				if got := cerr.Meta().Get(replica.LeaderHeader); got != rc.header {
					t.Errorf("%s: %q, want %q", replica.LeaderHeader, got, rc.header)
				}
				if rc.header != "" && !strings.Contains(cerr.Message(), rc.header) {
					t.Errorf("message %q does not name the leader at %s", cerr.Message(), rc.header)
				}
			})
		}
	}
}
