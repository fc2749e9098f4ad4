package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"strings"
	"time"
)

// diagnoseTLS finds out why a connection to the scheduler at baseURL
// failed in a way a TLS mismatch would explain, with a handshake of its
// own, and says it in the words of the key to change. A failed call can
// surface the same refusal as a broken pipe, an EOF or a closed HTTP/2
// connection, depending on timing; the handshake gives one answer. It
// returns "" when the handshake finds nothing wrong.
//
// It takes at most the time left to ctx (and 5 s), so a call with a short
// deadline fails about as fast as it would have.
func diagnoseTLS(ctx context.Context, baseURL string, conf *tls.Config) string {
	u, err := url.Parse(baseURL)
	if err != nil || ctx.Err() != nil {
		return ""
	}
	addr := u.Host
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if u.Scheme == "http" {
		// A plain client: does the port speak TLS?
		d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return ""
		}
		conn.Close()
		return "the scheduler's port at " + addr + " speaks TLS: use https:// in client.scheduler and set client.ca_file"
	}
	if conf == nil {
		conf = &tls.Config{}
	}
	conf = conf.Clone()
	conf.NextProtos = []string{"h2"}
	d := tls.Dialer{Config: conf}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		var unknown x509.UnknownAuthorityError
		var host x509.HostnameError
		var invalid x509.CertificateInvalidError
		switch {
		case errors.As(err, &unknown):
			return "the scheduler's certificate is not signed by the CA in client.ca_file (another cluster's CA, or client.ca_file unset)"
		case errors.As(err, &host):
			return "the scheduler's certificate is not valid for " + u.Hostname() + ": dial a name it has, or issue it again with --host " + u.Hostname()
		case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
			return "the scheduler's certificate has expired"
		case strings.Contains(err.Error(), "first record does not look like a TLS handshake"):
			return "the scheduler's port at " + addr + " does not speak TLS: use http:// in client.scheduler, without client.ca_file"
		}
		return clientRefused(err)
	}
	defer conn.Close()
	// In TLS 1.3 the server judges the client's certificate after the
	// client's side of the handshake is done: its verdict is an alert on
	// the first read, where an accepted client reads HTTP/2 settings.
	readBy := time.Now().Add(3 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(readBy) {
		readBy = dl
	}
	_ = conn.SetReadDeadline(readBy)
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ""
		}
		return clientRefused(err)
	}
	return ""
}

// clientRefused reads the alert of a server that refused this client.
func clientRefused(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "certificate required"):
		return "the scheduler refused this client: it sent no certificate; set client.cert_file and client.key_file (or use the token port with client.token)"
	case strings.Contains(msg, "unknown certificate authority"), strings.Contains(msg, "bad certificate"):
		return "the scheduler refused this client's certificate: it is not signed by the cluster's CA"
	case strings.Contains(msg, "certificate expired"):
		return "the scheduler refused this client's certificate: it has expired"
	}
	return ""
}
