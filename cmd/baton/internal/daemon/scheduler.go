package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/serving"
	"github.com/baton-run/baton/services/webui"
)

// SchedulerConfig is the configuration of `baton scheduler`.
type SchedulerConfig struct {
	GRPCServer config.GRPCServerConfig `koanf:"grpc_server"`
	HTTPServer HTTPServerConfig        `koanf:"http_server"`
	Scheduler  SchedulerSection        `koanf:"scheduler"`
	Store      StoreSection            `koanf:"store"`
	Log        config.LogConfig        `koanf:"log"`
}

// HTTPServerConfig is the [http_server] section: an optional second
// listener serving the same API to browsers and JSON clients.
type HTTPServerConfig struct {
	// Addr is host:port; empty disables the listener.
	Addr string `koanf:"addr"`
	// CrtFile and KeyFile serve TLS; without them the listener is plain
	// HTTP on loopback only.
	CrtFile string `koanf:"crt_file"`
	KeyFile string `koanf:"key_file"`
	// Tokens are the bearer tokens accepted, as "role/name:sha256hex"
	// entries from `baton token`. Without any, a plain listener treats
	// every caller as an anonymous admin, as use_tls = false does.
	Tokens []string `koanf:"tokens"`
	// AllowedHosts are names, besides localhost and loopback addresses,
	// that a plain listener answers to in Host (and a browser's Origin):
	// anything else is refused, so that no web page can reach it by
	// pointing its own name at 127.0.0.1. Not for a TLS listener.
	AllowedHosts []string `koanf:"allowed_hosts"`
}

// SchedulerSection is the [scheduler] section.
type SchedulerSection struct {
	DataDir           string          `koanf:"data_dir"`
	HeartbeatInterval config.Duration `koanf:"heartbeat_interval"`
	HeartbeatGrace    config.Duration `koanf:"heartbeat_grace"`
	FailoverGrace     config.Duration `koanf:"failover_grace"`
	RestartGrace      config.Duration `koanf:"restart_grace"`
	Retention         config.Duration `koanf:"retention"`
	ShutdownTimeout   config.Duration `koanf:"shutdown_timeout"`
	// MaxQueuedPerOwner is the most jobs one owner may have waiting in
	// the queue; -1 means no limit.
	MaxQueuedPerOwner int `koanf:"max_queued_per_owner"`
	// MaxSchedulesPerOwner is the most schedules one owner may define;
	// -1 means no limit.
	MaxSchedulesPerOwner int `koanf:"max_schedules_per_owner"`
	// MaxUserPriority is the highest priority a user (not an admin) may
	// give a job.
	MaxUserPriority int `koanf:"max_user_priority"`
	// AuditFile receives one JSON line per mutating call and per denied
	// call; empty disables the audit log.
	AuditFile string `koanf:"audit_file"`
	// AdvertiseAddr is where workers and clients reach this scheduler
	// (host:port), handed out by the other replicas while this one
	// leads; empty means grpc_server.addr.
	AdvertiseAddr string `koanf:"advertise_addr"`
}

// advertised is where other replicas send callers while this one leads.
func (c *SchedulerConfig) advertised() string {
	if c.Scheduler.AdvertiseAddr != "" {
		return c.Scheduler.AdvertiseAddr
	}
	return c.GRPCServer.Addr
}

// DefaultSchedulerConfig is a scheduler on loopback with the scheduler
// package's defaults.
func DefaultSchedulerConfig() SchedulerConfig {
	var c SchedulerConfig
	c.GRPCServer.Addr = "127.0.0.1:7070"
	c.Scheduler = SchedulerSection{
		HeartbeatInterval: config.Duration(scheduler.DefaultHeartbeatInterval),
		HeartbeatGrace:    config.Duration(scheduler.DefaultHeartbeatGrace),
		FailoverGrace:     config.Duration(scheduler.DefaultFailoverGrace),
		RestartGrace:      config.Duration(scheduler.DefaultRestartGrace),
		Retention:         config.Duration(scheduler.DefaultRetention),
		ShutdownTimeout:   config.Duration(30 * time.Second),
		MaxQueuedPerOwner: scheduler.DefaultMaxQueuedPerOwner,
		MaxUserPriority:   scheduler.DefaultMaxUserPriority,
		// Set apart so that a merge of other keys above stays clean.
		MaxSchedulesPerOwner: scheduler.DefaultMaxSchedulesPerOwner,
	}
	c.Store = defaultStore()
	c.Log = config.DefaultLogConfig()
	return c
}

// Validate checks what the types cannot.
func (c *SchedulerConfig) Validate() error {
	var errs []error
	s := c.Scheduler
	if s.HeartbeatInterval <= 0 || s.HeartbeatGrace <= 0 || s.FailoverGrace <= 0 || s.RestartGrace <= 0 || s.Retention <= 0 || s.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("scheduler.heartbeat_interval, heartbeat_grace, failover_grace, restart_grace, retention and shutdown_timeout must be positive"))
	}
	if s.MaxUserPriority < 0 || s.MaxUserPriority > 100 {
		errs = append(errs, fmt.Errorf("scheduler.max_user_priority is %d: give a priority from 0 to 100", s.MaxUserPriority))
	}
	if s.MaxQueuedPerOwner == 0 || s.MaxQueuedPerOwner < -1 {
		errs = append(errs, fmt.Errorf("scheduler.max_queued_per_owner is %d: give a positive number, or -1 for no limit", s.MaxQueuedPerOwner))
	}
	if s.MaxSchedulesPerOwner == 0 || s.MaxSchedulesPerOwner < -1 {
		errs = append(errs, fmt.Errorf("scheduler.max_schedules_per_owner is %d: give a positive number, or -1 for no limit", s.MaxSchedulesPerOwner))
	}
	if _, _, err := net.SplitHostPort(c.GRPCServer.Addr); err != nil {
		errs = append(errs, fmt.Errorf("grpc_server.addr %q: %w", c.GRPCServer.Addr, err))
	}
	if c.HTTPServer.Addr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPServer.Addr); err != nil {
			errs = append(errs, fmt.Errorf("http_server.addr %q: %w", c.HTTPServer.Addr, err))
		}
	}
	if (c.HTTPServer.CrtFile == "") != (c.HTTPServer.KeyFile == "") {
		errs = append(errs, errors.New("http_server.crt_file and http_server.key_file go together"))
	}
	if _, err := identity.ParseTokens(c.HTTPServer.Tokens); err != nil {
		errs = append(errs, fmt.Errorf("http_server.tokens: %w", err))
	}
	if len(c.HTTPServer.AllowedHosts) > 0 && c.HTTPServer.CrtFile != "" {
		errs = append(errs, errors.New("http_server.allowed_hosts is for the plain listener; with crt_file the certificate decides which names reach it"))
	}
	if err := serving.CheckAllowedHosts(c.HTTPServer.AllowedHosts); err != nil {
		errs = append(errs, fmt.Errorf("http_server.allowed_hosts: %w", err))
	}
	if err := c.Store.validate(c.GRPCServer.UseTLS); err != nil {
		errs = append(errs, err)
	}
	if c.Store.Backend == BackendEtcd {
		host, _, err := net.SplitHostPort(c.advertised())
		if ip := net.ParseIP(host); err != nil || host == "" || (ip != nil && ip.IsUnspecified()) {
			errs = append(errs, fmt.Errorf("scheduler.advertise_addr: the other replicas send callers to %q while this one leads: give an address they can reach", c.advertised()))
		}
	}
	return errors.Join(errs...)
}

// SchedulerFlags are `baton scheduler`'s flags besides --config.
var SchedulerFlags = []config.Flag{
	{Name: "addr", Key: "grpc_server.addr", Usage: "listen address"},
	{Name: "http-addr", Key: "http_server.addr", Usage: "plain HTTP listener on loopback"},
	{Name: "data-dir", Key: "scheduler.data_dir", Usage: "data directory"},
	{Name: "log-level", Key: "log.level", Usage: "debug, info, warn or error"},
	{Name: "log-format", Key: "log.format", Usage: "text, json or auto"},
}

// NewSchedulerCommand is `baton scheduler`.
func NewSchedulerCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "scheduler",
		Short: "Run the scheduler: it keeps the roster of workers and places jobs on them",
		Args:  cobra.NoArgs,
	}
	loadConfig := config.BindFlags(cmd, SchedulerFlags, Configs())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg := DefaultSchedulerConfig()
		if err := loadConfig(&cfg); err != nil {
			return err
		}
		if cfg.Scheduler.DataDir == "" {
			cfg.Scheduler.DataDir = filepath.Join(config.StateDir(), "scheduler")
		}
		if err := cfg.Validate(); err != nil {
			return err
		}
		reload := func() (SchedulerConfig, error) {
			fresh := DefaultSchedulerConfig()
			if err := loadConfig(&fresh); err != nil {
				return cfg, err
			}
			return fresh, fresh.Validate()
		}
		return RunScheduler(cmd.Context(), cfg, reload)
	}
	return cmd
}

// RunScheduler serves until ctx ends, then shuts down in order: report not
// serving, stop the listeners (bounded), stop the sweeper, close the store.
// On SIGHUP it reloads certificates, keys and tokens (from reload, when
// not nil) and reopens the audit file.
func RunScheduler(ctx context.Context, cfg SchedulerConfig, reload func() (SchedulerConfig, error)) error {
	logger, err := config.NewLogger(cfg.Log, os.Stderr)
	if err != nil {
		return err
	}
	creds, err := cfg.GRPCServer.Credentials(identity.Scheduler)
	if err != nil {
		return err
	}
	tokens, err := identity.ParseTokens(cfg.HTTPServer.Tokens)
	if err != nil {
		return err
	}
	var audit *identity.AuditLog
	if cfg.Scheduler.AuditFile != "" {
		if audit, err = identity.OpenAuditLog(cfg.Scheduler.AuditFile); err != nil {
			return err
		}
		defer audit.Close()
	}
	opts := scheduler.Options{
		HeartbeatInterval: time.Duration(cfg.Scheduler.HeartbeatInterval),
		HeartbeatGrace:    time.Duration(cfg.Scheduler.HeartbeatGrace),
		FailoverGrace:     time.Duration(cfg.Scheduler.FailoverGrace),
		RestartGrace:      time.Duration(cfg.Scheduler.RestartGrace),
		Retention:         time.Duration(cfg.Scheduler.Retention),
		MaxQueuedPerOwner: cfg.Scheduler.MaxQueuedPerOwner,
		MaxUserPriority:   userPriority(cfg.Scheduler.MaxUserPriority),
		// -1 (no limit) is the scheduler's negative.
		MaxSchedulesPerOwner: cfg.Scheduler.MaxSchedulesPerOwner,
		WorkerTLS:            creds,
		Audit:                audit,
		Logger:               logger,
	}
	var sched controlPlane
	if cfg.Store.Backend == BackendEtcd {
		sched, err = openReplicated(ctx, cfg, opts, logger)
	} else {
		sched, err = openSingle(ctx, cfg, opts)
	}
	if err != nil {
		return err
	}
	defer sched.Close()
	reloads := map[string]func() error{"audit file": audit.Reopen}

	servers := make([]*serving.Server, 0, 2)
	var serverTLS *tls.Config
	if creds != nil {
		serverTLS = creds.ServerTLS()
		reloads["certificates"] = creds.Reload
	} else {
		logger.Warn("serving without TLS: there is no identity, every caller counts as an anonymous admin; use this on loopback only")
	}
	// /metrics and health are served beside the API under one rule on
	// every listener (identity.GuardOperations). With use_tls = false the
	// listener answers loopback names only, like the plain http_server
	// (serving.Listen), and its anonymous caller may read them.
	// A replica relays a client's call naming the client: the call is
	// served as the client's (identity.ActOnBehalfOf).
	grpcAuth := identity.NewAuthenticator(creds, nil, creds == nil)
	srv, err := serving.Listen(cfg.GRPCServer.Addr, grpcAuth.Middleware(identity.ActOnBehalfOf(identity.GuardOperations(sched.Handler()))), serverTLS, logger)
	if err != nil {
		return err
	}
	servers = append(servers, srv)
	if cfg.HTTPServer.Addr != "" {
		var httpTLS *tls.Config
		if cfg.HTTPServer.CrtFile != "" {
			kp, err := config.LoadKeyPairFiles(cfg.HTTPServer.CrtFile, cfg.HTTPServer.KeyFile)
			if err != nil {
				_ = srv.Shutdown(context.Background())
				return fmt.Errorf("http_server: %w", err)
			}
			httpTLS = kp.ServerTLS()
			reloads["http_server certificate"] = kp.Reload
		}
		// Without TLS, serving.Listen refuses anything but loopback, and
		// answers only requests for this machine: loopback addresses,
		// localhost and allowed_hosts (no DNS rebinding). Over TLS the
		// certificate does that; validate refuses allowed_hosts there.
		anonymous := httpTLS == nil && tokens.Len() == 0
		httpAuth := identity.NewAuthenticator(nil, tokens, anonymous)
		if reload != nil {
			reloads["tokens"] = func() error {
				fresh, err := reload()
				if err != nil {
					return err
				}
				t, err := identity.ParseTokens(fresh.HTTPServer.Tokens)
				if err != nil {
					return err
				}
				httpAuth.SetTokens(t)
				return nil
			}
		}
		// The web page takes / and its assets; the API keeps its routes.
		hs, err := serving.Listen(cfg.HTTPServer.Addr, webui.Handler(httpAuth.Middleware(identity.GuardOperations(sched.Handler()))), httpTLS, logger,
			serving.WithAllowedHosts(cfg.HTTPServer.AllowedHosts...))
		if err != nil {
			_ = srv.Shutdown(context.Background())
			return err
		}
		servers = append(servers, hs)
		if anonymous {
			logger.Warn("http_server has no tokens: every caller there counts as an anonymous admin; it listens on loopback only", "http_addr", cfg.HTTPServer.Addr)
		}
	}
	config.ReloadOnHangup(ctx, logger, reloads)
	logger.Info("scheduler serving", "addr", srv.Addr().String(), "tls", serverTLS != nil, "http_addr", cfg.HTTPServer.Addr, "data_dir", cfg.Scheduler.DataDir, "store", cfg.Store.Backend)

	serveErr := make(chan error, len(servers))
	for _, s := range servers {
		go func() { serveErr <- s.Serve() }()
	}
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = sched.Run(runCtx)
	}()

	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	logger.Info("scheduler shutting down")
	// The sweeper stops first: workers whose heartbeats fail while the
	// listeners close must not be marked DOWN (nor their jobs LOST).
	stopRun()
	<-runDone
	sched.SetNotServing()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.Scheduler.ShutdownTimeout))
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(shutdownCtx)
	}
	return err
}

// userPriority is max_user_priority as scheduler.Options takes it, where
// zero means the default: a configured 0 (users may only ask for the
// lowest priority) is passed as negative.
func userPriority(p int) int32 {
	if p == 0 {
		return -1
	}
	return int32(p)
}
