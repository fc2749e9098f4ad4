package scheduler_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/jobrun"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
	"github.com/baton-run/baton/services/worker"
)

// secureCluster is a scheduler and workers over mutual TLS, with
// certificates made in the test, plus the listeners a client would use:
// the scheduler's mTLS port and an HTTP port that takes bearer tokens.
type secureCluster struct {
	ca  *identity.Authority
	dir string

	schedURL   string // https, mTLS
	schedCreds *identity.Credentials
	httpURL    string // http, bearer tokens only
	httpAuth   *identity.Authenticator
	workers    map[string]*secureWorker

	// schedCalls and workerCalls count calls that reached a handler.
	schedCalls  atomic.Int64
	workerCalls atomic.Int64
	// onBehalfOf is what workers were told, per job started.
	onBehalfOf sync.Map
	// sawOnBehalfOf records any on-behalf-of the scheduler believed.
	sawOnBehalfOf atomic.Value
	// handled counts the calls that reached a handler by "principal
	// procedure", on the scheduler and the workers alike.
	handledMu sync.Mutex
	handled   map[string]int

	schedLog  *syncBuffer
	auditFile string
	tokens    map[string]string // by principal, e.g. "user/tess"
	// capacity is the most jobs each worker runs at once; 0 means no limit.
	capacity int
	caPool   *x509.CertPool
}

type secureWorker struct {
	url   string // https, mTLS
	plain string // http on loopback, authentication without anonymous
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// counter is an innermost interceptor: a call it sees reached the handler.
func (c *secureCluster) counter(n *atomic.Int64, seen func(ctx context.Context, req connect.AnyRequest)) connect.Interceptor {
	count := func(ctx context.Context, procedure string) {
		n.Add(1)
		p, _ := identity.FromContext(ctx)
		c.handledMu.Lock()
		c.handled[p.String()+" "+procedure]++
		c.handledMu.Unlock()
	}
	return &countingInterceptor{count: count, seen: seen}
}

// handledBy returns how many calls of p to procedure reached a handler.
func (c *secureCluster) handledBy(p identity.Principal, procedure string) int {
	c.handledMu.Lock()
	defer c.handledMu.Unlock()
	return c.handled[p.String()+" "+procedure]
}

type countingInterceptor struct {
	count func(ctx context.Context, procedure string)
	seen  func(ctx context.Context, req connect.AnyRequest)
}

func (i *countingInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		i.count(ctx, req.Spec().Procedure)
		if i.seen != nil {
			i.seen(ctx, req)
		}
		return next(ctx, req)
	}
}

func (i *countingInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *countingInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		i.count(ctx, conn.Spec().Procedure)
		return next(ctx, conn)
	}
}

// issue writes p's certificate and key into the cluster's directory.
func (c *secureCluster) issue(t *testing.T, p identity.Principal, opts identity.IssueOptions) (crt, key string) {
	t.Helper()
	opts.Hosts = append(opts.Hosts, "127.0.0.1", "localhost")
	certPEM, keyPEM, err := c.ca.Issue(p, opts)
	if err != nil {
		t.Fatal(err)
	}
	base := identity.FileBase(p)
	if opts.IsCA || !opts.NotAfter.IsZero() || opts.ExtKeyUsage != nil {
		base += "-variant-" + time.Now().Format("150405.000000000")
	}
	crt, key, err = identity.WriteKeyPair(c.dir, base, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return crt, key
}

func (c *secureCluster) creds(t *testing.T, p identity.Principal) *identity.Credentials {
	t.Helper()
	crt, key := c.issue(t, p, identity.IssueOptions{})
	creds, err := identity.LoadCredentials(filepath.Join(c.dir, "ca.crt"), crt, key)
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

// clientTLS is what a CLI or grpc client uses: standard verification of
// the server against the CA (host names included) and a client
// certificate, if crt is set.
func (c *secureCluster) clientTLS(t *testing.T, crt, key string) *tls.Config {
	t.Helper()
	conf := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: c.caPool}
	if crt != "" {
		pair, err := tls.LoadX509KeyPair(crt, key)
		if err != nil {
			t.Fatal(err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return conf
}

func (c *secureCluster) httpClient(t *testing.T, conf *tls.Config) *http.Client {
	hc := serving.NewHTTPClient(conf)
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// client is a SchedulerService client with p's certificate.
func (c *secureCluster) client(t *testing.T, p identity.Principal) batonv1connect.SchedulerServiceClient {
	t.Helper()
	crt, key := c.issue(t, p, identity.IssueOptions{})
	return batonv1connect.NewSchedulerServiceClient(c.httpClient(t, c.clientTLS(t, crt, key)), c.schedURL)
}

// workerClient is a WorkerService client of worker name, with p's
// certificate.
func (c *secureCluster) workerClient(t *testing.T, name string, p identity.Principal) batonv1connect.WorkerServiceClient {
	t.Helper()
	crt, key := c.issue(t, p, identity.IssueOptions{})
	return batonv1connect.NewWorkerServiceClient(c.httpClient(t, c.clientTLS(t, crt, key)), c.workers[name].url)
}

// startSecureCluster starts a scheduler and the named workers over mTLS.
func startSecureCluster(t *testing.T, workers ...string) *secureCluster {
	return startSecureClusterCapacity(t, 0, workers...)
}

// startSecureClusterCapacity is startSecureCluster with workers that run at
// most capacity jobs at once (0: no limit).
func startSecureClusterCapacity(t *testing.T, capacity int, workers ...string) *secureCluster {
	t.Helper()
	ca, err := identity.NewAuthority("test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := identity.WriteKeyPair(dir, "ca", ca.CertPEM(), key); err != nil {
		t.Fatal(err)
	}
	c := &secureCluster{
		ca: ca, dir: dir, workers: map[string]*secureWorker{},
		schedLog: &syncBuffer{}, auditFile: filepath.Join(dir, "audit.log"),
		tokens: map[string]string{}, caPool: x509.NewCertPool(), handled: map[string]int{}, capacity: capacity,
	}
	c.caPool.AddCert(ca.Cert)
	c.sawOnBehalfOf.Store("")

	logger := slog.New(slog.NewTextHandler(c.schedLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	audit, err := identity.OpenAuditLog(c.auditFile)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.Context(), filepath.Join(dir, "baton.db"))
	if err != nil {
		t.Fatal(err)
	}
	creds := c.creds(t, identity.Scheduler)
	c.schedCreds = creds
	s, err := scheduler.New(t.Context(), scheduler.Options{
		Store: st, WorkerTLS: creds, Audit: audit, Logger: logger,
		HeartbeatInterval: 200 * time.Millisecond,
		Interceptors: []connect.Interceptor{c.counter(&c.schedCalls, func(ctx context.Context, _ connect.AnyRequest) {
			if obo := identity.OnBehalfOf(ctx); obo != "" {
				c.sawOnBehalfOf.Store(obo)
			}
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	var entries []string
	for _, p := range []identity.Principal{
		{Role: identity.RoleUser, Name: "tess"},
		{Role: identity.RoleViewer, Name: "vic"},
	} {
		token, entry, err := identity.NewToken(p, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		c.tokens[p.String()] = token
		entries = append(entries, entry)
	}
	expiredToken, expiredEntry, err := identity.NewToken(identity.Principal{Role: identity.RoleUser, Name: "old"}, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c.tokens["expired"] = expiredToken
	tokens, err := identity.ParseTokens(append(entries, expiredEntry))
	if err != nil {
		t.Fatal(err)
	}

	grpcSrv, err := serving.Listen("127.0.0.1:0", identity.NewAuthenticator(creds, nil, false).Middleware(s.Handler()), creds.ServerTLS(), logger)
	if err != nil {
		t.Fatal(err)
	}
	c.httpAuth = identity.NewAuthenticator(nil, tokens, false)
	httpSrv, err := serving.Listen("127.0.0.1:0", c.httpAuth.Middleware(s.Handler()), nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	c.schedURL = "https://" + grpcSrv.Addr().String()
	c.httpURL = "http://" + httpSrv.Addr().String()
	runCtx, stopRun := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = grpcSrv.Serve() })
	wg.Go(func() { _ = httpSrv.Serve() })
	wg.Go(func() { _ = s.Run(runCtx) })
	t.Cleanup(func() {
		stopRun()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.SetNotServing()
		_ = grpcSrv.Shutdown(ctx)
		_ = httpSrv.Shutdown(ctx)
		wg.Wait()
		_ = st.Close()
		_ = audit.Close()
	})
	for _, name := range workers {
		c.startWorker(t, name, name)
	}
	admin := c.client(t, identity.Principal{Role: identity.RoleAdmin, Name: "root"})
	waitWorkers(t, admin, batonv1.WorkerState_WORKER_STATE_READY, workers...)
	return c
}

// startWorker starts a worker registering as name with the certificate of
// certName (the same, unless a test wants an impostor).
func (c *secureCluster) startWorker(t *testing.T, name, certName string) {
	t.Helper()
	p := identity.Principal{Role: identity.RoleWorker, Name: certName}
	creds := c.creds(t, p)
	root := t.TempDir()
	scriptsDir := makeScripts(t, root)
	var w *worker.Worker
	ready := make(chan struct{})
	handler := func(auth *identity.Authenticator) http.Handler {
		return auth.Middleware(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			<-ready
			w.Handler().ServeHTTP(rw, r)
		}))
	}
	srv, err := serving.Listen("127.0.0.1:0", handler(identity.NewAuthenticator(creds, nil, false)), creds.ServerTLS(), nil)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := serving.Listen("127.0.0.1:0", handler(identity.NewAuthenticator(nil, nil, false)), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	schedHTTP := serving.NewHTTPClient(creds.ClientTLS(identity.Expect(identity.Scheduler)))
	w, err = worker.New(worker.Options{
		Name:      name,
		Address:   srv.Addr().String(),
		Scheduler: batonv1connect.NewSchedulerServiceClient(schedHTTP, c.schedURL),
		Runner: jobrun.Options{
			DataDir:         filepath.Join(root, "data"),
			ScriptsDir:      scriptsDir,
			AllowedCommands: []string{"sh", "bash"},
			StopGrace:       500 * time.Millisecond,
			Capacity:        c.capacity,
		},
		Interceptors: []connect.Interceptor{c.counter(&c.workerCalls, func(ctx context.Context, req connect.AnyRequest) {
			if m, ok := req.Any().(*batonv1.WorkerServiceStartJobRequest); ok {
				c.onBehalfOf.Store(m.GetJobId(), identity.OnBehalfOf(ctx))
			}
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	close(ready)
	c.workers[name] = &secureWorker{url: "https://" + srv.Addr().String(), plain: "http://" + plain.Addr().String()}
	runCtx, stopRun := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve() })
	wg.Go(func() { _ = plain.Serve() })
	wg.Go(func() { _ = w.Run(runCtx) })
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopRun()
		_ = srv.Shutdown(ctx)
		_ = plain.Shutdown(ctx)
		wg.Wait()
		_ = w.Close(ctx)
		schedHTTP.CloseIdleConnections()
	})
}
