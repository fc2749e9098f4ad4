package config

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/baton-run/baton/services/identity"
)

// GRPCServerConfig is the [grpc_server] section: the daemon's RPC listener.
type GRPCServerConfig struct {
	// Addr is host:port to listen on.
	Addr string `koanf:"addr"`
	// UseTLS serves mutual TLS 1.3; without it the listener is h2c on
	// loopback only and there is no identity.
	UseTLS bool `koanf:"use_tls"`
	// CrtFile and KeyFile are this daemon's certificate and private key (PEM).
	CrtFile string `koanf:"crt_file"`
	KeyFile string `koanf:"key_file"`
	// CAFile is the cluster CA (PEM): peers' certificates must chain to it,
	// and it names the cluster.
	CAFile string `koanf:"ca_file"`
}

// Credentials loads the daemon's TLS identity, or returns nil without TLS.
// want is the role the daemon's own certificate must have.
func (c GRPCServerConfig) Credentials(want identity.Principal) (*identity.Credentials, error) {
	if !c.UseTLS {
		return nil, nil
	}
	if c.CAFile == "" || c.CrtFile == "" || c.KeyFile == "" {
		return nil, errors.New("grpc_server.use_tls needs grpc_server.ca_file, crt_file and key_file (see `baton certs`): peers are identified by their certificates")
	}
	creds, err := identity.LoadCredentials(c.CAFile, c.CrtFile, c.KeyFile)
	if err != nil {
		return nil, err
	}
	if self := creds.Self(); self.Role != want.Role || self.Name != want.Name {
		return nil, fmt.Errorf("the certificate %s is %s, but this process runs as %s", c.CrtFile, self, want)
	}
	return creds, nil
}

// KeyPair is a certificate and key reloaded from their files on demand,
// for listeners that identify themselves but not their clients.
type KeyPair struct {
	crtFile, keyFile string
	cert             atomic.Pointer[tls.Certificate]
}

// LoadKeyPairFiles loads the pair, checking the key's mode.
func LoadKeyPairFiles(crtFile, keyFile string) (*KeyPair, error) {
	kp := &KeyPair{crtFile: crtFile, keyFile: keyFile}
	return kp, kp.Reload()
}

// Reload reads the files again; a failure keeps the pair it had.
func (kp *KeyPair) Reload() error {
	info, err := os.Stat(kp.keyFile)
	if err != nil {
		return fmt.Errorf("private key: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("private key %s is readable by others (mode %#o); run chmod 600 on it", kp.keyFile, info.Mode().Perm())
	}
	cert, err := tls.LoadX509KeyPair(kp.crtFile, kp.keyFile)
	if err != nil {
		return fmt.Errorf("load certificate: %w", err)
	}
	kp.cert.Store(&cert)
	return nil
}

// ServerTLS serves the current certificate to every new connection.
func (kp *KeyPair) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.cert.Load(), nil },
	}
}

// ReloadOnHangup runs every step on each SIGHUP until ctx ends: new
// connections then use the new certificates; open ones keep theirs. A
// failing step keeps what it had and is logged.
func ReloadOnHangup(ctx context.Context, logger *slog.Logger, steps map[string]func() error) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			for what, step := range steps {
				if err := step(); err != nil {
					logger.Error("reload failed; keeping the previous one", "what", what, "error", err)
				} else {
					logger.Info("reloaded", "what", what)
				}
			}
		}
	}()
}

// ClientTLSFiles is a mutual TLS client configuration from PEM files: the
// CA that servers' certificates must chain to, and this side's key pair.
func ClientTLSFiles(caFile, certFile, keyFile string) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	kp, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%s, %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}, nil
}
