package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/services/etcdmember"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/replica"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
)

// DefaultElectionTimeout is raft's election timeout of an embedded member:
// half etcd's default, for a failover within a few seconds on a LAN.
const DefaultElectionTimeout = 500 * time.Millisecond

// Store backends of [StoreSection].
const (
	BackendSQLite = "sqlite"
	BackendEtcd   = "etcd"
)

// StoreSection is the [store] section: where the scheduler keeps its
// state. SQLite is one file on this machine; etcd is replicated, and the
// scheduler runs as one of several replicas, the leader doing the work.
type StoreSection struct {
	Backend string      `koanf:"backend"`
	Etcd    EtcdSection `koanf:"etcd"`
}

// EtcdSection is [store.etcd]: either an embedded member of this replica's
// own, or the endpoints of an etcd cluster that runs apart.
type EtcdSection struct {
	// Endpoints are the client URLs of an existing etcd cluster.
	Endpoints []string `koanf:"endpoints"`
	// CAFile, CertFile and KeyFile are the TLS files for https://
	// endpoints.
	CAFile   string `koanf:"ca_file"`
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// Prefix is where Baton's keys live in etcd.
	Prefix string `koanf:"prefix"`
	// SessionTTL is how long a leader that stopped renewing its lease
	// (crashed, cut off) keeps office: whole seconds.
	SessionTTL config.Duration `koanf:"session_ttl"`
	Embedded   EmbeddedEtcd    `koanf:"embedded"`
}

// EmbeddedEtcd is [store.etcd.embedded]: this replica runs an etcd member.
// Its peer and client traffic use the replica's own certificate
// (grpc_server), and only the scheduler's certificate is let in.
type EmbeddedEtcd struct {
	Name string `koanf:"name"`
	// PeerURL and ClientURL are listened on and advertised.
	PeerURL   string `koanf:"peer_url"`
	ClientURL string `koanf:"client_url"`
	// InitialCluster lists every member as name=peer_url, comma-separated.
	InitialCluster string `koanf:"initial_cluster"`
	// Join adds this member to a cluster already running (after `etcdctl
	// member add`), instead of bootstrapping a new one.
	Join bool `koanf:"join"`
	// DataDir keeps the member's data; empty means <scheduler.data_dir>/etcd.
	DataDir string `koanf:"data_dir"`
	// QuotaBytes is the store's size limit.
	QuotaBytes int64 `koanf:"quota_bytes"`
	// CompactionRetention is how much of the store's history is kept.
	CompactionRetention config.Duration `koanf:"compaction_retention"`
	// ElectionTimeout is raft's election timeout; the heartbeat is a tenth.
	ElectionTimeout config.Duration `koanf:"election_timeout"`
}

// defaultStore is SQLite, with the etcd settings an operator would
// otherwise look up.
func defaultStore() StoreSection {
	return StoreSection{
		Backend: BackendSQLite,
		Etcd: EtcdSection{
			Prefix:     replica.DefaultPrefix,
			SessionTTL: config.Duration(replica.DefaultSessionTTL),
			Embedded: EmbeddedEtcd{
				QuotaBytes:          etcdmember.DefaultQuotaBytes,
				CompactionRetention: config.Duration(etcdmember.DefaultCompactionRetention),
				ElectionTimeout:     config.Duration(DefaultElectionTimeout),
			},
		},
	}
}

// validate checks [store] against the listener's TLS setting.
func (s StoreSection) validate(useTLS bool) error {
	switch s.Backend {
	case BackendSQLite:
		return nil
	case BackendEtcd:
	default:
		return fmt.Errorf("store.backend is %q: give %q or %q", s.Backend, BackendSQLite, BackendEtcd)
	}
	e := s.Etcd
	var errs []error
	embedded := e.Embedded.Name != ""
	if embedded == (len(e.Endpoints) > 0) {
		errs = append(errs, errors.New("store.etcd: set either embedded.name (this replica runs an etcd member) or endpoints (an etcd cluster that runs apart), not both"))
	}
	if e.SessionTTL < config.Duration(time.Second) {
		errs = append(errs, fmt.Errorf("store.etcd.session_ttl is %s: give at least 1s", time.Duration(e.SessionTTL)))
	}
	if !strings.HasPrefix(e.Prefix, "/") {
		errs = append(errs, fmt.Errorf("store.etcd.prefix %q must begin with /", e.Prefix))
	}
	if embedded {
		m := e.Embedded
		if m.PeerURL == "" || m.ClientURL == "" || m.InitialCluster == "" {
			errs = append(errs, errors.New("store.etcd.embedded needs peer_url, client_url and initial_cluster"))
		}
		for key, u := range map[string]string{"peer_url": m.PeerURL, "client_url": m.ClientURL} {
			if u == "" {
				continue
			}
			if err := checkEtcdURL(u, useTLS); err != nil {
				errs = append(errs, fmt.Errorf("store.etcd.embedded.%s: %w", key, err))
			}
		}
		if m.InitialCluster != "" && !strings.Contains(","+m.InitialCluster, ","+m.Name+"=") {
			errs = append(errs, fmt.Errorf("store.etcd.embedded.initial_cluster does not list this member (%s=...)", m.Name))
		}
		if m.ElectionTimeout < config.Duration(100*time.Millisecond) {
			errs = append(errs, errors.New("store.etcd.embedded.election_timeout must be at least 100ms"))
		}
	}
	for _, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("store.etcd.endpoints: %q is not an http:// or https:// URL", ep))
			continue
		}
		if u.Scheme == "https" && (e.CAFile == "" || e.CertFile == "" || e.KeyFile == "") {
			errs = append(errs, fmt.Errorf("store.etcd.endpoints: %s needs ca_file, cert_file and key_file", ep))
		}
	}
	return errors.Join(errs...)
}

// checkEtcdURL refuses an embedded member's URL that would carry the store
// in the clear off this machine: without TLS the member listens on
// loopback only, as the API does.
func checkEtcdURL(raw string, useTLS bool) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not a URL", raw)
	}
	if useTLS {
		if u.Scheme != "https" {
			return fmt.Errorf("%q: with grpc_server.use_tls the member speaks mutual TLS: use https://", raw)
		}
		return nil
	}
	if u.Scheme != "http" {
		return fmt.Errorf("%q: without grpc_server.use_tls the member has no certificate: use http:// on loopback", raw)
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q: without TLS the store would cross the network in the clear: listen on loopback, or turn grpc_server.use_tls on", raw)
	}
	return nil
}

// controlPlane is what RunScheduler serves: one scheduler on SQLite, or a
// replica of a replicated one.
type controlPlane interface {
	Handler() http.Handler
	Run(ctx context.Context) error
	SetNotServing()
	Close() error
}

// single is the one scheduler on SQLite.
type single struct {
	sched *scheduler.Scheduler
	st    store.Store
	m     *metrics.Scheduler
}

func (s *single) Handler() http.Handler         { return s.m.Mount(s.sched.Handler()) }
func (s *single) Run(ctx context.Context) error { return s.sched.Run(ctx) }
func (s *single) SetNotServing()                { s.sched.SetNotServing() }
func (s *single) Close() error                  { return s.st.Close() }

func openSingle(ctx context.Context, cfg SchedulerConfig, opts scheduler.Options) (controlPlane, error) {
	st, err := store.Open(ctx, filepath.Join(cfg.Scheduler.DataDir, "baton.db"))
	if err != nil {
		return nil, err
	}
	// The scheduler's registry also carries the process's go_* and
	// process_* metrics: one per process, and `baton dev` has one scheduler.
	opts.Store = st
	opts.Metrics = metrics.NewScheduler(metrics.WithProcessMetrics())
	sched, err := scheduler.New(ctx, opts)
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	return &single{sched: sched, st: st, m: opts.Metrics}, nil
}

// replicated is one replica: maybe an etcd member, the client, and the
// leadership loop that runs a scheduler while this replica leads.
type replicated struct {
	rep    *replica.Replica
	member *etcdmember.Member
	client *clientv3.Client
}

func (r *replicated) Handler() http.Handler         { return r.rep.Handler() }
func (r *replicated) Run(ctx context.Context) error { return r.rep.Run(ctx) }

// SetNotServing has nothing to do: Run resigned and ended the term.
func (r *replicated) SetNotServing() {}

func (r *replicated) Close() error {
	if r.rep != nil {
		r.rep.CloseIdleConnections()
	}
	err := r.client.Close()
	if r.member != nil {
		r.member.Close()
	}
	return err
}

func openReplicated(ctx context.Context, cfg SchedulerConfig, opts scheduler.Options, logger *slog.Logger) (controlPlane, error) {
	e := cfg.Store.Etcd
	r := &replicated{}
	var clientTLS *tls.Config
	endpoints := e.Endpoints
	var err error
	if m := e.Embedded; m.Name != "" {
		mc := etcdmember.Config{
			Name:                m.Name,
			Dir:                 m.DataDir,
			PeerURL:             m.PeerURL,
			ClientURL:           m.ClientURL,
			InitialCluster:      m.InitialCluster,
			Existing:            m.Join,
			QuotaBytes:          m.QuotaBytes,
			CompactionRetention: time.Duration(m.CompactionRetention),
			ElectionMs:          uint(time.Duration(m.ElectionTimeout) / time.Millisecond),
			TickMs:              uint(time.Duration(m.ElectionTimeout) / time.Millisecond / 10),
		}
		if mc.Dir == "" {
			mc.Dir = filepath.Join(cfg.Scheduler.DataDir, "etcd")
		}
		if g := cfg.GRPCServer; g.UseTLS {
			mc.TLS = &etcdmember.TLSFiles{CAFile: g.CAFile, CertFile: g.CrtFile, KeyFile: g.KeyFile, AllowedCN: identity.Scheduler.String()}
			if clientTLS, err = config.ClientTLSFiles(g.CAFile, g.CrtFile, g.KeyFile); err != nil {
				return nil, fmt.Errorf("store.etcd.embedded: %w", err)
			}
		}
		logger.Info("starting the embedded etcd member", "name", m.Name, "peer_url", m.PeerURL, "client_url", m.ClientURL, "initial_cluster", m.InitialCluster)
		if r.member, err = etcdmember.Start(ctx, mc); err != nil {
			return nil, err
		}
		endpoints = []string{m.ClientURL}
	} else if e.CAFile != "" {
		if clientTLS, err = config.ClientTLSFiles(e.CAFile, e.CertFile, e.KeyFile); err != nil {
			return nil, fmt.Errorf("store.etcd: %w", err)
		}
	}
	if r.client, err = etcdmember.NewClient(endpoints, clientTLS); err != nil {
		if r.member != nil {
			r.member.Close()
		}
		return nil, err
	}
	// A follower relays clients' calls to the leader with this replica's
	// certificate, and the leader must show the scheduler's.
	var relayTLS *tls.Config
	if creds := opts.WorkerTLS; creds != nil {
		relayTLS = creds.ClientTLS(identity.Expect(identity.Scheduler))
	}
	r.rep, err = replica.New(replica.Options{
		Client:     r.client,
		Prefix:     e.Prefix,
		Address:    cfg.advertised(),
		SessionTTL: time.Duration(e.SessionTTL),
		Logger:     logger,
		Relay:      func() http.RoundTripper { return serving.NewHTTPClient(relayTLS).Transport },
		RelayTLS:   relayTLS != nil,
		Lead: func(ctx context.Context, st store.Store, epoch int64) (replica.Term, prometheus.Gatherer, error) {
			o := opts
			o.Store = st
			o.Epoch = epoch
			o.Address = cfg.advertised()
			o.Metrics = metrics.NewScheduler()
			sched, err := scheduler.New(ctx, o)
			if err != nil {
				return nil, nil, err
			}
			return sched, o.Metrics.Registry(), nil
		},
	})
	if err != nil {
		_ = r.Close()
		return nil, err
	}
	return r, nil
}
