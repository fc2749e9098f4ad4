package serving

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Option configures a listener beyond its Limits.
type Option func(*options)

type options struct {
	allowedHosts []string
}

// WithAllowedHosts names hosts, besides loopback addresses and
// "localhost", that a plaintext listener answers to: a name the operator
// points at this machine (a hosts-file entry, a port forward). Each is a
// DNS name or an IP address, without a port; it matches with any port and
// in any letter case. A TLS listener takes no such names (Listen refuses
// them there): its certificate already decides which names reach it.
func WithAllowedHosts(names ...string) Option {
	return func(o *options) { o.allowedHosts = append(o.allowedHosts, names...) }
}

// maxHostName is the longest DNS name (RFC 1035 §2.3.4, in text form).
const maxHostName = 253

// CheckAllowedHosts reports the first name WithAllowedHosts would refuse:
// one that is neither an IP address nor a DNS name, or that carries a
// port, a scheme or a wildcard.
func CheckAllowedHosts(names []string) error {
	_, err := parseAllowedHosts(names)
	return err
}

// parseAllowedHosts returns the names in the form localOnly compares:
// lower case, IP addresses in their canonical text.
func parseAllowedHosts(names []string) (map[string]bool, error) {
	set := make(map[string]bool, len(names))
	for _, n := range names {
		if ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(n, "["), "]")); ip != nil {
			set[ip.String()] = true
			continue
		}
		if !validHostName(n) {
			return nil, fmt.Errorf("allowed host %q: give a DNS name or an IP address, without scheme, port or wildcard", n)
		}
		set[strings.ToLower(n)] = true
	}
	return set, nil
}

func validHostName(n string) bool {
	if n == "" || len(n) > maxHostName || n[0] == '.' || n[0] == '-' {
		return false
	}
	for _, c := range n {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.', c == '_':
		default:
			return false
		}
	}
	return true
}

// localOnly guards a plaintext listener against DNS rebinding and
// cross-site requests. Such a listener has no identity to check (every
// caller may be an anonymous admin), so the only thing keeping a web page
// from using it is the browser's same-origin policy, and a page can defeat
// that by pointing its own name at 127.0.0.1 (DNS rebinding): its requests
// then reach the listener with the attacker's name in Host and Origin.
// localOnly answers only requests whose Host is a loopback address,
// "localhost" or an allowed name, and, when a browser sends an Origin, only
// the listener's own origin. Callers without Origin (curl, gRPC clients,
// the CLI) are judged by Host alone. It is immutable, so safe for
// concurrent use.
type localOnly struct {
	next    http.Handler
	allowed map[string]bool
	logger  *slog.Logger
}

// Reasons the guard gives, in plain text: a user who sees one knows what
// to change. They never echo the request's headers.
const (
	refusedHost   = "misdirected request: this plain-HTTP listener answers only localhost, loopback addresses and the host names it is configured with"
	refusedOrigin = "cross-origin request refused: this plain-HTTP listener answers only pages of its own origin"
)

func (g *localOnly) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	status, msg := g.check(r)
	if status == 0 {
		g.next.ServeHTTP(w, r)
		return
	}
	g.logger.WarnContext(r.Context(), "refused a request for another host or origin (DNS rebinding guard)",
		"host", clip(r.Host), "origin", clip(strings.Join(r.Header.Values("Origin"), ", ")),
		"remote_addr", r.RemoteAddr, "path", clip(r.URL.Path), "code", status)
	http.Error(w, msg, status)
}

// check returns 0 for a request the listener may serve, else the status
// and reason to refuse it with: 421 Misdirected Request (RFC 9110 §15.5.20)
// for a Host this listener does not answer to, 403 for a foreign Origin.
func (g *localOnly) check(r *http.Request) (int, string) {
	host, port, ok := splitHostPort(r.Host)
	if !ok || !g.hostAllowed(host) {
		return http.StatusMisdirectedRequest, refusedHost
	}
	origins := r.Header.Values("Origin")
	if len(origins) == 0 {
		return 0, ""
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if len(origins) > 1 || !sameOrigin(origins[0], scheme, host, port) {
		return http.StatusForbidden, refusedOrigin
	}
	return 0, ""
}

// hostAllowed says whether host (no port, no brackets) names this machine
// in a way no web page can take over: an IP literal cannot be rebound, and
// browsers resolve "localhost" themselves (RFC 6761 §6.3).
func (g *localOnly) hostAllowed(host string) bool {
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback() || g.allowed[ip.String()]
	}
	host = strings.ToLower(host)
	return host == "localhost" || g.allowed[host]
}

// sameOrigin says whether origin (an Origin header) is scheme://host:port,
// the listener's own origin as the request's Host names it. "null", the
// origin of sandboxed frames and local files, is never the same.
func sameOrigin(origin, scheme, host, port string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Scheme != scheme || u.User != nil || u.Opaque != "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return false
	}
	oHost, oPort, ok := splitHostPort(u.Host)
	if !ok || !strings.EqualFold(oHost, host) {
		return false
	}
	return portOrDefault(oPort, scheme) == portOrDefault(port, scheme)
}

// splitHostPort splits a Host header or an origin's authority. The port
// may be missing (a browser leaves out the scheme's default); when present
// it is digits only.
func splitHostPort(hostport string) (host, port string, ok bool) {
	if hostport == "" {
		return "", "", false
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		var addrErr *net.AddrError
		if !errors.As(err, &addrErr) || addrErr.Err != "missing port in address" {
			return "", "", false
		}
		host, port = hostport, ""
		if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
			host = host[1 : len(host)-1]
		} else if strings.Contains(host, ":") {
			return "", "", false
		}
	}
	// Brackets are for IPv6 literals only (RFC 3986 §3.2.2).
	if strings.HasPrefix(hostport, "[") != strings.Contains(host, ":") {
		return "", "", false
	}
	for _, c := range port {
		if c < '0' || c > '9' {
			return "", "", false
		}
	}
	return host, port, host != ""
}

func portOrDefault(port, scheme string) string {
	if port != "" {
		return port
	}
	if scheme == "https" {
		return "443"
	}
	return "80"
}

// clip bounds a header value for the log: headers may be 64 KiB.
func clip(s string) string {
	const limit = 128
	if len(s) > limit {
		return s[:limit] + "…"
	}
	return s
}
