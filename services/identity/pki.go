package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"time"
)

// Validity of what NewAuthority and Issue create by default.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	CertValidity = 365 * 24 * time.Hour
)

// Authority is a cluster's certificate authority: an ECDSA P-256 key and a
// self-signed CA certificate whose URI SAN spiffe://<cluster> names the
// cluster, so that every process learns the cluster from its CA file.
type Authority struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	Cluster string
}

// NewAuthority creates the CA of cluster.
func NewAuthority(cluster string) (*Authority, error) {
	if !ValidName(cluster) {
		return nil, fmt.Errorf("cluster name %q: use 1-63 letters, digits, '.', '_' or '-'", cluster)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Baton CA " + cluster},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: cluster}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Authority{Cert: cert, Key: key, Cluster: cluster}, nil
}

// LoadAuthority reads a CA written by WriteAuthority.
func LoadAuthority(certFile, keyFile string) (*Authority, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	cluster, err := ClusterOf(cert)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	if err := checkKeyMode(keyFile); err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM key", keyFile)
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	return &Authority{Cert: cert, Key: key, Cluster: cluster}, nil
}

// ClusterOf returns the cluster a CA certificate names.
func ClusterOf(ca *x509.Certificate) (string, error) {
	if !ca.IsCA {
		return "", errors.New("not a CA certificate")
	}
	for _, u := range ca.URIs {
		if u.Scheme == "spiffe" && u.Path == "" && ValidName(u.Host) {
			return u.Host, nil
		}
	}
	return "", errors.New("the CA certificate names no cluster (URI SAN spiffe://<cluster>); create it with `baton certs init`")
}

// CertPEM is the CA certificate in PEM.
func (a *Authority) CertPEM() []byte { return certPEM(a.Cert.Raw) }

// KeyPEM is the CA key in PEM.
func (a *Authority) KeyPEM() ([]byte, error) { return keyPEM(a.Key) }

// IssueOptions shape a certificate beyond its principal. The zero value
// gives a certificate valid from now for CertValidity, usable as server
// and client.
type IssueOptions struct {
	// Hosts are DNS names and IP addresses the certificate is valid for,
	// for clients that check host names (curl, grpcurl, the CLI).
	Hosts     []string
	NotBefore time.Time
	NotAfter  time.Time
	// ExtKeyUsage defaults to serverAuth and clientAuth.
	ExtKeyUsage []x509.ExtKeyUsage
	// IsCA makes a leaf that claims to be a CA; only tests want that.
	IsCA bool
}

// Issue creates a key and a certificate for p, both PEM-encoded. A role
// Baton does not know is allowed (such a certificate authenticates and is
// denied everything); `baton certs issue` offers only the known ones.
func (a *Authority) Issue(p Principal, opts IssueOptions) (certPEMBytes, keyPEMBytes []byte, err error) {
	if p.Role.Valid() {
		if err := p.Validate(); err != nil {
			return nil, nil, err
		}
	} else if !ValidName(string(p.Role)) || (p.Name != "" && !ValidName(p.Name)) {
		return nil, nil, fmt.Errorf("identity %q: role and name must be 1-63 letters, digits, '.', '_' or '-'", p)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	if opts.NotBefore.IsZero() {
		opts.NotBefore = now.Add(-time.Minute)
	}
	if opts.NotAfter.IsZero() {
		opts.NotAfter = now.Add(CertValidity)
	}
	if opts.ExtKeyUsage == nil {
		opts.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: p.String()},
		NotBefore:             opts.NotBefore,
		NotAfter:              opts.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           opts.ExtKeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  opts.IsCA,
		URIs:                  []*url.URL{p.URI(a.Cluster)},
	}
	if opts.IsCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	for _, h := range opts.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, &key.PublicKey, a.Key)
	if err != nil {
		return nil, nil, err
	}
	kp, err := keyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return certPEM(der), kp, nil
}

// FileBase is the file name, without extension, of p's certificate and
// key in a certificates directory: "scheduler", "worker-NAME", "user-NAME".
func FileBase(p Principal) string {
	if p.Name == "" {
		return string(p.Role)
	}
	return string(p.Role) + "-" + p.Name
}

// WriteKeyPair writes base.crt (0644) and base.key (0600) into dir,
// replacing what is there.
func WriteKeyPair(dir, base string, certPEMBytes, keyPEMBytes []byte) (certFile, keyFile string, err error) {
	certFile, keyFile = dir+"/"+base+".crt", dir+"/"+base+".key"
	if err := writeFileMode(keyFile, keyPEMBytes, 0o600); err != nil {
		return "", "", err
	}
	if err := writeFileMode(certFile, certPEMBytes, 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// writeFileMode writes through a temporary file and a rename, so that a
// reader (a SIGHUP reload) never sees half a file, and the mode holds even
// when the file existed with a looser one.
func writeFileMode(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// checkKeyMode refuses a private key file that others can read or write.
func checkKeyMode(keyFile string) error {
	info, err := os.Stat(keyFile)
	if err != nil {
		return fmt.Errorf("private key: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("private key %s is readable by others (mode %#o); run chmod 600 on it", keyFile, info.Mode().Perm())
	}
	return nil
}
