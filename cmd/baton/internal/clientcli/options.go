package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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
	// and h2c otherwise.
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

func defaultClientConfig() ClientConfig {
	return ClientConfig{Client: ClientSection{Scheduler: "http://127.0.0.1:7070"}}
}

// clientConfigFlags are the flags every client command takes besides
// --config and --output.
var clientConfigFlags = []configFlag{
	{"scheduler", "client.scheduler", "scheduler URL (http:// h2c, https:// TLS) or host:port"},
	{"ca", "client.ca_file", "cluster CA file (PEM) for https"},
	{"cert", "client.cert_file", "client certificate file (PEM) for mTLS"},
	{"key", "client.key_file", "client private key file (PEM)"},
	{"token", "client.token", "bearer token"},
}

// devClientConfigPath is where `baton dev` leaves the client config of the
// cluster it runs with its default data directory.
func devClientConfigPath() string {
	return filepath.Join(stateDir(), "dev", "client.toml")
}

// clientConfigFile picks the client's config file: the flag, else
// $BATON_CONFIG, else the dev cluster's client.toml when it exists, else
// none (the defaults reach a dev cluster on its default address).
func clientConfigFile(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("BATON_CONFIG"); env != "" {
		return env
	}
	if p := devClientConfigPath(); fileExists(p) {
		return p
	}
	return ""
}

func fileExists(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular()
}

// clientOptions holds what a client command's flags say; it is filled by
// cobra when the flags are parsed.
type clientOptions struct {
	configFile string
	output     string
	flags      *pflag.FlagSet
	// environ replaces the process environment in tests.
	environ []string
}

// bindClientFlags adds the client flags to cmd.
func bindClientFlags(cmd *cobra.Command) *clientOptions {
	o := &clientOptions{flags: cmd.Flags()}
	fs := cmd.Flags()
	fs.StringVar(&o.configFile, "config", "", "client config file (default $BATON_CONFIG, else the dev cluster's client.toml)")
	for _, f := range clientConfigFlags {
		fs.String(f.name, "", f.usage+" ("+f.key+")")
	}
	fs.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	return o
}

// format checks the --output flag.
func (o *clientOptions) format() (outputFormat, error) {
	switch o.output {
	case "table":
		return formatTable, nil
	case "json":
		return formatJSON, nil
	}
	return "", usageErrorf("--output %q: use table or json", o.output)
}

// config loads the effective client configuration: defaults, the file,
// BATON_CLIENT_* variables, then the flags.
func (o *clientOptions) config() (ClientConfig, error) {
	cfg := defaultClientConfig()
	_, err := load(&cfg, configSource{
		file:     clientConfigFile(o.configFile),
		flags:    o.flags,
		flagKeys: flagKeys(clientConfigFlags),
		environ:  o.environ,
	})
	return cfg, err
}

// otherConfigEnv reports whether name is the environment variable of a key
// of any Baton command's configuration. A shell may export variables for
// several commands (the worker's and the client's); each command skips the
// others' but still refuses names no command knows.
func otherConfigEnv(name string) bool {
	for _, cfg := range []any{SchedulerConfig{}, WorkerConfig{}, ClientConfig{}} {
		for key := range leafKeys(reflect.TypeOf(cfg), "") {
			if envPrefix+strings.ToUpper(strings.ReplaceAll(key, ".", "_")) == name {
				return true
			}
		}
	}
	return false
}

// writeClientConfig writes a client config file (mode 0600: it may name a
// key file or hold a token) that points the client commands at a cluster.
// The file is replaced atomically, so a client never reads half of it.
func writeClientConfig(path string, c ClientSection) error {
	body, err := toml.Parser().Marshal(structMap(reflect.ValueOf(&ClientConfig{Client: c}).Elem()))
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
