package serving_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/serving"
)

// waitTimeout bounds every wait; machines are shared and noisy.
const waitTimeout = 20 * time.Second

// observation is what a QueryJob handler saw of its context.
type observation struct {
	deadline    time.Time
	hasDeadline bool
	// err is the context's error when the handler returned: set when the
	// call's deadline passed (or the client went away) while it blocked.
	err error
}

// probe tells the fake worker how to answer QueryJob for one job id.
type probe struct {
	// release, if not nil, blocks the handler until it is closed or the
	// call's context ends.
	release chan struct{}
	// seen receives one observation per call; sends never block (extra
	// calls beyond its capacity are dropped).
	seen chan observation
}

// fakeWorker is a WorkerService whose QueryJob answers at once, or blocks
// for the job ids a test registered a probe for. It counts calls and how
// many run at once. Safe for concurrent use.
type fakeWorker struct {
	batonv1connect.UnimplementedWorkerServiceHandler

	probes     sync.Map // job id → *probe
	calls      atomic.Int64
	running    atomic.Int64
	maxRunning atomic.Int64
}

// enter counts a call as running; the returned func ends it.
func (w *fakeWorker) enter() func() {
	w.calls.Add(1)
	n := w.running.Add(1)
	for {
		m := w.maxRunning.Load()
		if n <= m || w.maxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { w.running.Add(-1) }
}

func (w *fakeWorker) QueryJob(ctx context.Context, req *connect.Request[batonv1.WorkerServiceQueryJobRequest]) (*connect.Response[batonv1.WorkerServiceQueryJobResponse], error) {
	defer w.enter()()
	v, ok := w.probes.Load(req.Msg.GetJobId())
	if !ok {
		return connect.NewResponse(&batonv1.WorkerServiceQueryJobResponse{Done: true}), nil
	}
	p := v.(*probe)
	dl, hasDL := ctx.Deadline()
	if p.release != nil {
		select {
		case <-p.release:
		case <-ctx.Done():
		}
	}
	select {
	case p.seen <- observation{deadline: dl, hasDeadline: hasDL, err: ctx.Err()}:
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&batonv1.WorkerServiceQueryJobResponse{Done: true}), nil
}

// addProbe registers a probe for a fresh job id and returns the id. With
// block set, the handler blocks until unblock is called or the test ends.
func (w *fakeWorker) addProbe(t *testing.T, block bool, capacity int) (id string, p *probe, unblock func()) {
	t.Helper()
	p = &probe{seen: make(chan observation, capacity)}
	unblock = func() {}
	if block {
		p.release = make(chan struct{})
		var once sync.Once
		unblock = func() { once.Do(func() { close(p.release) }) }
		t.Cleanup(unblock)
	}
	id = uuid.NewString()
	w.probes.Store(id, p)
	return id, p, unblock
}

// testServer is a fakeWorker behind the same stack as a real worker: a
// serving listener with the given limits, the anonymous (plaintext)
// authenticator and serving.HandlerOptions (access log, authorization,
// deadline cap, validation).
type testServer struct {
	addr string
	url  string
	svc  *fakeWorker
	// httpRequests counts requests that reached the HTTP handler at all.
	httpRequests atomic.Int64
}

func startServer(t *testing.T, limits serving.Limits, maxCall time.Duration, tlsConf *tls.Config) *testServer {
	t.Helper()
	ts := &testServer{svc: &fakeWorker{}}
	logger := slog.New(slog.DiscardHandler)
	policy := identity.Policy{batonv1connect.WorkerServiceQueryJobProcedure: {Roles: []identity.Role{identity.RoleAdmin}}}
	mux, _ := serving.Mux(batonv1connect.WorkerServiceName)
	mux.Handle(batonv1connect.NewWorkerServiceHandler(ts.svc,
		serving.HandlerOptions("the test worker", logger, maxCall, identity.NewAuthorizer(policy, nil, logger))...))
	inner := identity.AnonymousHandler(mux)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.httpRequests.Add(1)
		inner.ServeHTTP(w, r)
	})
	srv, err := serving.ListenWithLimits("127.0.0.1:0", h, tlsConf, logger, limits)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		// Registered after the probes' cleanups, so it runs before them:
		// cut whatever still blocks rather than wait for it.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	ts.addr = srv.Addr().String()
	ts.url = serving.BaseURL(ts.addr, tlsConf != nil)
	return ts
}

// protocols are the three wire protocols every Baton endpoint speaks.
var protocols = []struct {
	name string
	opts []connect.ClientOption
}{
	{"connect", nil},
	{"grpc", []connect.ClientOption{connect.WithGRPC()}},
	{"grpcweb", []connect.ClientOption{connect.WithGRPCWeb()}},
}

// client returns a generated WorkerService client of the server over h2c.
func (ts *testServer) client(t *testing.T, hc *http.Client, opts ...connect.ClientOption) batonv1connect.WorkerServiceClient {
	t.Helper()
	if hc == nil {
		hc = serving.NewHTTPClient(nil)
		t.Cleanup(hc.CloseIdleConnections)
	}
	return batonv1connect.NewWorkerServiceClient(hc, ts.url, opts...)
}

func queryJob(ctx context.Context, c batonv1connect.WorkerServiceClient, id string) error {
	_, err := c.QueryJob(ctx, connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: id}))
	return err
}

// receive waits for one observation.
func receive(t *testing.T, p *probe) observation {
	t.Helper()
	select {
	case o := <-p.seen:
		return o
	case <-time.After(waitTimeout):
		t.Fatal("the handler never reported")
		return observation{}
	}
}

// waitFor polls cond until it holds, failing the test after waitTimeout
// with what describe says then.
func waitFor(t *testing.T, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, describe())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// headerTransport sets one request header on every request, overriding
// what the Connect client wrote: a client that sends what it likes.
type headerTransport struct {
	base        http.RoundTripper
	name, value string
}

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.name, h.value)
	return h.base.RoundTrip(r)
}

// TestClientDeadlines is RELIABILITY.md C8 H4 on a listener: a client's
// short deadline ends a blocked call with DeadlineExceeded and cancels the
// handler's context; an absent or huge client timeout is clamped to the
// server's cap on every protocol.
func TestClientDeadlines(t *testing.T) {
	t.Parallel()
	// A cap far from every client value below, so that a handler deadline
	// near it can only come from the clamp.
	const maxCall = time.Hour
	ts := startServer(t, serving.Limits{}, maxCall, nil)

	t.Run("short deadline", func(t *testing.T) {
		t.Parallel()
		for _, proto := range protocols {
			t.Run(proto.name, func(t *testing.T) {
				t.Parallel()
				id, p, _ := ts.svc.addProbe(t, true, 1)
				ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
				defer cancel()
				start := time.Now()
				err := queryJob(ctx, ts.client(t, nil, proto.opts...), id)
				elapsed := time.Since(start)
				if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
					t.Fatalf("QueryJob with a 100ms deadline: %v, want deadline_exceeded", err)
				}
				// The handler's context ends by its own deadline or, when the
				// client gives up first and resets the stream, by
				// cancellation: either way it does not keep running.
				o := receive(t, p)
				if !errors.Is(o.err, context.DeadlineExceeded) && !errors.Is(o.err, context.Canceled) {
					t.Errorf("the handler's context ended with %v, want it cancelled", o.err)
				}
				if !o.hasDeadline {
					t.Error("the handler saw no deadline")
				}
				t.Logf("deadline_exceeded after %v; handler context: %v", elapsed, o.err)
			})
		}
	})

	// clamped: the client's timeout reaches the server as no deadline or
	// one beyond the cap, and the handler sees the cap.
	clamped := []struct {
		name   string
		header string // a timeout header the client forces, if any
		value  string
		ctx    time.Duration // the client's own context timeout, if any
	}{
		{name: "none"},
		// 10^10 ms: the Connect client drops a timeout of more than ten
		// digits (effectively unbounded); gRPC sends "10000000S".
		{name: "1e10ms context", ctx: 1e10 * time.Millisecond},
		{name: "connect-timeout-ms 9999999999", header: "Connect-Timeout-Ms", value: "9999999999"},
		{name: "grpc-timeout 99999999S", header: "Grpc-Timeout", value: "99999999S"},
		// More hours than a time.Duration holds: the gRPC handler takes it
		// as no timeout.
		{name: "grpc-timeout 99999999H", header: "Grpc-Timeout", value: "99999999H"},
	}
	for _, tt := range clamped {
		for _, proto := range protocols {
			if tt.header == "Connect-Timeout-Ms" && proto.name != "connect" ||
				tt.header == "Grpc-Timeout" && proto.name == "connect" {
				continue
			}
			t.Run(tt.name+"/"+proto.name, func(t *testing.T) {
				t.Parallel()
				id, p, _ := ts.svc.addProbe(t, false, 1)
				hc := serving.NewHTTPClient(nil)
				t.Cleanup(hc.CloseIdleConnections)
				if tt.header != "" {
					hc.Transport = headerTransport{hc.Transport, tt.header, tt.value}
				}
				ctx := t.Context()
				if tt.ctx > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tt.ctx)
					defer cancel()
				}
				start := time.Now()
				if err := queryJob(ctx, ts.client(t, hc, proto.opts...), id); err != nil {
					t.Fatalf("QueryJob: %v", err)
				}
				o := receive(t, p)
				if !o.hasDeadline {
					t.Fatal("the handler got no deadline: the cap was not applied")
				}
				// The cap counts from when the server saw the call, which
				// is after start: at most maxCall past start plus the
				// call's own duration. The lower bound is far below the
				// cap only to stay clear of a slow machine.
				if hi := start.Add(maxCall + time.Since(start)); o.deadline.After(hi) {
					t.Errorf("handler deadline %v past the call, want at most the cap %v", o.deadline.Sub(start), maxCall)
				}
				if lo := start.Add(maxCall / 2); o.deadline.Before(lo) {
					t.Errorf("handler deadline %v past the call, want about the cap %v", o.deadline.Sub(start), maxCall)
				}
			})
		}
	}

	// The Connect protocol allows at most ten digits of milliseconds: a
	// longer timeout is a malformed request, refused before any handler.
	t.Run("connect-timeout-ms 1e10", func(t *testing.T) {
		t.Parallel()
		id, p, _ := ts.svc.addProbe(t, false, 1)
		hc := serving.NewHTTPClient(nil)
		t.Cleanup(hc.CloseIdleConnections)
		hc.Transport = headerTransport{hc.Transport, "Connect-Timeout-Ms", "10000000000"}
		err := queryJob(t.Context(), ts.client(t, hc), id)
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("QueryJob with an 11-digit timeout: %v, want invalid_argument", err)
		}
		select {
		case <-p.seen:
			t.Error("the handler ran")
		default:
		}
	})
}

// queryPath is the Connect GET request for QueryJob of id (QueryJob has no
// side effects, so Connect serves it over GET: a request that is a single
// HEADERS frame).
func queryPath(id string) string {
	return batonv1connect.WorkerServiceQueryJobProcedure + "?connect=v1&encoding=json&message=" +
		url.QueryEscape(`{"jobId":"`+id+`"}`)
}

// streamTally is what one raw HTTP/2 connection saw of its streams. Safe
// for concurrent use.
type streamTally struct {
	mu       sync.Mutex
	answered map[uint32]bool   // stream ended by the server's response
	reset    map[uint32]uint32 // stream reset by the server, with the code
	goAway   *h2Frame
	err      error // why reading stopped
}

// tally reads frames until the connection ends.
func tally(c *h2Conn) *streamTally {
	st := &streamTally{answered: map[uint32]bool{}, reset: map[uint32]uint32{}}
	go func() {
		for {
			f, err := c.readFrame()
			st.mu.Lock()
			switch {
			case err != nil:
				st.err = err
			case f.typ == frameRSTStream:
				st.reset[f.stream] = f.errorCode()
			case f.typ == frameGoAway:
				st.goAway = &f
			case (f.typ == frameHeaders || f.typ == frameData) && f.flags&flagEndStream != 0:
				st.answered[f.stream] = true
			}
			st.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return st
}

func (st *streamTally) counts() (answered, reset int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.answered), len(st.reset)
}

func (st *streamTally) String() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := fmt.Sprintf("%d streams answered, %d reset", len(st.answered), len(st.reset))
	if st.goAway != nil {
		s += fmt.Sprintf(", GOAWAY code %d", st.goAway.errorCode())
	}
	if st.err != nil {
		s += fmt.Sprintf(", read error %v", st.err)
	}
	return s
}

// TestStreamLimitPerConnection is RELIABILITY.md C8 H2: one HTTP/2
// connection opening 1000 streams to a blocking handler never has more
// than MaxConcurrentStreams handlers running, and every stream ends once
// the handlers are unblocked.
func TestStreamLimitPerConnection(t *testing.T) {
	t.Parallel()
	const (
		maxStreams = 20
		streams    = 1000
	)

	// A peer that ignores the server's SETTINGS and opens all its streams
	// at once: the streams past the limit are reset, never queued.
	t.Run("hostile peer", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, serving.Limits{MaxConcurrentStreams: maxStreams}, time.Hour, nil)
		id, _, unblock := ts.svc.addProbe(t, true, 0)
		c := dialH2(t, ts.addr)
		st := tally(c)
		block := getRequest(ts.addr, queryPath(id))
		for i := range streams {
			if err := c.writeFrame(frameHeaders, flagEndHeaders|flagEndStream, uint32(2*i+1), block); err != nil {
				t.Fatalf("opening stream %d: %v (%v)", i, err, st)
			}
		}
		describe := func() string {
			return fmt.Sprintf("%d handlers running; %v", ts.svc.running.Load(), st)
		}
		waitFor(t, "every stream to be running or reset", func() bool {
			_, reset := st.counts()
			return int(ts.svc.running.Load())+reset == streams
		}, describe)
		if n := ts.svc.maxRunning.Load(); n > maxStreams {
			t.Errorf("%d handlers ran at once on one connection, want at most %d", n, maxStreams)
		}
		if n := ts.svc.running.Load(); n == 0 {
			t.Error("no handler ran: the test did not load the server")
		}
		unblock()
		waitFor(t, "every stream to end", func() bool {
			answered, reset := st.counts()
			return answered+reset == streams
		}, describe)
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.goAway != nil {
			t.Errorf("the server sent GOAWAY (code %d) instead of refusing streams", st.goAway.errorCode())
		}
		for stream, code := range st.reset {
			if code != errCodeRefusedStream && code != errCodeProtocol {
				t.Errorf("stream %d reset with code %d, want REFUSED_STREAM or PROTOCOL_ERROR", stream, code)
			}
		}
		if got, want := ts.svc.calls.Load(), int64(len(st.answered)); got != want {
			t.Errorf("%d handler calls for %d answered streams", got, want)
		}
		t.Logf("%d streams answered, %d refused; at most %d handlers at once", len(st.answered), len(st.reset), ts.svc.maxRunning.Load())
	})
}

// TestHeaderBomb is RELIABILITY.md C8 H5: a request with 1 MiB of headers
// is refused under MaxHeaderBytes, on HTTP/1 (431) and HTTP/2 (the stream
// or the connection is reset), and reaches no handler.
func TestHeaderBomb(t *testing.T) {
	t.Parallel()
	const bomb = 1 << 20
	value := strings.Repeat("a", 1000)

	t.Run("http1", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, serving.Limits{}, time.Hour, nil)
		conn, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(waitTimeout))
		var req bytes.Buffer
		req.WriteString("POST " + batonv1connect.WorkerServiceQueryJobProcedure + " HTTP/1.1\r\nHost: " + ts.addr + "\r\nContent-Type: application/json\r\n")
		for i := 0; req.Len() < bomb; i++ {
			fmt.Fprintf(&req, "X-Bomb-%d: %s\r\n", i, value)
		}
		req.WriteString("Content-Length: 2\r\n\r\n{}")
		// The server answers before it has read everything: write
		// meanwhile, and ignore the write failing once it hangs up.
		go func() { _, _ = conn.Write(req.Bytes()) }()
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("reading the answer to 1 MiB of headers: %v", err)
		}
		_ = res.Body.Close()
		if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("1 MiB of headers: status %s, want 431", res.Status)
		}
		if n := ts.httpRequests.Load(); n != 0 {
			t.Errorf("%d requests reached the handler", n)
		}
	})

	t.Run("http2", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, serving.Limits{}, time.Hour, nil)
		c := dialH2(t, ts.addr)
		st := tally(c)
		block := getRequest(ts.addr, queryPath(uuid.NewString()))
		for i := 0; len(block) < bomb; i++ {
			block = append(block, hpackField(fmt.Sprintf("x-bomb-%d", i), value)...)
		}
		// HEADERS then CONTINUATION frames of the size every peer must
		// accept (16 KiB); writes stop mattering once the server hangs up.
		go func() {
			const frame = 16 << 10
			for off := 0; off < len(block); off += frame {
				end := min(off+frame, len(block))
				typ, flags := byte(frameContinuation), byte(0)
				if off == 0 {
					typ, flags = frameHeaders, flagEndStream
				}
				if end == len(block) {
					flags |= flagEndHeaders
				}
				if c.writeFrame(typ, flags, 1, block[off:end]) != nil {
					return
				}
			}
		}()
		waitFor(t, "the server to refuse the request", func() bool {
			st.mu.Lock()
			defer st.mu.Unlock()
			return st.reset[1] != 0 || st.goAway != nil || st.err != nil || st.answered[1]
		}, st.String)
		st.mu.Lock()
		answered := st.answered[1]
		st.mu.Unlock()
		if answered {
			t.Error("the server answered a request with 1 MiB of headers")
		}
		t.Logf("refused: %v", st)
		if n := ts.httpRequests.Load(); n != 0 {
			t.Errorf("%d requests reached the handler", n)
		}
	})
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}

// slowPeer is one attacking connection: it writes head at once, then trickle
// one byte per second, and reports when the server hung up.
type slowPeer struct {
	kind   string
	head   string
	drip   string // repeated as needed
	closed time.Duration
	err    error // the read error that ended the connection
}

// run dials addr and plays the peer until the server closes the
// connection or bound passes.
func (p *slowPeer) run(addr string, bound time.Duration) {
	start := time.Now()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		p.err = err
		return
	}
	defer conn.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		if _, err := io.WriteString(conn, p.head); err != nil {
			return
		}
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte{p.drip[i%len(p.drip)]}); err != nil {
				return
			}
		}
	}()
	_ = conn.SetReadDeadline(start.Add(bound))
	// Whatever the server says (an alert, a 4xx) is read and dropped: only
	// the end of the connection counts.
	_, err = io.Copy(io.Discard, conn)
	p.closed = time.Since(start)
	if err == nil {
		err = io.EOF
	}
	p.err = err
}

// TestSlowloris is RELIABILITY.md C8 H1: 500 HTTP/1 connections sending
// one header byte per second, and h2c and TLS peers that never finish
// their preface or handshake, are all closed by the server after
// ReadHeaderTimeout; meanwhile normal calls keep succeeding, no attacker
// reaches a handler, and the process's file descriptors come back.
//
// Not parallel: it counts the whole process's file descriptors.
func TestSlowloris(t *testing.T) {
	const (
		readHeaderTimeout = time.Second
		http1Peers        = 500
		h2cPeers          = 25
		tlsPeers          = 25
		// The server must hang up on its own: this bound only keeps a
		// broken server from hanging the test, and is far past
		// ReadHeaderTimeout + 1 s for a loaded machine.
		bound = readHeaderTimeout + 15*time.Second
	)
	limits := serving.Limits{ReadHeaderTimeout: readHeaderTimeout}
	ts := startServer(t, limits, time.Hour, nil)
	cert, _ := serving.SelfSigned(t)
	tlsTS := startServer(t, limits, time.Hour, &tls.Config{Certificates: []tls.Certificate{cert}})

	c := ts.client(t, nil)
	if err := queryJob(t.Context(), c, uuid.NewString()); err != nil {
		t.Fatal(err)
	}
	baseline := openFDs(t)

	var peers []*slowPeer
	addrs := map[*slowPeer]string{}
	for range http1Peers {
		p := &slowPeer{
			kind: "http1 headers",
			head: "POST " + batonv1connect.WorkerServiceQueryJobProcedure + " HTTP/1.1\r\nHost: " + ts.addr + "\r\nX-Slow: ",
			drip: "abcdefghijklmnopqrstuvwxyz",
		}
		peers, addrs[p] = append(peers, p), ts.addr
	}
	for i := range h2cPeers {
		// Half send a preface cut short at once, half drip the whole
		// preface byte by byte.
		p := &slowPeer{kind: "h2c partial preface", head: "PRI * HTTP/2.0\r\n\r\nSM", drip: "\r"}
		if i%2 == 1 {
			p = &slowPeer{kind: "h2c dripped preface", head: "P", drip: "RI * HTTP/2.0\r\n\r\nSM\r\n\r\nP"}
		}
		peers, addrs[p] = append(peers, p), ts.addr
	}
	for range tlsPeers {
		// The first bytes of a TLS record header (handshake, TLS 1.0
		// record version), then one byte a second.
		p := &slowPeer{kind: "tls handshake", head: "\x16\x03\x01", drip: "\x02\x00"}
		peers, addrs[p] = append(peers, p), tlsTS.addr
	}

	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Go(func() { p.run(addrs[p], bound) })
	}
	attackDone := make(chan struct{})
	go func() { wg.Wait(); close(attackDone) }()

	// Normal calls during the attack, one after another, until it ends.
	var latencies []time.Duration
	var callErrs []error
calls:
	for {
		select {
		case <-attackDone:
			break calls
		default:
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		start := time.Now()
		err := queryJob(ctx, c, uuid.NewString())
		cancel()
		latencies = append(latencies, time.Since(start))
		if err != nil {
			callErrs = append(callErrs, err)
		}
	}

	closed := map[string][]time.Duration{}
	for _, p := range peers {
		var ne net.Error
		switch {
		case errors.As(p.err, &ne) && ne.Timeout():
			t.Errorf("%s: the server kept the connection open for %v", p.kind, bound)
		case p.closed == 0:
			t.Errorf("%s: %v", p.kind, p.err)
		default:
			closed[p.kind] = append(closed[p.kind], p.closed)
		}
	}
	for kind, ds := range closed {
		slices.Sort(ds)
		t.Logf("%s: %d closed by the server after %v (median) to %v (max)", kind, len(ds), ds[len(ds)/2], ds[len(ds)-1])
	}

	if len(callErrs) > 0 {
		t.Errorf("%d of %d normal calls failed during the attack, first: %v", len(callErrs), len(latencies), callErrs[0])
	}
	slices.Sort(latencies)
	t.Logf("%d normal calls during the attack: p50 %v, p99 %v, max %v", len(latencies),
		latencies[len(latencies)/2], latencies[len(latencies)*99/100], latencies[len(latencies)-1])
	// Every call that reached the service, and every request that reached
	// the HTTP handler, was a normal call (plus the warm-up).
	if got, want := ts.svc.calls.Load(), int64(len(latencies)+1); got != want {
		t.Errorf("the service handled %d calls, want the %d normal ones", got, want)
	}
	if got, want := ts.httpRequests.Load(), int64(len(latencies)+1); got != want {
		t.Errorf("the HTTP handler saw %d requests, want the %d normal ones", got, want)
	}
	if n := tlsTS.httpRequests.Load(); n != 0 {
		t.Errorf("%d requests reached the TLS listener's handler", n)
	}
	waitFor(t, "open files to come back to the baseline", func() bool {
		return openFDs(t) <= baseline
	}, func() string { return fmt.Sprintf("%d open, %d before the attack", openFDs(t), baseline) })
}
