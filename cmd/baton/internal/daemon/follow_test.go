package daemon

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/serving"
)

// heartbeats is a replica that counts heartbeats: it takes them when it
// leads and refuses them, naming leader, when it does not.
type heartbeats struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	leader string
	calls  atomic.Int64
}

func (h *heartbeats) Heartbeat(context.Context, *connect.Request[batonv1.HeartbeatRequest]) (*connect.Response[batonv1.HeartbeatResponse], error) {
	h.calls.Add(1)
	if h.leader != "" {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("this scheduler replica is not the leader; the leader is at "+h.leader))
	}
	return connect.NewResponse(&batonv1.HeartbeatResponse{}), nil
}

func serveReplica(t *testing.T, h *heartbeats) string {
	t.Helper()
	_, handler := batonv1connect.NewSchedulerServiceHandler(h)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.leader != "" {
			w.Header().Set(serving.LeaderHeader, h.leader)
		}
		handler.ServeHTTP(w, r)
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestWorkerHeartbeatsReachTheLeader: with scheduler.addr listing a dead
// address, a follower and the leader, heartbeats reach the leader, and
// the follower is asked once.
func TestWorkerHeartbeatsReachTheLeader(t *testing.T) {
	t.Parallel()
	leader := &heartbeats{}
	leaderAddr := serveReplica(t, leader)
	follower := &heartbeats{leader: leaderAddr}
	followerAddr := serveReplica(t, follower)
	dead := e2e.FreeAddr(t)

	sched, addrs, err := schedulerClient(dead+", http://"+followerAddr+","+leaderAddr, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 3 || addrs[1] != followerAddr {
		t.Fatalf("addresses %q", addrs)
	}
	for range 3 {
		if _, err := sched.Heartbeat(t.Context(), connect.NewRequest(&batonv1.HeartbeatRequest{})); err != nil {
			t.Fatal(err)
		}
	}
	if leader.calls.Load() != 3 || follower.calls.Load() != 1 {
		t.Errorf("the leader got %d heartbeats, the follower %d; want 3 and 1", leader.calls.Load(), follower.calls.Load())
	}

	// No replica leads: the error names every address, under its key.
	lone := &heartbeats{leader: dead}
	sched, _, err = schedulerClient(serveReplica(t, lone)+","+dead, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sched.Heartbeat(t.Context(), connect.NewRequest(&batonv1.HeartbeatRequest{}))
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "scheduler.addr ") || !strings.Contains(err.Error(), ","+dead+":") {
		t.Errorf("err = %v, want unavailable naming scheduler.addr and every address", err)
	}
}
