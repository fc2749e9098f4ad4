package replica

import (
	"context"
	"errors"
	"net/http"
	"net/http/httputil"
	"slices"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/services/identity"
)

// relayedRoles are the callers whose calls a follower relays to the
// leader: clients. Workers keep calling the leader themselves, so that
// their heartbeats do not depend on a follower staying up.
var relayedRoles = []identity.Role{identity.RoleAdmin, identity.RoleUser, identity.RoleViewer}

// relayer passes calls of clients from a follower to the leader, streams
// included, and says for whom: the leader serves the call as that
// client's (identity.ActOnBehalfOf), with the same owner checks and audit
// as a direct call.
type relayer struct {
	proxy *httputil.ReverseProxy
}

func newRelayer(self string, transport http.RoundTripper, useTLS bool) *relayer {
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	return &relayer{proxy: &httputil.ReverseProxy{
		Transport: transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			leader := pr.In.Context().Value(leaderKey{}).(string)
			pr.Out.URL.Scheme = scheme
			pr.Out.URL.Host = leader
			pr.Out.Host = leader
			// Only this replica names the client: a caller's own
			// OnBehalfOf header is replaced.
			p, _ := identity.FromContext(pr.In.Context())
			if p.Anonymous {
				// The anonymous caller of a plaintext loopback listener
				// may do everything there, and stays an admin by name.
				p = identity.Principal{Role: identity.RoleAdmin, Name: p.Name}
			}
			pr.Out.Header.Set(identity.OnBehalfOfHeader, p.String())
			pr.Out.Header.Set(identity.RelayedByHeader, self)
			// This replica's listener judged the browser's origin; to the
			// leader the call comes from this replica.
			pr.Out.Header.Del("Origin")
		},
		// Output streams are passed on as they come.
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			leader := req.Context().Value(leaderKey{}).(string)
			// No leader is named: the one this replica knows of did not
			// answer, and the caller should try again shortly.
			writeUnavailable(w, req, "", "this scheduler replica could not reach the leader at "+leader+": try again shortly")
		},
	}}
}

type leaderKey struct{}

// relays reports whether req is a client's call that a follower relays:
// not one already relayed, and from a client role (or the anonymous
// caller of a plaintext listener).
func relays(req *http.Request) bool {
	if req.Header.Get(identity.RelayedByHeader) != "" {
		return false
	}
	p, ok := identity.FromContext(req.Context())
	return ok && (p.Anonymous || slices.Contains(relayedRoles, p.Role))
}

// relay passes req to the leader at leader.
func (rl *relayer) relay(w http.ResponseWriter, req *http.Request, leader string) {
	rl.proxy.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), leaderKey{}, leader)))
}

// writeUnavailable answers req, in the caller's protocol, with an
// unavailable error and leader (possibly empty) in LeaderHeader.
func writeUnavailable(w http.ResponseWriter, req *http.Request, leader, msg string) {
	w.Header().Set(LeaderHeader, leader)
	ew := connect.NewErrorWriter()
	if !ew.IsSupported(req) {
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	_ = ew.Write(w, req, connect.NewError(connect.CodeUnavailable, errors.New(msg)))
}
