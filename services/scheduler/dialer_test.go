package scheduler

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/serving"
)

// TestDialerSendsTheEpochOverTLS: the per-worker clients of mutual TLS
// carry the leader's epoch, on unary calls and streams alike, as the shared
// h2c client does (TestWorkerCallsCarryTheEpoch).
func TestDialerSendsTheEpochOverTLS(t *testing.T) {
	t.Parallel()
	ca, err := identity.NewAuthority("test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	caFile, _, err := identity.WriteKeyPair(dir, "ca", ca.CertPEM(), key)
	if err != nil {
		t.Fatal(err)
	}
	creds := func(p identity.Principal) *identity.Credentials {
		crt, key, err := ca.Issue(p, identity.IssueOptions{Hosts: []string{"127.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		crtFile, keyFile, err := identity.WriteKeyPair(dir, identity.FileBase(p), crt, key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := identity.LoadCredentials(caFile, crtFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	workerCreds := creds(identity.Principal{Role: identity.RoleWorker, Name: "w1"})

	var mu sync.Mutex
	var got []string
	record := func(h http.Header) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, h.Get("Baton-Epoch"))
	}
	_, h := batonv1connect.NewWorkerServiceHandler(batonv1connect.UnimplementedWorkerServiceHandler{})
	srv, err := serving.Listen("127.0.0.1:0", http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		record(r.Header)
		h.ServeHTTP(rw, r)
	}), workerCreds.ServerTLS(), nil)
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

	s := &Scheduler{opts: Options{WorkerTLS: creds(identity.Scheduler), Epoch: 42}}
	c := s.dialer()("w1", srv.Addr().String())
	_, err = c.QueryJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: "01890000-0000-7000-8000-000000000001"}))
	if connect.CodeOf(err) != connect.CodeUnimplemented {
		t.Fatalf("QueryJob: %v, want the stand-in's unimplemented", err)
	}
	stream, err := c.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStreamJobOutputRequest{JobId: "01890000-0000-7000-8000-000000000001"}))
	if err != nil {
		t.Fatal(err)
	}
	for stream.Receive() {
	}
	if connect.CodeOf(stream.Err()) != connect.CodeUnimplemented {
		t.Fatalf("StreamJobOutput: %v, want the stand-in's unimplemented", stream.Err())
	}
	_ = stream.Close()

	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0] != "42" || got[1] != "42" {
		t.Errorf("epoch headers the worker saw: %q, want two of 42", got)
	}
}
