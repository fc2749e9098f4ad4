// Package etcdmember runs an etcd member inside a scheduler replica's
// process, so that three replicas of one binary make a replicated store
// with no other service to install. It also starts whole clusters of
// in-process members for tests.
package etcdmember

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Defaults of Config.
const (
	// DefaultQuotaBytes is the size at which etcd stops taking writes
	// until it is compacted and defragmented: 2 GiB, etcd's own default
	// made explicit so that the README can state it.
	DefaultQuotaBytes = 2 << 30
	// DefaultCompactionRetention keeps one hour of the store's history:
	// enough for any watcher to resume, small enough that finished jobs'
	// old revisions do not pile up.
	DefaultCompactionRetention = time.Hour
	// MaxTxnOps and MaxRequestBytes raise etcd's limits on one
	// transaction (128 operations, 1.5 MiB): a schedule's fire creates all
	// its jobs, scripts included, in one.
	MaxTxnOps       = 4096
	MaxRequestBytes = 16 << 20
	// DefaultReadyTimeout bounds how long Start waits for the member to
	// join its cluster.
	DefaultReadyTimeout = time.Minute
)

// Config is one member of an embedded cluster.
type Config struct {
	// Name is the member's name, unique in its cluster.
	Name string
	// Dir keeps the member's data (its WAL and snapshots).
	Dir string
	// PeerURL is where the other members reach this one; ClientURL is
	// where clients do. Both are listened on and advertised.
	PeerURL, ClientURL string
	// InitialCluster lists every member as name=peerURL, comma-separated,
	// this one included.
	InitialCluster string
	// Token names the cluster, so that members of another cluster given
	// the same addresses refuse to join it.
	Token string
	// Existing joins a cluster that has already started, instead of
	// bootstrapping a new one.
	Existing bool
	// TLS, when set, serves peer and client traffic over mutual TLS:
	// CertFile serves and is presented as a client, both must be signed
	// by CAFile.
	TLS *TLSFiles
	// TickMs and ElectionMs are the raft heartbeat and election timeout;
	// zero means 100 and 1000 (etcd's defaults).
	TickMs, ElectionMs uint
	// QuotaBytes is the store's size limit; zero means DefaultQuotaBytes.
	QuotaBytes int64
	// CompactionRetention is how much history is kept; zero means
	// DefaultCompactionRetention.
	CompactionRetention time.Duration
	// NoFsync makes writes not durable across a machine crash: for tests
	// only.
	NoFsync bool
	// LogLevel is etcd's own log level; empty means "error".
	LogLevel string
}

// TLSFiles are PEM files of the cluster's CA and this member's key pair.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
	// AllowedCN, when set, is the only certificate common name let in as a
	// peer or client: the CA also signs workers' and users' certificates,
	// and none of them may touch the store.
	AllowedCN string
}

// Member is a running etcd member.
type Member struct {
	cfg  Config
	etcd *embed.Etcd
}

// Start starts the member and waits until it has joined its cluster (for
// a new cluster, until a quorum of members has started).
func Start(ctx context.Context, cfg Config) (*Member, error) {
	ec, err := embedConfig(cfg)
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("etcd member %s: %w", cfg.Name, err)
	}
	ready := time.NewTimer(DefaultReadyTimeout)
	defer ready.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return &Member{cfg: cfg, etcd: e}, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd member %s: %w", cfg.Name, err)
	case <-ready.C:
		e.Close()
		return nil, fmt.Errorf("etcd member %s: not ready after %s: are a quorum of the initial cluster (%s) running?", cfg.Name, DefaultReadyTimeout, cfg.InitialCluster)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
}

func embedConfig(cfg Config) (*embed.Config, error) {
	if cfg.Name == "" || cfg.Dir == "" || cfg.PeerURL == "" || cfg.ClientURL == "" {
		return nil, errors.New("etcd member: name, data dir, peer URL and client URL are required")
	}
	peer, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("etcd member peer URL %q: %w", cfg.PeerURL, err)
	}
	client, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("etcd member client URL %q: %w", cfg.ClientURL, err)
	}
	want := "http"
	if cfg.TLS != nil {
		want = "https"
	}
	if peer.Scheme != want || client.Scheme != want {
		return nil, fmt.Errorf("etcd member %s: peer and client URLs must be %s:// (%s, %s)", cfg.Name, want, cfg.PeerURL, cfg.ClientURL)
	}
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	ec.ListenPeerUrls = []url.URL{*peer}
	ec.AdvertisePeerUrls = []url.URL{*peer}
	ec.ListenClientUrls = []url.URL{*client}
	ec.AdvertiseClientUrls = []url.URL{*client}
	ec.InitialCluster = cfg.InitialCluster
	if ec.InitialCluster == "" {
		ec.InitialCluster = cfg.Name + "=" + cfg.PeerURL
	}
	ec.InitialClusterToken = cfg.Token
	if ec.InitialClusterToken == "" {
		ec.InitialClusterToken = "baton"
	}
	ec.ClusterState = embed.ClusterStateFlagNew
	if cfg.Existing {
		ec.ClusterState = embed.ClusterStateFlagExisting
	}
	if cfg.TickMs > 0 {
		ec.TickMs = cfg.TickMs
	}
	if cfg.ElectionMs > 0 {
		ec.ElectionMs = cfg.ElectionMs
	}
	ec.QuotaBackendBytes = cfg.QuotaBytes
	if ec.QuotaBackendBytes == 0 {
		ec.QuotaBackendBytes = DefaultQuotaBytes
	}
	retention := cfg.CompactionRetention
	if retention == 0 {
		retention = DefaultCompactionRetention
	}
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = retention.String()
	ec.MaxTxnOps = MaxTxnOps
	ec.MaxRequestBytes = MaxRequestBytes
	ec.UnsafeNoFsync = cfg.NoFsync
	ec.LogLevel = cfg.LogLevel
	if ec.LogLevel == "" {
		ec.LogLevel = "error"
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(quietLogger(ec.LogLevel))
	if t := cfg.TLS; t != nil {
		info := func() (ti transport.TLSInfo) {
			ti.CertFile, ti.KeyFile, ti.TrustedCAFile = t.CertFile, t.KeyFile, t.CAFile
			ti.ClientCertAuth = true
			if t.AllowedCN != "" {
				ti.AllowedCNs = []string{t.AllowedCN}
			}
			return ti
		}
		ec.PeerTLSInfo = info()
		ec.ClientTLSInfo = info()
	}
	return ec, nil
}

// quietLogger is etcd's zap logger at level, on standard error.
func quietLogger(level string) *zap.Logger {
	var l zapcore.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = zapcore.ErrorLevel
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(l)
	zc.Sampling = nil
	lg, err := zc.Build()
	if err != nil {
		return zap.NewNop()
	}
	return lg
}

// Name is the member's name.
func (m *Member) Name() string { return m.cfg.Name }

// ClientURL is where clients reach the member.
func (m *Member) ClientURL() string { return m.cfg.ClientURL }

// Etcd is the running member, for fault tests (Server.CutPeer, HardStop).
func (m *Member) Etcd() *embed.Etcd { return m.etcd }

// Client connects to this member alone.
func (m *Member) Client(clientTLS *tls.Config) (*clientv3.Client, error) {
	return NewClient([]string{m.cfg.ClientURL}, clientTLS)
}

// Close stops the member.
func (m *Member) Close() { m.etcd.Close() }

// NewClient connects to the members at endpoints (URLs), over mutual TLS
// when clientTLS is set.
func NewClient(endpoints []string, clientTLS *tls.Config) (*clientv3.Client, error) {
	for i, e := range endpoints {
		endpoints[i] = strings.TrimSpace(e)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  clientTLS,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		// The client's own default (2 MiB) is below what the members
		// take: a transaction between the two would be refused here.
		MaxCallSendMsgSize: MaxRequestBytes,
		Logger:             zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}
