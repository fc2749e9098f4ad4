package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// Credentials are a process's TLS identity: the cluster CA, its own
// certificate and key. Reload swaps them for what the files hold now;
// connections made afterwards use the new ones. Safe for concurrent use.
type Credentials struct {
	caFile, certFile, keyFile string
	state                     atomic.Pointer[credState]
}

type credState struct {
	pool    *x509.CertPool
	cluster string
	cert    tls.Certificate
	self    Principal
}

// LoadCredentials reads the CA, certificate and key files. The key must not
// be readable by others.
func LoadCredentials(caFile, certFile, keyFile string) (*Credentials, error) {
	c := &Credentials{caFile: caFile, certFile: certFile, keyFile: keyFile}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// Reload reads the files again. On error the old credentials stay.
func (c *Credentials) Reload() error {
	if c.caFile == "" || c.certFile == "" || c.keyFile == "" {
		return errors.New("TLS needs a CA file, a certificate file and a key file")
	}
	caPEM, err := os.ReadFile(c.caFile)
	if err != nil {
		return fmt.Errorf("CA file: %w", err)
	}
	ca, err := parseCertPEM(caPEM)
	if err != nil {
		return fmt.Errorf("CA file %s: %w", c.caFile, err)
	}
	cluster, err := ClusterOf(ca)
	if err != nil {
		return fmt.Errorf("CA file %s: %w", c.caFile, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if err := checkKeyMode(c.keyFile); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("load certificate: %w", err)
	}
	s := &credState{pool: pool, cluster: cluster, cert: cert}
	leaf := cert.Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("certificate %s is not signed by the CA in %s: %w", c.certFile, c.caFile, err)
	}
	if s.self, err = s.principalOf(leaf); err != nil {
		return fmt.Errorf("certificate %s: %w", c.certFile, err)
	}
	c.state.Store(s)
	return nil
}

// Self is the principal of the process's own certificate.
func (c *Credentials) Self() Principal { return c.state.Load().self }

// Cluster is the cluster the CA names.
func (c *Credentials) Cluster() string { return c.state.Load().cluster }

// PrincipalOf reads the identity of a peer certificate that the handshake
// verified.
func (c *Credentials) PrincipalOf(cert *x509.Certificate) (Principal, error) {
	return c.state.Load().principalOf(cert)
}

// principalOf requires exactly one URI SAN of the cluster.
func (s *credState) principalOf(cert *x509.Certificate) (Principal, error) {
	if len(cert.URIs) != 1 {
		return Principal{}, fmt.Errorf("certificate %q has %d URI identities, want 1", cert.Subject.CommonName, len(cert.URIs))
	}
	return ParseURI(cert.URIs[0], s.cluster)
}

// ServerTLS is the config of a listener that requires a client certificate
// from the cluster CA (mutual TLS 1.3). Each handshake takes the current
// credentials, so a Reload applies to new connections at once.
func (c *Credentials) ServerTLS() *tls.Config {
	return c.serverTLS(tls.RequireAndVerifyClientCert)
}

// ServerTLSClientCertOptional is ServerTLS for a listener that also admits
// callers without a certificate (browsers with bearer tokens); a
// certificate, if shown, must still verify.
func (c *Credentials) ServerTLSClientCertOptional() *tls.Config {
	return c.serverTLS(tls.VerifyClientCertIfGiven)
}

func (c *Credentials) serverTLS(auth tls.ClientAuthType) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: auth,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			s := c.state.Load()
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{s.cert},
				ClientAuth:   auth,
				ClientCAs:    s.pool,
				NextProtos:   []string{"h2", "http/1.1"},
				// The chain and clientAuth usage were verified; refuse what
				// a CA signed but is no Baton identity.
				VerifyConnection: func(cs tls.ConnectionState) error {
					if len(cs.PeerCertificates) == 0 {
						return nil
					}
					return s.checkLeaf(cs.PeerCertificates[0])
				},
			}, nil
		},
	}
}

// checkLeaf refuses a leaf that claims to be a CA or names no identity of
// the cluster.
func (s *credState) checkLeaf(leaf *x509.Certificate) error {
	if leaf.IsCA {
		return errors.New("the peer's certificate is a CA certificate, not a leaf")
	}
	_, err := s.principalOf(leaf)
	return err
}

// ClientTLS is the config for dialing a cluster member: the peer must
// chain to the cluster CA with serverAuth usage and have an identity that
// want accepts (say, the scheduler's). Host names are not checked: the
// identity is the URI SAN, whatever address the peer was dialled at.
func (c *Credentials) ClientTLS(want func(Principal) error) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Verification is not skipped but done in VerifyConnection, which
		// checks the chain as the default would, minus the host name.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &c.state.Load().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return c.state.Load().verifyServer(cs, want)
		},
	}
}

func (s *credState) verifyServer(cs tls.ConnectionState, want func(Principal) error) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the peer showed no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return err
	}
	if err := s.checkLeaf(leaf); err != nil {
		return err
	}
	p, _ := s.principalOf(leaf)
	if err := want(p); err != nil {
		return fmt.Errorf("peer %s: %w", p, err)
	}
	return nil
}

// Expect returns a check for ClientTLS that accepts exactly p.
func Expect(p Principal) func(Principal) error {
	return func(got Principal) error {
		if got.Role != p.Role || got.Name != p.Name {
			return fmt.Errorf("want %s", p)
		}
		return nil
	}
}
