package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"

	"github.com/knadh/koanf/parsers/toml/v2"
)

// ClientConfig is the configuration of the client commands (run, start,
// stop, status, logs, jobs, workers, drain): how to reach and authenticate
// to a scheduler.
type ClientConfig struct {
	Client ClientSection `koanf:"client"`
}

// ClientSection is the [client] section.
type ClientSection struct {
	// Scheduler is a URL (http:// is h2c, https:// is TLS) or host:port,
	// which means https when a CA or a client certificate is configured
	// and h2c otherwise; or, for a replicated scheduler, a comma-separated
	// list of them, all of one scheme, whose leader the client follows.
	Scheduler string `koanf:"scheduler"`
	// CAFile is the cluster CA (PEM) that the scheduler's certificate must
	// chain to; empty uses the system roots.
	CAFile string `koanf:"ca_file"`
	// CertFile and KeyFile are the client certificate and key (PEM) for
	// mTLS; a key readable by group or others is refused.
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// Token is sent as "Authorization: Bearer <token>".
	Token string `koanf:"token"`
}

// DefaultClientConfig reaches a dev cluster on its default address.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{Client: ClientSection{Scheduler: "http://127.0.0.1:7070"}}
}

// WriteClientConfig writes a client config file (mode 0600: it may name a
// key file or hold a token) that points the client commands at a cluster.
// The file is replaced atomically, so a client never reads half of it.
func WriteClientConfig(path string, c ClientSection) error {
	body, err := toml.Parser().Marshal(StructMap(reflect.ValueOf(&ClientConfig{Client: c}).Elem()))
	if err != nil {
		return fmt.Errorf("client config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("client config: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".client-*.toml")
	if err != nil {
		return fmt.Errorf("client config: %w", err)
	}
	defer os.Remove(tmp.Name())
	header := "# How the baton client commands reach this cluster; see `baton config print`.\n"
	_, werr := tmp.WriteString(header + string(body))
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("client config: %w", err)
	}
	// CreateTemp makes the file 0600 already; say so for readers.
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return fmt.Errorf("client config: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("client config: %w", err)
	}
	return nil
}
