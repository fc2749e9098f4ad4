package identity

import (
	"fmt"
	"net/http"
)

// RelayedByHeader marks a call a scheduler replica relays to the leader:
// a replica that does not lead refuses such a call instead of relaying it
// again, so that replicas with stale views of who leads cannot pass a call
// around.
const RelayedByHeader = "Baton-Relayed-By"

// clientRoles are the roles a relayed call may be served as: a replica
// relays clients' calls only, and workers call the leader themselves.
var clientRoles = []Role{RoleAdmin, RoleUser, RoleViewer}

// ActOnBehalfOf serves a call that a scheduler replica relays for a client
// as that client's: when the caller is the scheduler (a replica) and names
// a client in OnBehalfOfHeader, the client becomes the request's
// principal, and everything after (the authorizer, owner checks, the
// audit log) sees the client. The anonymous caller of a plaintext listener
// may everything already; when it names a client it is narrowed to that
// client, so that a relayed token holder does not become admin on the way.
// Naming anything but a client role leaves the call without a principal,
// and the authorizer refuses it. It goes inside an Authenticator's
// Middleware, on the scheduler's listeners only.
func ActOnBehalfOf(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, ok := FromContext(r.Context())
		named := OnBehalfOf(r.Context())
		if !ok || named == "" || !(caller.Role == RoleScheduler || caller.Anonymous) {
			next.ServeHTTP(w, r)
			return
		}
		client, err := ParsePrincipal(named)
		if err == nil && !client.Role.in(clientRoles) {
			err = fmt.Errorf("role %q is not a client's", client.Role)
		}
		ctx := r.Context()
		if err != nil {
			ctx = withAuthError(NewContext(ctx, Principal{}), fmt.Errorf("%s relayed a call for %q: %w", caller, named, err))
		} else {
			ctx = NewContext(ctx, client)
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
