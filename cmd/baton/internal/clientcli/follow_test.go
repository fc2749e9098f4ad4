package clientcli

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/serving"
)

// refusingReplica answers as a scheduler replica that does not lead.
type refusingReplica struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	calls atomic.Int64
}

func (r *refusingReplica) ListWorkers(context.Context, *connect.Request[batonv1.ListWorkersRequest]) (*connect.Response[batonv1.ListWorkersResponse], error) {
	r.calls.Add(1)
	return nil, connect.NewError(connect.CodeUnavailable, errors.New("this scheduler replica is not the leader"))
}

// serveH2C serves h over h2c on loopback until the test ends, with
// leader, when set, as every answer's LeaderHeader; it returns the
// server's host:port.
func serveH2C(t *testing.T, h http.Handler, leader string) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if leader != "" {
			w.Header().Set(serving.LeaderHeader, leader)
		}
		h.ServeHTTP(w, r)
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestSchedulerListReachesTheLeader: `baton workers --scheduler
// dead,follower,leader` is answered by the leader, with the token.
func TestSchedulerListReachesTheLeader(t *testing.T) {
	t.Parallel()
	leader := &tokenRecorder{}
	_, lh := batonv1connect.NewSchedulerServiceHandler(leader)
	leaderAddr := serveH2C(t, lh, "")
	follower := &refusingReplica{}
	_, fh := batonv1connect.NewSchedulerServiceHandler(follower)
	followerAddr := serveH2C(t, fh, leaderAddr)
	dead := e2e.FreeAddr(t)

	file := e2e.WriteConfig(t, "[client]\ntoken = \"s3cret\"\n")
	root := newRootCommand()
	root.SetOut(io.Discard)
	root.SetArgs([]string{"workers", "--config", file, "--scheduler", dead + "," + followerAddr + ",http://" + leaderAddr})
	if err := root.ExecuteContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	leader.mu.Lock()
	seen := strings.Join(leader.seen, " ")
	leader.mu.Unlock()
	if seen != "Bearer s3cret" || follower.calls.Load() != 1 {
		t.Errorf("the leader saw %q, the follower %d calls; want one call each, the leader's with the token", seen, follower.calls.Load())
	}
}

// TestSchedulerList: client.scheduler takes a comma-separated list, and
// its errors name the member at fault.
func TestSchedulerList(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		addr    string
		want    []string
		wantErr string
	}{
		{"one", "sched:7070", []string{"http://sched:7070"}, ""},
		{"three", "a:7070, b:7070,http://c:7070", []string{"http://a:7070", "http://b:7070", "http://c:7070"}, ""},
		{"empty member", "a:7070,,b:7070", nil, "address 2 of 3 is empty"},
		{"mixed schemes", "https://a:7070,http://b:7070", nil, "same scheme"},
		{"bad member", "a:7070,b", nil, `"b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := config.ClientSection{Scheduler: tt.addr}
			err := checkSchedulerAddr(c)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %v, want one saying %q", err, tt.wantErr)
				}
				return
			}
			got, uerr := packageConfig(c).BaseURLs()
			if err != nil || uerr != nil || strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("%q, %v, %v; want %q", got, err, uerr, tt.want)
			}
		})
	}
}
