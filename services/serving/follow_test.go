package serving_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/serving"
)

// replica is a fake scheduler replica: the leader answers, a follower
// refuses as a real one does (code unavailable, LeaderHeader naming the
// leader it knows), a broken one drops the connection after reading a
// request. It counts the calls that reached it.
type replica struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	name  string
	addr  string
	calls atomic.Int64
	// header, when set, is the LeaderHeader the replica answers with.
	header *string
	// answer is the error the replica answers with; nil answers the call.
	answer error
	// hang makes the replica drop the connection without answering.
	hang bool
	// silent, when set, makes the replica keep a unary call without
	// answering until it is closed, as a replica cut off from the network
	// does: not even the caller's deadline brings an answer.
	silent chan struct{}
	// streamHeader makes a streaming call set the header as a stream's
	// response header, rather than a middleware on the HTTP response:
	// gRPC-Web then sends its trailers in the body.
	streamHeader bool
}

// follower is a replica that refuses every call, naming *leader.
func follower(leader *string) *replica {
	msg := "this scheduler replica is not the leader; the leader is at " + *leader
	if *leader == "" {
		msg = "this scheduler replica is not the leader, and no leader is known"
	}
	return &replica{name: "follower", header: leader, answer: connect.NewError(connect.CodeUnavailable, errors.New(msg))}
}

func (r *replica) outcome() error {
	r.calls.Add(1)
	if r.hang {
		panic(http.ErrAbortHandler)
	}
	return r.answer
}

func (r *replica) StartJob(_ context.Context, _ *connect.Request[batonv1.StartJobRequest]) (*connect.Response[batonv1.StartJobResponse], error) {
	if r.silent != nil {
		r.calls.Add(1)
		<-r.silent
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("cut off"))
	}
	if err := r.outcome(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&batonv1.StartJobResponse{JobId: r.name}), nil
}

func (r *replica) StreamJobOutput(_ context.Context, _ *connect.Request[batonv1.StreamJobOutputRequest], stream *connect.ServerStream[batonv1.StreamJobOutputResponse]) error {
	if r.streamHeader && r.header != nil {
		stream.ResponseHeader().Set(serving.LeaderHeader, *r.header)
	}
	if err := r.outcome(); err != nil {
		return err
	}
	return stream.Send(&batonv1.StreamJobOutputResponse{Event: &batonv1.StreamJobOutputResponse_Status{Status: &batonv1.JobStatus{JobId: r.name}}})
}

// serveReplica serves r on loopback h2c until the test ends. A follower
// sets LeaderHeader on the HTTP response, before the handler answers, so
// that every protocol carries it in the response headers.
func serveReplica(t *testing.T, r *replica) *replica {
	t.Helper()
	path, h := batonv1connect.NewSchedulerServiceHandler(r)
	mux := http.NewServeMux()
	mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.header != nil && !r.streamHeader {
			w.Header().Set(serving.LeaderHeader, *r.header)
		}
		h.ServeHTTP(w, req)
	}))
	srv, err := serving.Listen("127.0.0.1:0", mux, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.addr = srv.Addr().String()
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	return r
}

// deadAddr is a loopback address nothing listens on: dialling it is
// refused.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func following(t *testing.T, addrs ...string) *http.Client {
	t.Helper()
	hc := serving.NewHTTPClient(nil)
	rt, err := serving.FollowLeader(hc.Transport, addrs)
	if err != nil {
		t.Fatal(err)
	}
	hc.Transport = rt
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

var followProtocols = []struct {
	name string
	opts []connect.ClientOption
}{
	{"connect", nil},
	{"connect+json", []connect.ClientOption{connect.WithProtoJSON()}},
	{"grpc", []connect.ClientOption{connect.WithGRPC()}},
	{"grpc-web", []connect.ClientOption{connect.WithGRPCWeb()}},
}

func startJob(ctx context.Context, c batonv1connect.SchedulerServiceClient) (string, error) {
	res, err := c.StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{Command: "true"}))
	if err != nil {
		return "", err
	}
	return res.Msg.GetJobId(), nil
}

func streamOutput(ctx context.Context, c batonv1connect.SchedulerServiceClient) (string, error) {
	stream, err := c.StreamJobOutput(ctx, connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: "j"}))
	if err != nil {
		return "", err
	}
	defer stream.Close()
	var who string
	for stream.Receive() {
		who = stream.Msg().GetStatus().GetJobId()
	}
	return who, stream.Err()
}

// TestFollowLeaderFindsTheLeader: with [dead, follower, bystander,
// leader], unary and server-streaming calls reach the leader once each, in
// every protocol, straight from the follower that names it, and the next
// calls go to the leader straight away.
func TestFollowLeaderFindsTheLeader(t *testing.T) {
	t.Parallel()
	calls := []struct {
		name         string
		call         func(context.Context, batonv1connect.SchedulerServiceClient) (string, error)
		streamHeader bool
	}{
		{"unary", startJob, false},
		{"server streaming", streamOutput, false},
		{"server streaming, header from the handler", streamOutput, true},
	}
	for _, p := range followProtocols {
		for _, cc := range calls {
			call := cc.call
			t.Run(p.name+"/"+cc.name, func(t *testing.T) {
				t.Parallel()
				leader := serveReplica(t, &replica{name: "leader"})
				f := follower(&leader.addr)
				f.streamHeader = cc.streamHeader
				none := ""
				bystander := serveReplica(t, follower(&none))
				follower := serveReplica(t, f)
				dead := deadAddr(t)
				hc := following(t, dead, follower.addr, bystander.addr, leader.addr)
				c := batonv1connect.NewSchedulerServiceClient(hc, serving.BaseURL(dead, false), p.opts...)

				for i := range 3 {
					who, err := call(t.Context(), c)
					if err != nil {
						t.Fatalf("call %d: %v", i, err)
					}
					if who != "leader" {
						t.Fatalf("call %d answered by %q, want the leader", i, who)
					}
				}
				if n := leader.calls.Load(); n != 3 {
					t.Errorf("the leader got %d calls, want 3", n)
				}
				if n := follower.calls.Load(); n != 1 {
					t.Errorf("the follower got %d calls, want 1: the leader it named was not remembered", n)
				}
				if n := bystander.calls.Load(); n != 0 {
					t.Errorf("the replica between the follower and the leader got %d calls: the leader named was not followed", n)
				}
			})
		}
	}
}

// TestFollowLeaderGoesOnlyToListedAddresses is the attack: a replica names
// a leader that is not in the list. The request, and the token it
// carries, must not go there; the next listed address gets it.
func TestFollowLeaderGoesOnlyToListedAddresses(t *testing.T) {
	t.Parallel()
	for _, p := range followProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			thief := serveReplica(t, &replica{name: "thief"})
			leader := serveReplica(t, &replica{name: "leader"})
			liar := serveReplica(t, follower(&thief.addr))
			hc := following(t, liar.addr, leader.addr)
			c := batonv1connect.NewSchedulerServiceClient(hc, serving.BaseURL(liar.addr, false), p.opts...)

			req := connect.NewRequest(&batonv1.StartJobRequest{Command: "true"})
			req.Header().Set("Authorization", "Bearer s3cret")
			res, err := c.StartJob(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			if who := res.Msg.GetJobId(); who != "leader" {
				t.Errorf("answered by %q, want the listed leader", who)
			}
			if n := thief.calls.Load(); n != 0 {
				t.Errorf("the unlisted address a replica named got %d calls", n)
			}
		})
	}
}

// TestFollowLeaderNeverSendsTwiceWhatMayHaveActed: an answer that is not
// a refusal, and a connection lost after the request went out, end the
// call: the next address must not run it again.
func TestFollowLeaderNeverSendsTwiceWhatMayHaveActed(t *testing.T) {
	t.Parallel()
	elsewhere := "127.0.0.1:1"
	tests := []struct {
		name  string
		first func() *replica
		code  connect.Code
	}{
		{"unavailable without the header", func() *replica {
			return &replica{name: "first", answer: connect.NewError(connect.CodeUnavailable, errors.New("the job's worker cannot be reached"))}
		}, connect.CodeUnavailable},
		{"another code with the header", func() *replica {
			return &replica{name: "first", header: &elsewhere, answer: connect.NewError(connect.CodeFailedPrecondition, errors.New("the worker is draining"))}
		}, connect.CodeFailedPrecondition},
		// The stream is reset after the handler got the request.
		{"connection dropped", func() *replica { return &replica{name: "first", hang: true} }, connect.CodeInternal},
	}
	for _, p := range followProtocols {
		for _, tt := range tests {
			t.Run(p.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				first := serveReplica(t, tt.first())
				second := serveReplica(t, &replica{name: "second"})
				hc := following(t, first.addr, second.addr)
				c := batonv1connect.NewSchedulerServiceClient(hc, serving.BaseURL(first.addr, false), p.opts...)
				_, err := startJob(t.Context(), c)
				if connect.CodeOf(err) != tt.code {
					t.Fatalf("err = %v, want the first address's %v", err, tt.code)
				}
				if n := first.calls.Load(); n != 1 {
					t.Errorf("the first address got %d calls, want 1", n)
				}
				if n := second.calls.Load(); n != 0 {
					t.Errorf("the second address got %d calls: a call that may have acted was sent again", n)
				}
			})
		}
	}
}

// TestFollowLeaderMovesOnFromASilentLeader: a leader that takes a call
// and never answers (cut off from the network) gets it once, and is not
// sent it again when the caller's deadline passes; the next call goes to
// the next address first, not to the silent one.
func TestFollowLeaderMovesOnFromASilentLeader(t *testing.T) {
	t.Parallel()
	for _, p := range followProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			silent := serveReplica(t, &replica{name: "silent", silent: make(chan struct{})})
			t.Cleanup(func() { close(silent.silent) })
			leader := serveReplica(t, &replica{name: "leader"})
			hc := following(t, silent.addr, leader.addr)
			c := batonv1connect.NewSchedulerServiceClient(hc, serving.BaseURL(silent.addr, false), p.opts...)

			ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
			defer cancel()
			if _, err := startJob(ctx, c); connect.CodeOf(err) != connect.CodeDeadlineExceeded {
				t.Fatalf("the call to the silent leader: %v, want deadline_exceeded", err)
			}
			if n := leader.calls.Load(); n != 0 {
				t.Fatalf("a call that may have acted was sent again (%d calls)", n)
			}
			ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			if who, err := startJob(ctx, c); err != nil || who != "leader" {
				t.Fatalf("the next call answered by %q (%v), want the next address", who, err)
			}
			if n := silent.calls.Load(); n != 1 {
				t.Errorf("the silent leader got %d calls, want 1", n)
			}
		})
	}
}

// TestFollowLeaderHeaderOnASuccessIsNoRefusal: a success that carries the
// header is the answer, and is not sent again.
func TestFollowLeaderHeaderOnASuccessIsNoRefusal(t *testing.T) {
	t.Parallel()
	for _, p := range followProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			other := serveReplica(t, &replica{name: "other"})
			odd := &replica{name: "odd"}
			path, h := batonv1connect.NewSchedulerServiceHandler(odd)
			mux := http.NewServeMux()
			mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				w.Header().Set(serving.LeaderHeader, other.addr)
				h.ServeHTTP(w, req)
			}))
			srv, err := serving.Listen("127.0.0.1:0", mux, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- srv.Serve() }()
			t.Cleanup(func() { _ = srv.Shutdown(context.Background()); <-done })
			odd.addr = srv.Addr().String()

			hc := following(t, odd.addr, other.addr)
			c := batonv1connect.NewSchedulerServiceClient(hc, serving.BaseURL(odd.addr, false), p.opts...)
			for name, call := range map[string]func(context.Context, batonv1connect.SchedulerServiceClient) (string, error){"unary": startJob, "stream": streamOutput} {
				who, err := call(t.Context(), c)
				if err != nil || who != "odd" {
					t.Errorf("%s: answered by %q (%v), want the first address's answer", name, who, err)
				}
			}
			if n := other.calls.Load(); n != 0 {
				t.Errorf("a success was sent again (%d calls)", n)
			}
		})
	}
}

// TestFollowLeaderIsBounded: replicas that know no leader (an election
// under way) refuse without naming one; the call ends after a few passes
// with their refusal, and a context that ends first ends it sooner.
func TestFollowLeaderIsBounded(t *testing.T) {
	t.Parallel()
	none := ""
	a := serveReplica(t, follower(&none))
	b := serveReplica(t, follower(&none))
	hc := following(t, a.addr, b.addr)
	c := batonv1connect.NewSchedulerServiceClient(hc, serving.BaseURL(a.addr, false))

	_, err := startJob(t.Context(), c)
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "no leader is known") {
		t.Fatalf("err = %v, want the replicas' refusal", err)
	}
	sent := a.calls.Load() + b.calls.Load()
	if sent < 4 || sent > 8 {
		t.Errorf("the call was sent %d times, want a few passes over 2 addresses", sent)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := startJob(ctx, c); connect.CodeOf(err) != connect.CodeCanceled {
		t.Errorf("with a canceled context: %v, want canceled", err)
	}
}

// TestFollowLeaderSendsAStreamOnce: a body of unknown length (a stream the
// caller is still writing) cannot be sent twice; a refusal of it is the
// answer, and the leader it names gets the next request.
func TestFollowLeaderSendsAStreamOnce(t *testing.T) {
	t.Parallel()
	leader := serveReplica(t, &replica{name: "leader"})
	follower := serveReplica(t, follower(&leader.addr))
	hc := following(t, follower.addr, leader.addr)

	url := serving.BaseURL(follower.addr, false) + batonv1connect.SchedulerServiceStartJobProcedure
	body := io.NopCloser(strings.NewReader("{}"))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	_ = res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable || leader.calls.Load() != 0 {
		t.Fatalf("status %d, leader calls %d: want the follower's refusal, not a second send", res.StatusCode, leader.calls.Load())
	}

	c := batonv1connect.NewSchedulerServiceClient(hc, serving.BaseURL(follower.addr, false))
	if who, err := startJob(t.Context(), c); err != nil || who != "leader" {
		t.Fatalf("next call answered by %q (%v), want the leader named before", who, err)
	}
	if n := follower.calls.Load(); n != 1 {
		t.Errorf("the follower got %d calls, want 1", n)
	}
}

func TestFollowLeaderTakesHostPorts(t *testing.T) {
	t.Parallel()
	for _, addrs := range [][]string{nil, {"a:1", ""}, {"http://a:1"}, {"a"}, {":1"}} {
		if _, err := serving.FollowLeader(http.DefaultTransport, addrs); err == nil {
			t.Errorf("FollowLeader(%q) took it", addrs)
		}
	}
}

// TestFollowLeaderRidesOutAnElection: a follower names a leader that has
// just died until, a moment later, a new one is elected; the call waits
// for it rather than failing at once, and reaches the new leader, once.
func TestFollowLeaderRidesOutAnElection(t *testing.T) {
	t.Parallel()
	newLeader := serveReplica(t, &replica{name: "new leader"})
	dead := deadAddr(t)
	var elected atomic.Pointer[time.Time]
	f := &replica{name: "follower", answer: connect.NewError(connect.CodeUnavailable, errors.New("this scheduler replica is not the leader"))}
	path, h := batonv1connect.NewSchedulerServiceHandler(f)
	mux := http.NewServeMux()
	mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		now := time.Now()
		elected.CompareAndSwap(nil, new(now.Add(300*time.Millisecond)))
		named := dead
		if now.After(*elected.Load()) {
			named = newLeader.addr
		}
		w.Header().Set(serving.LeaderHeader, named)
		h.ServeHTTP(w, req)
	}))
	srv, err := serving.Listen("127.0.0.1:0", mux, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()); <-done })
	f.addr = srv.Addr().String()

	hc := following(t, dead, f.addr, newLeader.addr)
	c := batonv1connect.NewSchedulerServiceClient(hc, serving.BaseURL(f.addr, false))
	who, err := startJob(t.Context(), c)
	if err != nil || who != "new leader" {
		t.Fatalf("answered by %q (%v), want the new leader", who, err)
	}
	if n := newLeader.calls.Load(); n != 1 {
		t.Errorf("the new leader got %d calls, want 1", n)
	}
}
