package identity

import (
	"net/http"
	"strings"

	"connectrpc.com/grpchealth"
)

// MetricsReaders are the roles that may read /metrics: a scraper gets a
// viewer certificate or token. A user's or a worker's does not: the
// metrics count every owner's jobs and name every worker.
var MetricsReaders = []Role{RoleAdmin, RoleViewer}

// GuardOperations applies one rule on every listener to what is served
// beside the API: GET /metrics needs a caller in MetricsReaders (or the
// anonymous caller of a plain loopback listener), and the gRPC health
// service needs an authenticated caller. Other requests go to next, which
// authorizes them itself. It goes inside an Authenticator's Middleware,
// which puts the caller in the request's context.
func GuardOperations(next http.Handler) http.Handler {
	health := "/" + grpchealth.HealthV1ServiceName + "/"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/metrics":
			p, ok := FromContext(r.Context())
			if !ok {
				http.Error(w, "unauthenticated: "+reason(r)+"; /metrics needs an admin or viewer certificate or token", http.StatusUnauthorized)
				return
			}
			if !p.Anonymous && !p.Role.in(MetricsReaders) {
				http.Error(w, "permission denied: "+p.String()+" may not read /metrics; use an admin or viewer certificate or token", http.StatusForbidden)
				return
			}
		case strings.HasPrefix(r.URL.Path, health):
			if _, ok := FromContext(r.Context()); !ok {
				// A Connect or gRPC client reads HTTP 401 as unauthenticated.
				http.Error(w, "unauthenticated: "+reason(r), http.StatusUnauthorized)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// reason says why the request has no caller.
func reason(r *http.Request) string {
	if err := authErrorFrom(r.Context()); err != nil {
		return err.Error()
	}
	return "no credentials"
}

func (r Role) in(roles []Role) bool {
	for _, x := range roles {
		if r == x {
			return true
		}
	}
	return false
}
