package serving

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"connectrpc.com/validate"

	"github.com/baton-run/baton/services/internal/interceptors"
)

// The limits every listener has unless Limits says otherwise
// (RELIABILITY.md C8). Streams have no write timeout on purpose:
// http.Server.WriteTimeout would cut long output streams.
const (
	// DefaultReadHeaderTimeout is Limits.ReadHeaderTimeout's default.
	DefaultReadHeaderTimeout = 5 * time.Second
	// DefaultIdleTimeout is Limits.IdleTimeout's default.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultMaxHeaderBytes is Limits.MaxHeaderBytes's default.
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultMaxConcurrentStreams is Limits.MaxConcurrentStreams's
	// default: net/http's own default, set explicitly so that it is
	// visible and does not move with Go releases.
	DefaultMaxConcurrentStreams = 250
	// MaxMessageBytes caps one request message (Connect ReadMaxBytes).
	MaxMessageBytes = 4 << 20
)

// Limits protect a listener from slow, greedy or hostile peers. A zero field
// takes its default; production listeners use the defaults, and tests shrink
// them so that an attack can be played out in seconds.
type Limits struct {
	// ReadHeaderTimeout bounds how long a connection may take to deliver a
	// request's headers: the TLS handshake, the h2c preface and HTTP/1
	// headers all fall under it, so a slowloris peer is cut after it. It
	// counts from the connection's first byte (see listenTCP). Default
	// DefaultReadHeaderTimeout.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection (HTTP/1 or HTTP/2) that
	// has no request in flight; a new connection may stay silent about as
	// long before ReadHeaderTimeout starts. Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxHeaderBytes caps a request's headers: the HTTP/1 request line and
	// header block (answered 431), or the HTTP/2 header list. Default
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// MaxConcurrentStreams caps the streams, hence the running handlers,
	// of one HTTP/2 connection; streams a peer opens beyond it are reset.
	// Default DefaultMaxConcurrentStreams.
	MaxConcurrentStreams int
}

// withDefaults fills in the zero fields.
func (l Limits) withDefaults() Limits {
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.MaxConcurrentStreams <= 0 {
		l.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	return l
}

// ErrPlaintextNotLoopback is returned when h2c is asked for on an address that
// is not loopback: without TLS there is no identity, so plain mode is only for
// local use.
var ErrPlaintextNotLoopback = errors.New("plaintext (use_tls = false) is only allowed on loopback addresses")

// Mux is an http.ServeMux with gRPC health and reflection mounted for the
// given fully-qualified service names. Health reports on those services;
// reflection lists them and the health and reflection services too, which
// the mux serves as well, so that `grpcurl list` shows every service a
// client can call.
func Mux(services ...string) (*http.ServeMux, *grpchealth.StaticChecker) {
	mux := http.NewServeMux()
	checker := grpchealth.NewStaticChecker(services...)
	mux.Handle(grpchealth.NewHandler(checker))
	reflector := grpcreflect.NewStaticReflector(append(slices.Clip(services),
		grpchealth.HealthV1ServiceName,
		grpcreflect.ReflectV1ServiceName,
		grpcreflect.ReflectV1AlphaServiceName,
	)...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	return mux, checker
}

// Server is one listener serving a handler over h2c or TLS. It is safe for
// concurrent use; Serve is called once.
type Server struct {
	srv    *http.Server
	ln     net.Listener
	logger *slog.Logger
}

// Listen binds addr and prepares a server for handler with the default
// Limits. With tlsConf nil the server speaks HTTP/1.1 and h2c, addr must
// be a loopback address, and requests must name this machine: a Host that
// is not a loopback address, "localhost" or a name from WithAllowedHosts
// is answered 421, and a browser's Origin other than the listener's own is
// answered 403 (no DNS rebinding, no cross-site calls). With tlsConf it
// speaks HTTP/1.1 and HTTP/2 over TLS 1.3 only.
func Listen(addr string, handler http.Handler, tlsConf *tls.Config, logger *slog.Logger, opts ...Option) (*Server, error) {
	return ListenWithLimits(addr, handler, tlsConf, logger, Limits{}, opts...)
}

// ListenWithLimits is Listen with limits of the caller's choosing; zero
// fields of limits take their defaults.
func ListenWithLimits(addr string, handler http.Handler, tlsConf *tls.Config, logger *slog.Logger, limits Limits, opts ...Option) (*Server, error) {
	limits = limits.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if tlsConf == nil {
		if err := checkLoopback(addr); err != nil {
			return nil, err
		}
		allowed, err := parseAllowedHosts(o.allowedHosts)
		if err != nil {
			return nil, err
		}
		// Only plaintext listeners are guarded: there, reaching the
		// listener is the whole credential. Over TLS a rebound name fails
		// the browser's certificate check before any request is sent, a
		// browser does not attach a bearer token on its own, and the
		// names a TLS listener answers to are whatever its certificate says.
		handler = &localOnly{next: handler, allowed: allowed, logger: logger}
	} else if len(o.allowedHosts) > 0 {
		return nil, errors.New("allowed hosts apply to plaintext listeners only: over TLS the certificate decides which names reach the listener")
	}
	ln, err := listenTCP(addr, limits.IdleTimeout)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	if tlsConf == nil {
		protocols.SetUnencryptedHTTP2(true)
	} else {
		protocols.SetHTTP2(true)
		tlsConf = tlsConf.Clone()
		tlsConf.MinVersion = tls.VersionTLS13
		ln = tls.NewListener(ln, withALPN(tlsConf))
	}
	srv := &http.Server{
		Handler:           refusePRI(handler),
		Protocols:         &protocols,
		ReadHeaderTimeout: limits.ReadHeaderTimeout,
		IdleTimeout:       limits.IdleTimeout,
		MaxHeaderBytes:    limits.MaxHeaderBytes,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: limits.MaxConcurrentStreams,
			MaxReadFrameSize:     1 << 20,
			SendPingTimeout:      pingAfter,
			PingTimeout:          pingAckTimeout,
		},
		ErrorLog: log.New(newHandshakeLog(logger), "", 0),
	}
	return &Server{srv: srv, ln: ln, logger: logger}, nil
}

// refusePRI answers 400 to "PRI * HTTP/2.0" requests without calling h.
// net/http hands one to the handler when an h2c peer sends a preface cut
// short and stalls: once ReadHeaderTimeout ends the wait for the rest, the
// bytes it has read parse as a complete HTTP/1 request. It is never a call;
// nothing behind the listener should see it.
func refusePRI(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "PRI" {
			w.Header().Set("Connection", "close")
			http.Error(w, "incomplete HTTP/2 connection preface", http.StatusBadRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// withALPN advertises h2 and http/1.1, since tls.NewListener bypasses the
// server's own ALPN setup.
func withALPN(c *tls.Config) *tls.Config {
	if len(c.NextProtos) == 0 {
		c.NextProtos = []string{"h2", "http/1.1"}
	}
	return c
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown; it returns nil after a clean shutdown.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections and waits, bounded by ctx, for
// in-flight calls; what is still open when ctx ends is closed.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
	}
	return err
}

// checkLoopback refuses a plaintext listener on anything but loopback.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q: %w", addr, ErrPlaintextNotLoopback)
	}
	return nil
}

// HandlerOptions are the options every Baton service handler is built with:
// one access-log line per call, authorization (authz, before anything
// looks at the request), a cap on unary call duration, schema validation
// of requests, panic recovery, a request size limit and no response
// compression, and JSON that refuses unknown fields and enum names. who names the service in the error a panic yields ("the
// worker"). inner interceptors run last, just around the handler.
func HandlerOptions(who string, logger *slog.Logger, maxCall time.Duration, authz connect.Interceptor, inner ...connect.Interceptor) []connect.HandlerOption {
	chain := []connect.Interceptor{
		interceptors.NewAccessLog(logger),
		authz,
		interceptors.NewDeadline(maxCall),
		validate.NewInterceptor(),
	}
	return append(strictJSONCodecs(),
		connect.WithInterceptors(append(chain, inner...)...),
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			logger.ErrorContext(ctx, "handler panic", "procedure", spec.Procedure, "panic", p)
			return connect.NewError(connect.CodeInternal, fmt.Errorf("internal error in %s; see its log", who))
		}),
		connect.WithReadMaxBytes(MaxMessageBytes),
		// Responses are never gzipped, whatever the client accepts. Job
		// output is mostly tiny or incompressible, and on the worker the CPU
		// spent deflating it is taken from the jobs (it capped one follower
		// at ~45 MB/s here). Compressed requests are still accepted.
		connect.WithCompressMinBytes(math.MaxInt32),
	)
}
