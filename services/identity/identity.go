// Package identity says who is calling. Every Baton process has a role and
// a name, carried in its certificate as a SPIFFE-style URI SAN
// (spiffe://<cluster>/<role>/<name>; the scheduler's is
// spiffe://<cluster>/scheduler). Browsers and JSON clients may instead show
// a bearer token that maps to a role and a name. The package issues
// certificates, builds TLS configs that check the peer's role rather than
// only its CA, authenticates HTTP requests, authorizes RPCs with a
// default-deny policy, and writes the audit log.
package identity

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// Role is what a principal may do.
type Role string

// The roles. Scheduler and Worker are cluster members; Admin, User and
// Viewer are clients.
const (
	RoleScheduler Role = "scheduler"
	RoleWorker    Role = "worker"
	// RoleAdmin may do everything a client can.
	RoleAdmin Role = "admin"
	// RoleUser starts jobs and sees, stops and streams only its own.
	RoleUser Role = "user"
	// RoleViewer reads everything and changes nothing.
	RoleViewer Role = "viewer"
)

// Roles lists every role, members first.
var Roles = []Role{RoleScheduler, RoleWorker, RoleAdmin, RoleUser, RoleViewer}

// Valid reports whether r is one of Roles.
func (r Role) Valid() bool {
	for _, x := range Roles {
		if r == x {
			return true
		}
	}
	return false
}

// namePattern matches principal names; it is the worker-name rule of the
// API, so a worker's certificate name can always be its registered name.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName reports whether name can name a principal.
func ValidName(name string) bool { return namePattern.MatchString(name) }

// Principal is an authenticated caller. The zero value is no one.
type Principal struct {
	Role Role
	// Name is empty for the scheduler, which is one per cluster.
	Name string
	// Anonymous marks the caller of a plaintext listener: without TLS there
	// is no identity, and every caller may do everything (local use only).
	Anonymous bool
}

// Anonymous is the principal of every call on a plaintext listener.
var Anonymous = Principal{Role: RoleAdmin, Name: "anonymous", Anonymous: true}

// Scheduler is the scheduler's principal.
var Scheduler = Principal{Role: RoleScheduler}

// String is "role/name", "scheduler" or "anonymous".
func (p Principal) String() string {
	if p.Anonymous {
		return "anonymous"
	}
	if p.Name == "" {
		return string(p.Role)
	}
	return string(p.Role) + "/" + p.Name
}

// IsZero reports whether p is no one.
func (p Principal) IsZero() bool { return p.Role == "" }

// URI is p's identity in a certificate of cluster.
func (p Principal) URI(cluster string) *url.URL {
	path := "/" + string(p.Role)
	if p.Name != "" {
		path += "/" + p.Name
	}
	return &url.URL{Scheme: "spiffe", Host: cluster, Path: path}
}

// Validate checks that p is a role with a name where one is needed.
func (p Principal) Validate() error {
	if !p.Role.Valid() {
		return fmt.Errorf("unknown role %q (want one of scheduler, worker, admin, user, viewer)", p.Role)
	}
	if p.Role == RoleScheduler {
		if p.Name != "" {
			return errors.New("the scheduler's identity has no name")
		}
		return nil
	}
	if !ValidName(p.Name) {
		return fmt.Errorf("name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", p.Name)
	}
	return nil
}

// ParsePrincipal parses "role/name" (or "scheduler").
func ParsePrincipal(s string) (Principal, error) {
	role, name, _ := strings.Cut(s, "/")
	p := Principal{Role: Role(role), Name: name}
	return p, p.Validate()
}

// ParseURI reads the principal from a certificate identity of cluster. The
// role is not checked against Roles: an identity with a role Baton does not
// know authenticates, and is then denied everything by the authorizer.
func ParseURI(u *url.URL, cluster string) (Principal, error) {
	if u.Scheme != "spiffe" || u.Host != cluster || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return Principal{}, fmt.Errorf("identity %q is not of cluster %q", u, cluster)
	}
	role, name, hasName := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	if role == "" || (hasName && !ValidName(name)) {
		return Principal{}, fmt.Errorf("identity %q is not spiffe://<cluster>/<role>/<name>", u)
	}
	return Principal{Role: Role(role), Name: name}, nil
}
