package replica_test

import (
	"context"
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
	return h
}

func servedAs(ctx context.Context) string {
	p, ok := identity.FromContext(ctx)
	if !ok {
		return "nobody"
	}
	return p.String()
}

func (relayTerm) ListWorkers(ctx context.Context, _ *connect.Request[batonv1.ListWorkersRequest]) (*connect.Response[batonv1.ListWorkersResponse], error) {
	res := connect.NewResponse(&batonv1.ListWorkersResponse{})
	res.Header().Set(servedAsHeader, servedAs(ctx))
	return res, nil
}

func (rt relayTerm) StreamJobOutput(ctx context.Context, _ *connect.Request[batonv1.StreamJobOutputRequest], s *connect.ServerStream[batonv1.StreamJobOutputResponse]) error {
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
	sched, user, worker *identity.Credentials
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
		worker: creds(identity.Principal{Role: identity.RoleWorker, Name: "w1"}),
	}
}

// startRelayReplica serves a replica over mutual TLS as the scheduler's
// listener does (authentication, then ActOnBehalfOf), relaying with the
// scheduler's certificate, and returns its URL, the replica and its
// server.
func startRelayReplica(t *testing.T, pki relayPKI, c *etcdmember.Cluster, rt relayTerm) (string, *replica.Replica, *httptest.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := etcdmember.NewClient(c.Endpoints(), nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := replica.New(replica.Options{
		Client:  cli,
		Address: ln.Addr().String(),
		Lead: func(context.Context, store.Store, int64) (replica.Term, prometheus.Gatherer, error) {
			return rt, nil, nil
		},
		Logger:   slog.New(slog.NewTextHandler(t.Output(), nil)).With("replica", ln.Addr().String()),
		Relay:    serving.NewHTTPClient(pki.sched.ClientTLS(identity.Expect(identity.Scheduler))).Transport,
		RelayTLS: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	auth := identity.NewAuthenticator(pki.sched, nil, false)
	srv := httptest.NewUnstartedServer(auth.Middleware(identity.ActOnBehalfOf(r.Handler())))
	srv.Listener = ln
	srv.EnableHTTP2 = true
	srv.TLS = pki.sched.ServerTLS()
	srv.StartTLS()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Close()
		cli.Close()
	})
	return "https://" + ln.Addr().String(), r, srv
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
	c := etcdmember.StartTestCluster(t, 1)
	rt := relayTerm{next: make(chan struct{})}
	leaderURL, leader, leaderSrv := startRelayReplica(t, pki, c, rt)
	waitFor(t, "the first replica leading", 20*time.Second, func() bool {
		_, _, self := leader.Leader()
		return self
	})
	followerURL, follower, _ := startRelayReplica(t, pki, c, rt)
	leaderAddr, _, _ := leader.Leader()
	waitFor(t, "the follower knowing the leader", 10*time.Second, func() bool {
		addr, _, self := follower.Leader()
		return addr == leaderAddr && !self
	})

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

	refusals := []struct {
		name   string
		creds  *identity.Credentials
		header string
	}{
		{name: "a worker", creds: pki.worker},
		{name: "a relayed call", creds: pki.user, header: "127.0.0.1:1"},
	}
	for _, rc := range refusals {
		t.Run(rc.name+" is refused", func(t *testing.T) {
			req := connect.NewRequest(&batonv1.ListWorkersRequest{})
			if rc.header != "" {
				req.Header().Set(identity.RelayedByHeader, rc.header)
			}
			_, err := clientOf(rc.creds, followerURL).ListWorkers(t.Context(), req)
			var cerr *connect.Error
			if !errors.As(err, &cerr) || cerr.Code() != connect.CodeUnavailable {
				t.Fatalf("ListWorkers: %v, want unavailable", err)
			}
			if got := cerr.Meta().Get(replica.LeaderHeader); got != leaderAddr {
				t.Errorf("%s: %q, want %q", replica.LeaderHeader, got, leaderAddr)
			}
		})
	}

	t.Run("the leader does not answer", func(t *testing.T) {
		leaderSrv.Close()
		_, err := clientOf(pki.user, followerURL).ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
		var cerr *connect.Error
		if !errors.As(err, &cerr) || cerr.Code() != connect.CodeUnavailable || !strings.Contains(cerr.Message(), "could not reach the leader") {
			t.Fatalf("ListWorkers: %v, want unavailable: the leader could not be reached", err)
		}
		if got, ok := cerr.Meta()[http.CanonicalHeaderKey(replica.LeaderHeader)]; !ok || got[0] != "" {
			t.Errorf("%s: %q, want present and empty: the caller should try again, not go to a leader that does not answer", replica.LeaderHeader, got)
		}
	})
}
