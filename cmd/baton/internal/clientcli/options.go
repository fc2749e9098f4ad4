package clientcli

import (
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
)

// clientConfigFlags are the flags every client command takes besides
// --config and --output.
var clientConfigFlags = []config.Flag{
	{Name: "scheduler", Key: "client.scheduler", Usage: "scheduler URL (http:// h2c, https:// TLS) or host:port; replicas: a comma-separated list"},
	{Name: "ca", Key: "client.ca_file", Usage: "cluster CA file (PEM) for https"},
	{Name: "cert", Key: "client.cert_file", Usage: "client certificate file (PEM) for mTLS"},
	{Name: "key", Key: "client.key_file", Usage: "client private key file (PEM)"},
	{Name: "token", Key: "client.token", Usage: "bearer token"},
}

// devClientConfigPath is where `baton dev` leaves the client config of the
// cluster it runs with its default data directory.
func devClientConfigPath() string {
	return filepath.Join(config.StateDir(), "dev", "client.toml")
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
		fs.String(f.Name, "", f.Usage+" ("+f.Key+")")
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
	return "", cliout.UsageErrorf("--output %q: use table or json", o.output)
}

// config loads the effective client configuration: defaults, the file,
// BATON_CLIENT_* variables, then the flags.
func (o *clientOptions) config() (config.ClientConfig, error) {
	cfg := config.DefaultClientConfig()
	_, err := config.Load(&cfg, config.Source{
		File:     clientConfigFile(o.configFile),
		Flags:    o.flags,
		FlagKeys: config.FlagKeys(clientConfigFlags),
		Environ:  o.environ,
		Others:   daemon.Configs(),
	})
	return cfg, err
}
