package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
)

// Config says how to reach and authenticate to a scheduler. Its fields
// are the keys of the baton CLI's [client] section, and errors name them
// by those keys (client.scheduler, client.ca_file, ...), so that a
// program reading the CLI's file can pass them on unchanged.
type Config struct {
	// Schedulers are the addresses of the scheduler (client.scheduler, a
	// comma-separated list in the CLI's file): a URL, http:// for h2c or
	// https:// for TLS, or host:port, which means https when a CA or a
	// client certificate is configured and h2c otherwise. An element may
	// itself be a comma-separated list. Every address must use the same
	// scheme and path.
	//
	// Several addresses are the replicas of a replicated scheduler: calls
	// go to the one that leads, first believed to be the first address. A
	// replica that does not lead refuses a call, naming the leader, and
	// the call goes there when the leader is one of these addresses; an
	// address that cannot be dialled passes the call to the next one.
	Schedulers []string
	// CAFile is the cluster CA (PEM) that the scheduler's certificate must
	// chain to (client.ca_file); empty uses the system roots.
	CAFile string
	// CertFile and KeyFile are the client certificate and key (PEM) for
	// mutual TLS (client.cert_file, client.key_file); a key readable by
	// group or others is refused.
	CertFile string
	KeyFile  string
	// Token is sent as "Authorization: Bearer <token>" (client.token). It
	// is never sent in cleartext: with an h2c address that is not loopback,
	// New refuses before dialing.
	Token string
}

// BaseURLs returns the URL each of c.Schedulers names, as New would call
// it. It reads no file.
func (c Config) BaseURLs() ([]string, error) {
	return c.baseURLs(false)
}

// baseURLs is BaseURLs where secure also says TLS is configured (a TLS
// configuration held in memory).
func (c Config) baseURLs(secure bool) ([]string, error) {
	addrs := c.addresses()
	if len(addrs) == 0 || len(addrs) == 1 && strings.TrimSpace(addrs[0]) == "" {
		return nil, errors.New("client.scheduler is empty: name the scheduler's address")
	}
	secure = secure || c.CAFile != "" || c.CertFile != ""
	urls := make([]string, 0, len(addrs))
	for i, addr := range addrs {
		if strings.TrimSpace(addr) == "" {
			return nil, fmt.Errorf("client.scheduler %q: address %d of %d is empty; separate the addresses with single commas", strings.Join(addrs, ","), i+1, len(addrs))
		}
		u, err := baseURL(addr, secure)
		if err != nil {
			return nil, err
		}
		if i > 0 && isHTTPS(u) != isHTTPS(urls[0]) {
			return nil, fmt.Errorf("client.scheduler %q and %q: every address of the scheduler must use the same scheme", addrs[0], addr)
		}
		if i > 0 && urlPath(u) != urlPath(urls[0]) {
			return nil, fmt.Errorf("client.scheduler %q and %q: every address of the scheduler must have the same path", addrs[0], addr)
		}
		urls = append(urls, u)
	}
	return urls, nil
}

// addresses returns c.Schedulers with the comma-separated lists in them
// split, so that the CLI's string and a Go program's list read alike.
func (c Config) addresses() []string {
	var addrs []string
	for _, s := range c.Schedulers {
		for a := range strings.SplitSeq(s, ",") {
			addrs = append(addrs, strings.TrimSpace(a))
		}
	}
	return addrs
}

func urlPath(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return ""
	}
	return u.Path
}

// withPorts returns the base URLs with the scheme's port written out
// where they leave it implied, and the host:port of each: the replicas'
// addresses as a leader's refusal names them.
func withPorts(urls []string) (bases, hosts []string) {
	for _, base := range urls {
		u, _ := url.Parse(base)
		if u.Port() == "" {
			port := "80"
			if u.Scheme == "https" {
				port = "443"
			}
			u.Host = net.JoinHostPort(u.Hostname(), port)
		}
		bases = append(bases, u.String())
		hosts = append(hosts, u.Host)
	}
	return bases, hosts
}

// baseURL turns one scheduler address into a base URL. A bare host:port
// means https when secure (there is no other use for a CA or a client
// certificate) and h2c otherwise.
func baseURL(addr string, secure bool) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", errors.New("client.scheduler is empty: name the scheduler's address")
	}
	if !strings.Contains(addr, "://") {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return "", fmt.Errorf("client.scheduler %q: use a URL (http://host:port, https://host:port) or host:port", addr)
		}
		if secure {
			return "https://" + addr, nil
		}
		return "http://" + addr, nil
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("client.scheduler %q: use a URL like http://host:port or https://host:port", addr)
	}
	switch u.Scheme {
	case "https":
		return strings.TrimSuffix(u.String(), "/"), nil
	case "http":
		if secure {
			return "", fmt.Errorf("client.scheduler %q is plain h2c but a CA or client certificate is configured: use https://", addr)
		}
		return strings.TrimSuffix(u.String(), "/"), nil
	}
	return "", fmt.Errorf("client.scheduler %q: the scheme must be http (h2c) or https (TLS)", addr)
}

func isHTTPS(base string) bool { return strings.HasPrefix(base, "https://") }

// tlsConfig builds the client's TLS 1.3 config: the cluster CA as the only
// root when given (the system roots otherwise), and the client certificate
// for mTLS when given.
func (c Config) tlsConfig() (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS13}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", c.CAFile)
		}
		conf.RootCAs = pool
	}
	switch {
	case c.CertFile != "" && c.KeyFile != "":
		info, err := os.Stat(c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("private key: %w", err)
		}
		if info.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("private key %s is readable by others (mode %#o); run chmod 600 on it", c.KeyFile, info.Mode().Perm())
		}
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	case c.CertFile != "" || c.KeyFile != "":
		return nil, errors.New("client.cert_file and client.key_file go together: set both or neither")
	}
	return conf, nil
}

// checkToken refuses a token that would go out in cleartext: to an h2c
// address that is not this machine.
func (c Config) checkToken(urls []string) error {
	addrs := c.addresses()
	for i, u := range urls {
		if !isHTTPS(u) && !loopbackURL(u) {
			return fmt.Errorf("client.token is set but client.scheduler %q is plain h2c to an address that is not loopback: the token would go out in cleartext. Use https://host:port with client.ca_file (the scheduler's http_server with a certificate), or remove client.token", addrs[i])
		}
	}
	return nil
}

// loopbackURL reports whether a base URL's host is this machine: a
// loopback IP or "localhost". A name that merely resolves to one is not:
// what it resolves to can change.
func loopbackURL(base string) bool {
	u, err := url.Parse(base)
	if err != nil {
		return false
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
