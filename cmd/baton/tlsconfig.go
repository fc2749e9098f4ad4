package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// GRPCServerConfig is the [grpc_server] section: the daemon's RPC listener.
type GRPCServerConfig struct {
	// Addr is host:port to listen on.
	Addr string `koanf:"addr"`
	// UseTLS serves TLS 1.3; without it the listener is h2c on loopback only.
	UseTLS bool `koanf:"use_tls"`
	// CrtFile and KeyFile are this daemon's certificate and private key (PEM).
	CrtFile string `koanf:"crt_file"`
	KeyFile string `koanf:"key_file"`
	// CAFile is the cluster CA (PEM): peers' certificates must chain to it.
	CAFile string `koanf:"ca_file"`
}

// serverTLS returns the listener's TLS config, or nil for h2c. With a CA file
// the server asks for and verifies client certificates.
func (c GRPCServerConfig) serverTLS() (*tls.Config, error) {
	if !c.UseTLS {
		return nil, nil
	}
	cert, err := loadKeyPair(c.CrtFile, c.KeyFile)
	if err != nil {
		return nil, err
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}
	if c.CAFile != "" {
		pool, err := loadCA(c.CAFile)
		if err != nil {
			return nil, err
		}
		conf.ClientCAs = pool
		conf.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return conf, nil
}

// clientTLS returns the TLS config for dialing peers: the cluster CA as the
// only root when given, and this daemon's certificate as client certificate.
func (c GRPCServerConfig) clientTLS() (*tls.Config, error) {
	if !c.UseTLS {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS13}
	if c.CAFile != "" {
		pool, err := loadCA(c.CAFile)
		if err != nil {
			return nil, err
		}
		conf.RootCAs = pool
	}
	if c.CrtFile != "" {
		cert, err := loadKeyPair(c.CrtFile, c.KeyFile)
		if err != nil {
			return nil, err
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// loadKeyPair loads a certificate and refuses a private key that others can read.
func loadKeyPair(crtFile, keyFile string) (tls.Certificate, error) {
	if crtFile == "" || keyFile == "" {
		return tls.Certificate{}, errors.New("grpc_server.use_tls needs grpc_server.crt_file and grpc_server.key_file")
	}
	info, err := os.Stat(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("private key: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return tls.Certificate{}, fmt.Errorf("private key %s is readable by others (mode %#o); run chmod 600 on it", keyFile, info.Mode().Perm())
	}
	cert, err := tls.LoadX509KeyPair(crtFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate: %w", err)
	}
	return cert, nil
}

func loadCA(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}
