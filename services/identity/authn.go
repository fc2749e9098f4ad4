package identity

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
)

// OnBehalfOfHeader carries the client the scheduler forwards a call for.
// A worker believes it only from the scheduler.
const OnBehalfOfHeader = "Baton-On-Behalf-Of"

// Authenticator finds the principal of each HTTP request: the verified
// client certificate's identity, else a bearer token, else (on a
// plaintext listener) Anonymous. It never rejects a request itself: the
// authorizer does, with a proper RPC error, and audits the denial. Safe
// for concurrent use.
type Authenticator struct {
	creds     *Credentials
	tokens    atomic.Pointer[Tokens]
	anonymous bool
	now       func() time.Time
}

// NewAuthenticator returns an authenticator for one listener. creds is nil
// without TLS; tokens is nil when the listener takes none; anonymous makes
// every caller without credentials Anonymous (plaintext loopback only).
func NewAuthenticator(creds *Credentials, tokens *Tokens, anonymous bool) *Authenticator {
	a := &Authenticator{creds: creds, anonymous: anonymous, now: time.Now}
	a.tokens.Store(tokens)
	return a
}

// SetTokens replaces the accepted tokens (a config reload).
func (a *Authenticator) SetTokens(t *Tokens) { a.tokens.Store(t) }

// Middleware stores the request's principal, or why it has none, in the
// request context, and strips the Authorization header so that nothing
// downstream can log the token.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := a.authenticate(r)
		ctx := r.Context()
		if err != nil {
			ctx = withAuthError(ctx, err)
		} else {
			ctx = NewContext(ctx, p)
			if obo := r.Header.Get(OnBehalfOfHeader); obo != "" && (p.Role == RoleScheduler || p.Anonymous) {
				ctx = WithOnBehalfOf(ctx, obo)
			}
		}
		r.Header.Del("Authorization")
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func (a *Authenticator) authenticate(r *http.Request) (Principal, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && a.creds != nil {
		return a.creds.PrincipalOf(r.TLS.VerifiedChains[0][0])
	}
	if h := r.Header.Get("Authorization"); h != "" {
		tokens := a.tokens.Load()
		if tokens == nil || tokens.Len() == 0 {
			return Principal{}, errors.New("this listener does not take bearer tokens")
		}
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
			return Principal{}, errors.New(`the Authorization header must be "Bearer <token>"`)
		}
		return tokens.Lookup(strings.TrimSpace(token), a.now())
	}
	if a.anonymous {
		return Anonymous, nil
	}
	if a.creds != nil && (a.tokens.Load() == nil || a.tokens.Load().Len() == 0) {
		return Principal{}, errors.New("no credentials: present a client certificate")
	}
	if a.creds == nil {
		// A listener that takes tokens only: a worker, or a client with a
		// certificate, has dialled the wrong port.
		return Principal{}, errors.New("no credentials: this listener takes bearer tokens only (Authorization: Bearer …); workers and clients with certificates use the scheduler's mutual-TLS port (grpc_server.addr)")
	}
	return Principal{}, errors.New("no credentials: present a client certificate or a bearer token")
}

// ForwardOnBehalfOf is a client interceptor that names, in
// OnBehalfOfHeader, the principal of the call being served: the scheduler
// uses it on its calls to workers, whose access log then says for whom.
func ForwardOnBehalfOf() connect.Interceptor { return forwardOnBehalfOf{} }

type forwardOnBehalfOf struct{}

func (forwardOnBehalfOf) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if p, ok := FromContext(ctx); ok && req.Spec().IsClient {
			req.Header().Set(OnBehalfOfHeader, p.String())
		}
		return next(ctx, req)
	}
}

func (forwardOnBehalfOf) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if p, ok := FromContext(ctx); ok {
			conn.RequestHeader().Set(OnBehalfOfHeader, p.String())
		}
		return conn
	}
}

func (forwardOnBehalfOf) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// AnonymousHandler serves h to every caller as Anonymous: the plaintext,
// loopback-only mode, where there is no identity to check.
func AnonymousHandler(h http.Handler) http.Handler {
	return NewAuthenticator(nil, nil, true).Middleware(h)
}
