// Package certs is `baton certs` and `baton token`: a cluster CA, the
// certificates it issues, and bearer tokens.
package certs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-run/baton/services/identity"
)

// NewCommand groups `baton certs init` and `baton certs issue`.
func NewCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Create a cluster CA and issue role certificates (mutual TLS)",
	}
	cmd.AddCommand(newCertsInitCommand(), newCertsIssueCommand())
	return cmd
}

func newCertsInitCommand() *cobra.Command {
	var dir, cluster string
	var force bool
	cmd := &cobra.Command{
		Use:   "init --dir DIR --cluster NAME",
		Short: "Create the cluster CA: DIR/ca.crt and DIR/ca.key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := InitAuthority(dir, cluster, force)
			if err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "created the CA of cluster %q: %s, %s\n", cluster,
					filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "certs", "directory for the CA and certificates")
	cmd.Flags().StringVar(&cluster, "cluster", "baton", "cluster name, part of every identity")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing CA (every certificate it issued stops working)")
	return cmd
}

// InitAuthority creates the CA files in dir, refusing to replace a CA
// unless forced.
func InitAuthority(dir, cluster string, force bool) (*identity.Authority, error) {
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil && !force {
		return nil, fmt.Errorf("%s already holds a CA; pass --force to replace it", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := identity.NewAuthority(cluster)
	if err != nil {
		return nil, err
	}
	key, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	if _, _, err := identity.WriteKeyPair(dir, "ca", ca.CertPEM(), key); err != nil {
		return nil, err
	}
	return ca, nil
}

func newCertsIssueCommand() *cobra.Command {
	var dir, role, name string
	var hosts []string
	var validity time.Duration
	var force bool
	cmd := &cobra.Command{
		Use:   "issue --dir DIR --role scheduler|worker|admin|user|viewer [--name NAME] [--host H ...]",
		Short: "Issue a certificate for a role: DIR/<role>[-NAME].crt and .key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := identity.LoadAuthority(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
			if err != nil {
				return fmt.Errorf("load the CA (run `baton certs init` first): %w", err)
			}
			p := identity.Principal{Role: identity.Role(role), Name: name}
			if err := p.Validate(); err != nil {
				return err
			}
			if !force {
				// A certificate in use would be replaced under its user.
				for _, ext := range []string{".crt", ".key"} {
					file := filepath.Join(dir, identity.FileBase(p)+ext)
					if _, err := os.Lstat(file); err == nil {
						return fmt.Errorf("%s already exists; pass --force to replace it", file)
					}
				}
			}
			crt, key, err := issueCert(ca, dir, p, hosts, validity)
			if err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "issued %s: %s, %s\n",
					identity.Principal{Role: identity.Role(role), Name: name}.URI(ca.Cluster), crt, key)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "certs", "directory holding the CA")
	f.StringVar(&role, "role", "", "scheduler, worker, admin, user or viewer")
	f.StringVar(&name, "name", "", "the principal's name (not for the scheduler); a worker's is its worker name")
	f.StringSliceVar(&hosts, "host", nil, "DNS name or IP the certificate serves (scheduler and workers; localhost, 127.0.0.1 and ::1 are always added)")
	f.DurationVar(&validity, "validity", identity.CertValidity, "how long the certificate is valid")
	f.BoolVar(&force, "force", false, "replace an existing certificate and key of this principal")
	_ = cmd.MarkFlagRequired("role")
	return cmd
}

// issueCert issues p's certificate into dir. Servers get loopback names
// too, so that curl and grpcurl on the same machine can check them.
func issueCert(ca *identity.Authority, dir string, p identity.Principal, hosts []string, validity time.Duration) (crtFile, keyFile string, err error) {
	if err := p.Validate(); err != nil {
		return "", "", err
	}
	if p.Role == identity.RoleScheduler || p.Role == identity.RoleWorker {
		hosts = append([]string{"localhost", "127.0.0.1", "::1"}, hosts...)
	}
	now := time.Now()
	crt, key, err := ca.Issue(p, identity.IssueOptions{Hosts: hosts, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(validity)})
	if err != nil {
		return "", "", err
	}
	return identity.WriteKeyPair(dir, identity.FileBase(p), crt, key)
}

// NewTokenCommand creates a bearer token for browsers and JSON clients.
func NewTokenCommand() *cobra.Command {
	var role, name string
	var expires time.Duration
	cmd := &cobra.Command{
		Use:   "token --role admin|user|viewer --name NAME [--expires D]",
		Short: "Create a bearer token; prints it once, and the entry for [http_server] tokens",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var until time.Time
			if expires > 0 {
				until = time.Now().Add(expires)
			}
			token, entry, err := identity.NewToken(identity.Principal{Role: identity.Role(role), Name: name}, until)
			if err != nil {
				return err
			}
			printToken(cmd.OutOrStdout(), token, entry)
			return nil
		},
	}
	cmd.Flags().StringVar(&role, "role", "", "admin, user or viewer")
	cmd.Flags().StringVar(&name, "name", "", "the principal's name")
	cmd.Flags().DurationVar(&expires, "expires", 0, "lifetime (e.g. 720h); 0 never expires")
	_ = cmd.MarkFlagRequired("role")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func printToken(w io.Writer, token, entry string) {
	fmt.Fprintf(w, `token (shown once; give it to its holder):
  %s
add to the scheduler's config, then send it SIGHUP:
  [http_server]
  tokens = [%q]
`, token, entry)
}

// Ensure returns the certificate and key files of each principal in
// dir, creating the CA of cluster and any certificate that is missing:
// `baton dev` run twice reuses what it made the first time.
func Ensure(dir, cluster string, principals ...identity.Principal) (caFile string, files map[identity.Principal][2]string, err error) {
	caFile = filepath.Join(dir, "ca.crt")
	var ca *identity.Authority
	if _, err := os.Stat(caFile); errors.Is(err, os.ErrNotExist) {
		if ca, err = InitAuthority(dir, cluster, false); err != nil {
			return "", nil, err
		}
	} else if ca, err = identity.LoadAuthority(caFile, filepath.Join(dir, "ca.key")); err != nil {
		return "", nil, err
	}
	files, err = IssueMissing(ca, func(identity.Principal) string { return dir }, principals)
	if err != nil {
		return "", nil, err
	}
	return caFile, files, nil
}

// IssueMissing returns the certificate and key files of each principal in
// dirOf(p), issuing a pair where one is missing.
func IssueMissing(ca *identity.Authority, dirOf func(identity.Principal) string, principals []identity.Principal) (map[identity.Principal][2]string, error) {
	files := make(map[identity.Principal][2]string, len(principals))
	for _, p := range principals {
		dir := dirOf(p)
		base := filepath.Join(dir, identity.FileBase(p))
		crt, key := base+".crt", base+".key"
		_, cerr := os.Stat(crt)
		_, kerr := os.Stat(key)
		if cerr != nil || kerr != nil {
			var err error
			if crt, key, err = issueCert(ca, dir, p, nil, identity.CertValidity); err != nil {
				return nil, err
			}
		}
		files[p] = [2]string{crt, key}
	}
	return files, nil
}
