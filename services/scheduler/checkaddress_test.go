package scheduler_test

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/serving"
)

// standIn serves what a worker's listener serves beside WorkerService
// (gRPC health for any caller it authenticates) over tlsConf, or h2c when
// tlsConf is nil, and returns its address.
func standIn(t *testing.T, creds *identity.Credentials, tlsConf *tls.Config) string {
	t.Helper()
	mux, _ := serving.Mux(batonv1connect.WorkerServiceName)
	auth := identity.NewAuthenticator(creds, nil, creds == nil)
	srv, err := serving.Listen("127.0.0.1:0", auth.Middleware(identity.GuardOperations(mux)), tlsConf, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve() })
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		wg.Wait()
	})
	return srv.Addr().String()
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestCheckWorkerAddress: the scheduler dials the address a worker names
// over the worker mTLS it dials workers with, and expects the caller there.
// A worker cannot have its address confirmed by a listener holding another
// worker's certificate, nor one of another cluster, and only a worker may
// ask at all.
func TestCheckWorkerAddress(t *testing.T) {
	t.Parallel()
	c := startSecureCluster(t)
	w1 := c.creds(t, identity.Principal{Role: identity.RoleWorker, Name: "w1"})
	w2 := c.creds(t, identity.Principal{Role: identity.RoleWorker, Name: "w2"})
	asW1 := batonv1connect.NewSchedulerServiceClient(c.httpClient(t, w1.ClientTLS(identity.Expect(identity.Scheduler))), c.schedURL)

	other := startSecureCluster(t)
	otherW1 := other.creds(t, identity.Principal{Role: identity.RoleWorker, Name: "w1"})

	for _, tc := range []struct {
		name      string
		addr      string
		reachable bool
		// errHas is a part of the error the scheduler must report.
		errHas string
	}{
		{name: "its own certificate", addr: standIn(t, w1, w1.ServerTLS()), reachable: true},
		{name: "another worker's certificate", addr: standIn(t, w2, w2.ServerTLS()), errHas: "worker/w2"},
		{name: "its name from another cluster's CA", addr: standIn(t, otherW1, otherW1.ServerTLS()), errHas: "certificate"},
		{name: "nothing listening", addr: closedAddr(t), errHas: "refused"},
		{name: "no TLS there", addr: standIn(t, nil, nil), errHas: "HTTP response to HTTPS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := asW1.CheckWorkerAddress(t.Context(), connect.NewRequest(&batonv1.CheckWorkerAddressRequest{Address: tc.addr}))
			if err != nil {
				t.Fatal(err)
			}
			got := res.Msg
			if got.GetReachable() != tc.reachable || got.GetExpected() != "worker/w1" {
				t.Fatalf("reachable %v, expected %q (error %q); want reachable %v, expected worker/w1", got.GetReachable(), got.GetExpected(), got.GetError(), tc.reachable)
			}
			if tc.reachable != (got.GetError() == "") || !strings.Contains(got.GetError(), tc.errHas) {
				t.Errorf("error %q, want one mentioning %q", got.GetError(), tc.errHas)
			}
		})
	}

	// Only workers ask, with an address that is one.
	admin := c.client(t, identity.Principal{Role: identity.RoleAdmin, Name: "root"})
	_, err := admin.CheckWorkerAddress(t.Context(), connect.NewRequest(&batonv1.CheckWorkerAddressRequest{Address: standIn(t, w1, w1.ServerTLS())}))
	wantCode(t, "an admin asking", err, connect.CodePermissionDenied)
	for _, addr := range []string{"", "no-port", "127.0.0.1:", "a b:1", strings.Repeat("a", 260) + ":1"} {
		_, err := asW1.CheckWorkerAddress(t.Context(), connect.NewRequest(&batonv1.CheckWorkerAddressRequest{Address: addr}))
		wantCode(t, "address "+addr, err, connect.CodeInvalidArgument)
	}
}

// TestCheckWorkerAddressPlain: without TLS there is no identity to expect;
// the check says whether anything answers as a worker's listener does.
func TestCheckWorkerAddressPlain(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", nil)
	res, err := s.client.CheckWorkerAddress(t.Context(), connect.NewRequest(&batonv1.CheckWorkerAddressRequest{Address: standIn(t, nil, nil)}))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Msg.GetReachable() || res.Msg.GetExpected() != "" {
		t.Errorf("a plain listener: %v, want reachable with no identity expected", res.Msg)
	}
	res, err = s.client.CheckWorkerAddress(t.Context(), connect.NewRequest(&batonv1.CheckWorkerAddressRequest{Address: closedAddr(t)}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.GetReachable() || res.Msg.GetError() == "" {
		t.Errorf("nothing listening: %v, want unreachable with the reason", res.Msg)
	}
}
