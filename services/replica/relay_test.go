package replica_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/etcdmember"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/replica"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
)

// servedAsHeader is where relayTerm says whom it served a call as.
const servedAsHeader = "Served-As"

// relayTerm is a leader's API that says whom each call was served as:
// ListWorkers in a header, StreamJobOutput in its chunks, the second
// only once the test has read the first.
type relayTerm struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	next chan struct{}
}

func (relayTerm) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (relayTerm) SetNotServing()                {}
func (rt relayTerm) Handler() http.Handler {
	_, h := batonv1connect.NewSchedulerServiceHandler(rt)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == batonv1connect.SchedulerServiceQueryJobProcedure {
			// A leader that dies while answering: part of the answer,
			// then the stream is cut.
			w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
			_, _ = w.Write([]byte{0x0a, 0x40})
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		h.ServeHTTP(w, r)
	})
}

func servedAs(ctx context.Context) string {
	p, ok := identity.FromContext(ctx)
	if !ok {
		return "nobody"
	}
	return p.String()
}

func (relayTerm) ListWorkers(ctx context.Context, _ *connect.Request[batonv1.ListWorkersRequest]) (*connect.Response[batonv1.ListWorkersResponse], error) {
	// The answer has a body: flow control holds up bodies, not headers.
	res := connect.NewResponse(&batonv1.ListWorkersResponse{Leader: servedAs(ctx)})
	res.Header().Set(servedAsHeader, servedAs(ctx))
	return res, nil
}

func (rt relayTerm) StreamJobOutput(ctx context.Context, req *connect.Request[batonv1.StreamJobOutputRequest], s *connect.ServerStream[batonv1.StreamJobOutputResponse]) error {
	if req.Msg.GetFollow() {
		// A busy job's output, as much as the reader takes; random, so
		// that compression does not shrink it.
		chunk := &batonv1.OutputChunk{Data: make([]byte, 64<<10)}
		_, _ = rand.Read(chunk.Data)
		for {
			if err := s.Send(&batonv1.StreamJobOutputResponse{Event: &batonv1.StreamJobOutputResponse_Chunk{Chunk: chunk}}); err != nil {
				return err
			}
		}
	}
	for i := range 2 {
		if i > 0 {
			select {
			case <-rt.next:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		chunk := &batonv1.OutputChunk{Data: []byte(servedAs(ctx))}
		if err := s.Send(&batonv1.StreamJobOutputResponse{Event: &batonv1.StreamJobOutputResponse_Chunk{Chunk: chunk}}); err != nil {
			return err
		}
	}
	return nil
}

// relayPKI is a cluster's CA and the credentials the test uses.
type relayPKI struct {
	sched, user, other, worker *identity.Credentials
}

func newRelayPKI(t *testing.T) relayPKI {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.NewAuthority("relay")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	creds := func(p identity.Principal) *identity.Credentials {
		crt, key, err := ca.Issue(p, identity.IssueOptions{Hosts: []string{"127.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		c, k, err := identity.WriteKeyPair(dir, identity.FileBase(p), crt, key)
		if err != nil {
			t.Fatal(err)
		}
		cr, err := identity.LoadCredentials(caFile, c, k)
		if err != nil {
			t.Fatal(err)
		}
		return cr
	}
	return relayPKI{
		sched:  creds(identity.Scheduler),
		user:   creds(identity.Principal{Role: identity.RoleUser, Name: "alice"}),
		other:  creds(identity.Principal{Role: identity.RoleViewer, Name: "bob"}),
		worker: creds(identity.Principal{Role: identity.RoleWorker, Name: "w1"}),
	}
}

// startRelayReplica serves a replica as the scheduler's listener does
// (authentication, then ActOnBehalfOf): over mutual TLS with creds,
// relaying with them, or with creds nil over h2c, every caller anonymous.
// It returns its URL, the replica and its server.
func startRelayReplica(t *testing.T, creds *identity.Credentials, c *etcdmember.Cluster, rt relayTerm) (string, *replica.Replica, *httptest.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := etcdmember.NewClient(c.Endpoints(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var relayTLS *tls.Config
	if creds != nil {
		relayTLS = creds.ClientTLS(identity.Expect(identity.Scheduler))
	}
	r, err := replica.New(replica.Options{
		Client:  cli,
		Address: ln.Addr().String(),
		Lead: func(context.Context, store.Store, int64) (replica.Term, prometheus.Gatherer, error) {
			return rt, nil, nil
		},
		Logger:   slog.New(slog.NewTextHandler(t.Output(), nil)).With("replica", ln.Addr().String()),
		Relay:    func() http.RoundTripper { return serving.NewHTTPClient(relayTLS).Transport },
		RelayTLS: creds != nil,
	})
	if err != nil {
		t.Fatal(err)
	}
	auth := identity.NewAuthenticator(creds, nil, creds == nil)
	srv := httptest.NewUnstartedServer(auth.Middleware(identity.ActOnBehalfOf(r.Handler())))
	srv.Listener = ln
	srv.EnableHTTP2 = true
	url := "http://" + ln.Addr().String()
	if creds != nil {
		srv.TLS = creds.ServerTLS()
		srv.StartTLS()
		url = "https://" + ln.Addr().String()
	} else {
		var protocols http.Protocols
		protocols.SetHTTP1(true)
		protocols.SetUnencryptedHTTP2(true)
		srv.Config.Protocols = &protocols
		srv.Start()
	}
	runUntilCleanup(t, r, srv.Close, r.CloseIdleConnections, func() { cli.Close() })
	return url, r, srv
}

// startRelayPair starts a leader and a follower that knows it.
func startRelayPair(t *testing.T, creds *identity.Credentials, rt relayTerm) (leaderURL, followerURL, leaderAddr string, leaderSrv *httptest.Server) {
	t.Helper()
	c := etcdmember.StartTestCluster(t, 1)
	leaderURL, leader, leaderSrv := startRelayReplica(t, creds, c, rt)
	waitFor(t, "the first replica leading", 20*time.Second, func() bool {
		_, _, self := leader.Leader()
		return self
	})
	followerURL, follower, _ := startRelayReplica(t, creds, c, rt)
	leaderAddr, _, _ = leader.Leader()
	waitFor(t, "the follower knowing the leader", 10*time.Second, func() bool {
		addr, _, self := follower.Leader()
		return addr == leaderAddr && !self
	})
	return leaderURL, followerURL, leaderAddr, leaderSrv
}

// refusedFor checks that err is a follower's refusal naming leader.
func refusedFor(t *testing.T, err error, leader string) {
	t.Helper()
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != connect.CodeUnavailable {
		t.Fatalf("%v, want unavailable", err)
	}
	if got := cerr.Meta().Get(replica.LeaderHeader); got != leader {
		t.Errorf("%s: %q, want %q", replica.LeaderHeader, got, leader)
	}
}

// workerCalls makes each call a worker makes to the scheduler.
var workerCalls = map[string]func(context.Context, batonv1connect.SchedulerServiceClient) error{
	"RegisterWorker": func(ctx context.Context, c batonv1connect.SchedulerServiceClient) error {
		_, err := c.RegisterWorker(ctx, connect.NewRequest(&batonv1.RegisterWorkerRequest{}))
		return err
	},
	"Heartbeat": func(ctx context.Context, c batonv1connect.SchedulerServiceClient) error {
		_, err := c.Heartbeat(ctx, connect.NewRequest(&batonv1.HeartbeatRequest{}))
		return err
	},
	"DeregisterWorker": func(ctx context.Context, c batonv1connect.SchedulerServiceClient) error {
		_, err := c.DeregisterWorker(ctx, connect.NewRequest(&batonv1.DeregisterWorkerRequest{}))
		return err
	},
	"CheckWorkerAddress": func(ctx context.Context, c batonv1connect.SchedulerServiceClient) error {
		_, err := c.CheckWorkerAddress(ctx, connect.NewRequest(&batonv1.CheckWorkerAddressRequest{}))
		return err
	},
}

// TestFollowerRelaysOnPlaintext: without TLS every caller is anonymous,
// workers too. A client's call is relayed and served as the anonymous
// caller it is; a worker's procedures are not relayed but refused with the
// leader's address, so that the worker goes there itself.
func TestFollowerRelaysOnPlaintext(t *testing.T) {
	rt := relayTerm{next: make(chan struct{})}
	_, followerURL, leaderAddr, _ := startRelayPair(t, nil, rt)
	client := batonv1connect.NewSchedulerServiceClient(serving.NewHTTPClient(nil), followerURL)
	res, err := client.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
	if err != nil {
		t.Fatalf("ListWorkers through the follower: %v", err)
	}
	if got := res.Header().Get(servedAsHeader); got != "anonymous" {
		t.Errorf("the leader served the relayed call as %q, want anonymous", got)
	}
	for name, call := range workerCalls {
		t.Run(name, func(t *testing.T) { refusedFor(t, call(t.Context(), client), leaderAddr) })
	}
}

// clientOf is a scheduler client with creds' certificate.
func clientOf(creds *identity.Credentials, url string, opts ...connect.ClientOption) batonv1connect.SchedulerServiceClient {
	var tc *tls.Config = creds.ClientTLS(identity.Expect(identity.Scheduler))
	return batonv1connect.NewSchedulerServiceClient(serving.NewHTTPClient(tc), url, opts...)
}

// TestFollowerRelaysClientsCalls: a client that reaches a follower is
// served by the leader as itself, in every protocol, output streams as
// they come; it cannot pose as another client on the way; a worker's call
// and a call relayed already are refused with the leader's address; a
// leader that does not answer is named by nobody.
func TestFollowerRelaysClientsCalls(t *testing.T) {
	pki := newRelayPKI(t)
	rt := relayTerm{next: make(chan struct{})}
	leaderURL, followerURL, leaderAddr, leaderSrv := startRelayPair(t, pki.sched, rt)

	for _, p := range []struct {
		name string
		opts []connect.ClientOption
	}{
		{name: "connect"},
		{name: "grpc", opts: []connect.ClientOption{connect.WithGRPC()}},
		{name: "grpc-web", opts: []connect.ClientOption{connect.WithGRPCWeb()}},
	} {
		t.Run(p.name, func(t *testing.T) {
			req := connect.NewRequest(&batonv1.ListWorkersRequest{})
			// A client naming someone else is served as itself.
			req.Header().Set(identity.OnBehalfOfHeader, "admin/root")
			res, err := clientOf(pki.user, followerURL, p.opts...).ListWorkers(t.Context(), req)
			if err != nil {
				t.Fatalf("ListWorkers through the follower: %v", err)
			}
			if got := res.Header().Get(servedAsHeader); got != "user/alice" {
				t.Errorf("the leader served the relayed call as %q, want user/alice", got)
			}
		})
	}

	t.Run("a client naming another on the leader itself", func(t *testing.T) {
		req := connect.NewRequest(&batonv1.ListWorkersRequest{})
		req.Header().Set(identity.OnBehalfOfHeader, "admin/root")
		res, err := clientOf(pki.user, leaderURL).ListWorkers(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Header().Get(servedAsHeader); got != "user/alice" {
			t.Errorf("served as %q, want user/alice: only a scheduler names whom it acts for", got)
		}
	})

	t.Run("output stream", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		stream, err := clientOf(pki.user, followerURL).StreamJobOutput(ctx, connect.NewRequest(&batonv1.StreamJobOutputRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		for i := range 2 {
			// The leader sends the second chunk only once the first has
			// come through: a relay that buffered would hang here.
			if i > 0 {
				rt.next <- struct{}{}
			}
			if !stream.Receive() {
				t.Fatalf("chunk %d: %v", i+1, stream.Err())
			}
			if got := string(stream.Msg().GetChunk().GetData()); got != "user/alice" {
				t.Errorf("chunk %d was sent for %q, want user/alice", i+1, got)
			}
		}
		if stream.Receive() || stream.Err() != nil {
			t.Errorf("after the last chunk: message %v, error %v", stream.Msg(), stream.Err())
		}
	})

	t.Run("a worker is refused", func(t *testing.T) {
		_, err := clientOf(pki.worker, followerURL).ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
		refusedFor(t, err, leaderAddr)
	})
	t.Run("a relayed call is refused", func(t *testing.T) {
		req := connect.NewRequest(&batonv1.ListWorkersRequest{})
		req.Header().Set(identity.RelayedByHeader, "127.0.0.1:1")
		_, err := clientOf(pki.user, followerURL).ListWorkers(t.Context(), req)
		refusedFor(t, err, leaderAddr)
	})
	for name, call := range workerCalls {
		t.Run("a client's "+name+" is refused", func(t *testing.T) {
			refusedFor(t, call(t.Context(), clientOf(pki.user, followerURL)), leaderAddr)
		})
	}

	t.Run("the leader dies while answering", func(t *testing.T) {
		_, err := clientOf(pki.user, followerURL).QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: "0190a000-0000-7000-8000-000000000001"}))
		var cerr *connect.Error
		if !errors.As(err, &cerr) || cerr.Code() != connect.CodeUnavailable {
			t.Fatalf("QueryJob: %v, want unavailable, which clients try again", err)
		}
	})
	t.Run("the leader does not answer", func(t *testing.T) {
		leaderSrv.Close()
		_, err := clientOf(pki.user, followerURL).ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
		var cerr *connect.Error
		if !errors.As(err, &cerr) || cerr.Code() != connect.CodeUnavailable || !strings.Contains(cerr.Message(), "got no answer from the leader") {
			t.Fatalf("ListWorkers: %v, want unavailable: the leader could not be reached", err)
		}
		if got, ok := cerr.Meta()[http.CanonicalHeaderKey(replica.LeaderHeader)]; !ok || got[0] != "" {
			t.Errorf("%s: %q, want present and empty: the caller should try again, not go to a leader that does not answer", replica.LeaderHeader, got)
		}
	})
}

// TestRelayedReaderThatStopsStallsOnlyItself: a client that opens output
// streams through a follower and stops reading them holds up its own
// calls at most; another client's calls through the same follower are
// answered.
func TestRelayedReaderThatStopsStallsOnlyItself(t *testing.T) {
	pki := newRelayPKI(t)
	_, followerURL, _, _ := startRelayPair(t, pki.sched, relayTerm{next: make(chan struct{})})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// Each stream holds as much of its connection's flow-control window
	// as one stream may (4 MiB of 16 MiB): six would hold it all.
	stalled := clientOf(pki.user, followerURL)
	for range 6 {
		s, err := stalled.StreamJobOutput(ctx, connect.NewRequest(&batonv1.StreamJobOutputRequest{Follow: true}))
		if err != nil {
			t.Fatal(err)
		}
		if !s.Receive() {
			t.Fatalf("the first chunk: %v", s.Err())
		}
		defer s.Close()
	}
	// Let the unread output fill the windows.
	time.Sleep(time.Second)
	callCtx, callCancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer callCancel()
	res, err := clientOf(pki.other, followerURL).ListWorkers(callCtx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
	if err != nil {
		t.Fatalf("another client's call through the follower: %v", err)
	}
	if got := res.Msg.GetLeader(); got != "viewer/bob" {
		t.Errorf("served as %q, want viewer/bob", got)
	}
}
