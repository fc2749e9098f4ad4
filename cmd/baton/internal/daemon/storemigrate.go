package daemon

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/services/etcdmember"
	"github.com/baton-run/baton/services/scheduler/store"
)

// StoreMigrateFlags are `baton store migrate`'s flags that set keys of a
// scheduler configuration: the target's [store.etcd].
var StoreMigrateFlags = []config.Flag{
	{Name: "etcd-endpoints", Key: "store.etcd.endpoints", Usage: "client URLs of the target etcd cluster, comma-separated"},
	{Name: "etcd-ca", Key: "store.etcd.ca_file", Usage: "CA certificate of the etcd cluster"},
	{Name: "etcd-cert", Key: "store.etcd.cert_file", Usage: "client certificate for etcd"},
	{Name: "etcd-key", Key: "store.etcd.key_file", Usage: "client key for etcd"},
	{Name: "prefix", Key: "store.etcd.prefix", Usage: "where the store's keys go in etcd"},
}

// NewStoreCommand is `baton store`.
func NewStoreCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Work on the scheduler's store",
		Args:  cliout.UsageArgs(cobra.NoArgs),
	}
	cmd.AddCommand(newStoreMigrateCommand())
	return cmd
}

func newStoreMigrateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate --from PATH/baton.db (--config scheduler.toml | --etcd-endpoints URLS)",
		Short: "Copy a stopped single-node scheduler's SQLite store into etcd, for the replicated scheduler",
		Long: `Copy a single-node scheduler's SQLite store (its data_dir/baton.db) into the etcd of a
replicated scheduler: the [store.etcd] of --config (endpoints, TLS files, prefix), or the flags.

Stop the old scheduler first: a file a scheduler has open is refused. The file is only read,
and left as it was. The target prefix must hold no worker, group, job or schedule.`,
		Args: cliout.UsageArgs(cobra.NoArgs),
	}
	var from string
	cmd.Flags().StringVar(&from, "from", "", "the SQLite store to copy: the old scheduler's <data_dir>/baton.db")
	loadConfig := config.BindFlags(cmd, StoreMigrateFlags, Configs())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if from == "" {
			return cliout.UsageErrorf("%s: give the SQLite store to copy with --from PATH/baton.db", cmd.CommandPath())
		}
		cfg := DefaultSchedulerConfig()
		if err := loadConfig(&cfg); err != nil {
			return err
		}
		return migrateStore(cmd, from, cfg)
	}
	return cmd
}

// migrateStore copies the SQLite store at from into the etcd of cfg's
// [store.etcd], and reports what it copied on cmd's output.
func migrateStore(cmd *cobra.Command, from string, cfg SchedulerConfig) error {
	ctx := cmd.Context()
	e := cfg.Store.Etcd
	endpoints, clientTLS, err := migrateTarget(cfg)
	if err != nil {
		return err
	}
	cli, err := etcdmember.NewClient(endpoints, clientTLS)
	if err != nil {
		return err
	}
	defer cli.Close()
	// Unfenced: no leader's term exists yet, and the copy writes only
	// into an empty prefix.
	st, err := store.OpenEtcd(ctx, cli, store.EtcdOptions{Prefix: e.Prefix})
	if err != nil {
		return fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), err)
	}
	defer st.Close()
	counts, err := store.CopySQLiteToEtcd(ctx, from, st)
	switch {
	case errors.Is(err, store.ErrInUse):
		return fmt.Errorf("%s is open in a running scheduler: stop it first, then copy (nothing was copied, and the running scheduler was left alone)", from)
	case errors.Is(err, store.ErrNotEmpty):
		return fmt.Errorf("%w; nothing was copied: a copy never merges into nor overwrites a store in use. Give another --prefix, or an etcd cluster of its own", err)
	case err != nil:
		if held, cerr := st.CountRecords(ctx); cerr == nil && !held.Empty() {
			return fmt.Errorf("%w; the copy stopped part way, leaving %s under %s: remove them (etcdctl del --prefix %s) before copying again", err, held, e.Prefix, e.Prefix)
		}
		return err
	}
	printMigrated(cmd.OutOrStdout(), from, endpoints, e.Prefix, counts)
	return nil
}

// migrateTarget returns the endpoints of cfg's etcd cluster, and the
// TLS configuration to reach them with.
func migrateTarget(cfg SchedulerConfig) ([]string, *tls.Config, error) {
	e := cfg.Store.Etcd
	if len(e.Endpoints) == 0 {
		if e.Embedded.Name != "" {
			return nil, nil, errors.New("store.etcd is an embedded member, which runs only inside its replica: start the replicas " +
				"with no worker or client pointed at them yet, give the running member's client URL with --etcd-endpoints " +
				"(its TLS files default to grpc_server's), and restart the replicas after the copy so that the leader takes office on the copied state")
		}
		return nil, nil, cliout.UsageErrorf("no target: give --config with a [store.etcd] that lists endpoints, or --etcd-endpoints")
	}
	if !strings.HasPrefix(e.Prefix, "/") {
		return nil, nil, fmt.Errorf("store.etcd.prefix %q must begin with /", e.Prefix)
	}
	ca, crt, key := e.CAFile, e.CertFile, e.KeyFile
	if ca == "" && crt == "" && key == "" && e.Embedded.Name != "" && cfg.GRPCServer.UseTLS {
		// An embedded member lets in the scheduler's certificate.
		ca, crt, key = cfg.GRPCServer.CAFile, cfg.GRPCServer.CrtFile, cfg.GRPCServer.KeyFile
	}
	secure := false
	for _, ep := range e.Endpoints {
		u, err := url.Parse(strings.TrimSpace(ep))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, nil, fmt.Errorf("store.etcd.endpoints: %q is not an http:// or https:// URL", ep)
		}
		secure = secure || u.Scheme == "https"
	}
	if !secure {
		return e.Endpoints, nil, nil
	}
	if ca == "" || crt == "" || key == "" {
		return nil, nil, errors.New("store.etcd.endpoints are https://: give the CA, certificate and key (store.etcd.ca_file, cert_file, key_file, or --etcd-ca, --etcd-cert, --etcd-key)")
	}
	clientTLS, err := config.ClientTLSFiles(ca, crt, key)
	if err != nil {
		return nil, nil, fmt.Errorf("store.etcd: %w", err)
	}
	return e.Endpoints, clientTLS, nil
}

// printMigrated reports a copy: what, where, and what the operator does
// next.
func printMigrated(w io.Writer, from string, endpoints []string, prefix string, c store.RecordCounts) {
	fmt.Fprintf(w, "copied %s into etcd %s under %s\n", from, strings.Join(endpoints, ","), prefix)
	fmt.Fprintf(w, "  %s (the target holds as many of each)\n", c)
	fmt.Fprintln(w, "  with every job's status, idempotency key, waiting stop, queue place, kept script, run id and retried attempts,")
	fmt.Fprintln(w, "  and every schedule's cursor, counters and kept fires")
	fmt.Fprintln(w, "not copied: the audit file and metrics of the old scheduler; jobs' output stays on the workers")
	fmt.Fprintf(w, "next: start the replicas with store.backend = \"etcd\" and prefix %q; do not start the old scheduler on %s again\n", prefix, from)
}
