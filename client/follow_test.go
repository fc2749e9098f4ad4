package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/client"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/serving"
)

// leaderFake is the replica that leads: it starts jobs, counting them,
// and records the token each call carried.
type leaderFake struct {
	tokenRecorder
	starts atomic.Int64
}

func (l *leaderFake) StartJob(_ context.Context, req *connect.Request[batonv1.StartJobRequest]) (*connect.Response[batonv1.StartJobResponse], error) {
	l.record(req.Header())
	l.starts.Add(1)
	return connect.NewResponse(&batonv1.StartJobResponse{JobId: fakeJobID}), nil
}

// followerFake refuses every call as a replica that does not lead does.
type followerFake struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	calls atomic.Int64
}

func (f *followerFake) StartJob(context.Context, *connect.Request[batonv1.StartJobRequest]) (*connect.Response[batonv1.StartJobResponse], error) {
	f.calls.Add(1)
	return nil, connect.NewError(connect.CodeUnavailable, errors.New("this scheduler replica is not the leader"))
}

// serveFollower serves a follower that names leader (host:port) in the
// header of every answer.
func serveFollower(t *testing.T, f *followerFake, leader string) string {
	t.Helper()
	_, h := batonv1connect.NewSchedulerServiceHandler(f)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(serving.LeaderHeader, leader)
		h.ServeHTTP(w, r)
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

func hostOf(t *testing.T, base string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// TestSeveralSchedulersReachTheLeader: with client.scheduler listing a
// dead address, a follower and the leader (a URL and host:ports mixed),
// a start reaches the leader once, with the token, and the next calls go
// to the leader without asking the follower again.
func TestSeveralSchedulersReachTheLeader(t *testing.T) {
	t.Parallel()
	leader := &leaderFake{}
	leaderURL := serveFake(t, leader).url
	follower := &followerFake{}
	followerURL := serveFollower(t, follower, hostOf(t, leaderURL))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()

	list := dead + ", " + hostOf(t, followerURL) + "," + leaderURL
	c, err := client.New(client.Config{Schedulers: []string{list}, Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Start(t.Context(), &batonv1.StartJobRequest{Command: "true"})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetJobId() != fakeJobID || leader.starts.Load() != 1 {
		t.Fatalf("job %q, %d starts on the leader; want %q once", res.GetJobId(), leader.starts.Load(), fakeJobID)
	}
	if _, err := c.Query(t.Context(), fakeJobID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Follow(t.Context(), &batonv1.StreamJobOutputRequest{JobId: fakeJobID}, client.Handlers{}); err != nil {
		t.Fatal(err)
	}
	if n := follower.calls.Load(); n != 1 {
		t.Errorf("the follower got %d calls, want 1", n)
	}
	for _, h := range leader.headers() {
		if h != "Bearer s3cret" {
			t.Errorf("the leader got Authorization %q", h)
		}
	}
}

// TestSeveralSchedulersNoneReachable: a call that reaches no address says
// so, naming every one.
func TestSeveralSchedulersNoneReachable(t *testing.T) {
	t.Parallel()
	var addrs []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		_ = ln.Close()
	}
	c, err := client.New(client.Config{Schedulers: addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Query(t.Context(), fakeJobID)
	var e *client.Error
	if !errors.As(err, &e) || !e.Unreachable {
		t.Fatalf("err = %v, want an unreachable scheduler", err)
	}
	for _, a := range addrs {
		if !strings.Contains(e.Message, a) {
			t.Errorf("%q does not name %s", e.Message, a)
		}
	}
}
