package identity

import (
	"context"
	"fmt"
	"net/http"
)

// Headers of a call a scheduler replica relays to the leader.
const (
	// RelayedByHeader names the relaying replica. A replica that does not
	// lead refuses a call that carries it instead of relaying it again, so
	// that replicas with stale views of who leads cannot pass a call
	// around.
	RelayedByHeader = "Baton-Relayed-By"
	// RelayedForHeader is the address the client called the relaying
	// replica from, for the leader's audit log.
	RelayedForHeader = "Baton-Relayed-For"
)

// clientRoles are the roles a relayed call may be served as: a replica
// relays clients' calls only, and workers call the leader themselves.
var clientRoles = []Role{RoleAdmin, RoleUser, RoleViewer}

// Relay is how a call that ActOnBehalfOf served as a client's reached the
// leader, for the audit log.
type Relay struct {
	// By is the principal that named the client and the replica's
	// address it gave, "scheduler 10.0.0.2:7070".
	By string
	// Client is the address the client called the replica from.
	Client string
}

// RelayOf returns how the call was relayed, if it was.
func RelayOf(ctx context.Context) (Relay, bool) {
	r, ok := ctx.Value(relayKey).(Relay)
	return r, ok
}

// ActOnBehalfOf serves a call that a scheduler replica relays for a client
// as that client's: when the caller is the scheduler (a replica) and names
// a client in OnBehalfOfHeader, the client becomes the request's
// principal, and everything after (the authorizer, owner checks, the
// audit log) sees the client. "anonymous" names the anonymous caller of a
// replica's plaintext loopback listener, who may do everything. The
// anonymous caller of this listener may everything already; when it names
// a client it is narrowed to that client, so that a relayed token holder
// does not become admin on the way (without TLS there is no telling a
// replica from any other local caller). Naming anything but a client
// leaves the call without a principal, and the authorizer refuses it. It
// goes inside an Authenticator's Middleware, on the scheduler's mutual-TLS
// listener only.
func ActOnBehalfOf(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, ok := FromContext(r.Context())
		named := OnBehalfOf(r.Context())
		if !ok || named == "" || !(caller == Scheduler || caller.Anonymous) {
			next.ServeHTTP(w, r)
			return
		}
		client, err := Anonymous, error(nil)
		if named != Anonymous.String() {
			client, err = ParsePrincipal(named)
			if err == nil && !client.Role.in(clientRoles) {
				err = fmt.Errorf("role %q is not a client's", client.Role)
			}
		}
		ctx := r.Context()
		if err != nil {
			ctx = withAuthError(NewContext(ctx, Principal{}), fmt.Errorf("%s relayed a call for %q: %w", caller, named, err))
		} else {
			ctx = NewContext(ctx, client)
			ctx = context.WithValue(ctx, relayKey, Relay{
				By:     caller.String() + " " + clip(r.Header.Get(RelayedByHeader)),
				Client: clip(r.Header.Get(RelayedForHeader)),
			})
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// clip bounds a header value that goes into the audit log.
func clip(s string) string {
	const most = 256
	if len(s) > most {
		return s[:most]
	}
	return s
}
