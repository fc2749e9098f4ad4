package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
	"github.com/baton-run/baton/services/webui"
)

// SchedulerConfig is the configuration of `baton scheduler`.
type SchedulerConfig struct {
	GRPCServer GRPCServerConfig `koanf:"grpc_server"`
	HTTPServer struct {
		// Addr is an optional second listener, plain HTTP on loopback, for
		// browsers and JSON clients; empty disables it.
		Addr string `koanf:"addr"`
	} `koanf:"http_server"`
	Scheduler SchedulerSection `koanf:"scheduler"`
	Log       LogConfig        `koanf:"log"`
}

// SchedulerSection is the [scheduler] section.
type SchedulerSection struct {
	DataDir           string   `koanf:"data_dir"`
	HeartbeatInterval Duration `koanf:"heartbeat_interval"`
	HeartbeatGrace    Duration `koanf:"heartbeat_grace"`
	FailoverGrace     Duration `koanf:"failover_grace"`
	Retention         Duration `koanf:"retention"`
	ShutdownTimeout   Duration `koanf:"shutdown_timeout"`
}

func defaultSchedulerConfig() SchedulerConfig {
	var c SchedulerConfig
	c.GRPCServer.Addr = "127.0.0.1:7070"
	c.Scheduler = SchedulerSection{
		HeartbeatInterval: Duration(scheduler.DefaultHeartbeatInterval),
		HeartbeatGrace:    Duration(scheduler.DefaultHeartbeatGrace),
		FailoverGrace:     Duration(scheduler.DefaultFailoverGrace),
		Retention:         Duration(scheduler.DefaultRetention),
		ShutdownTimeout:   Duration(30 * time.Second),
	}
	c.Log = defaultLogConfig()
	return c
}

// validate checks what the types cannot.
func (c *SchedulerConfig) validate() error {
	var errs []error
	s := c.Scheduler
	if s.HeartbeatInterval <= 0 || s.HeartbeatGrace <= 0 || s.FailoverGrace <= 0 || s.Retention <= 0 || s.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("scheduler.heartbeat_interval, heartbeat_grace, failover_grace, retention and shutdown_timeout must be positive"))
	}
	if _, _, err := net.SplitHostPort(c.GRPCServer.Addr); err != nil {
		errs = append(errs, fmt.Errorf("grpc_server.addr %q: %w", c.GRPCServer.Addr, err))
	}
	if c.HTTPServer.Addr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPServer.Addr); err != nil {
			errs = append(errs, fmt.Errorf("http_server.addr %q: %w", c.HTTPServer.Addr, err))
		}
	}
	return errors.Join(errs...)
}

// schedulerFlags are `baton scheduler`'s flags besides --config.
var schedulerFlags = []configFlag{
	{"addr", "grpc_server.addr", "listen address"},
	{"http-addr", "http_server.addr", "plain HTTP listener on loopback"},
	{"data-dir", "scheduler.data_dir", "data directory"},
	{"log-level", "log.level", "debug, info, warn or error"},
	{"log-format", "log.format", "text, json or auto"},
}

func newSchedulerCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "scheduler",
		Short: "Run the scheduler: it keeps the roster of workers and places jobs on them",
		Args:  cobra.NoArgs,
	}
	loadConfig := bindConfigFlags(cmd, schedulerFlags)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg := defaultSchedulerConfig()
		if err := loadConfig(&cfg); err != nil {
			return err
		}
		if cfg.Scheduler.DataDir == "" {
			cfg.Scheduler.DataDir = filepath.Join(stateDir(), "scheduler")
		}
		if err := cfg.validate(); err != nil {
			return err
		}
		return runScheduler(cmd.Context(), cfg)
	}
	return cmd
}

// runScheduler serves until ctx ends, then shuts down in order: report not
// serving, stop the listeners (bounded), stop the sweeper, close the store.
func runScheduler(ctx context.Context, cfg SchedulerConfig) error {
	logger, err := newLogger(cfg.Log, os.Stderr)
	if err != nil {
		return err
	}
	serverTLS, err := cfg.GRPCServer.serverTLS()
	if err != nil {
		return err
	}
	clientTLS, err := cfg.GRPCServer.clientTLS()
	if err != nil {
		return err
	}
	st, err := store.Open(ctx, filepath.Join(cfg.Scheduler.DataDir, "baton.db"))
	if err != nil {
		return err
	}
	defer st.Close()
	sched, err := scheduler.New(ctx, scheduler.Options{
		Store:             st,
		HeartbeatInterval: time.Duration(cfg.Scheduler.HeartbeatInterval),
		HeartbeatGrace:    time.Duration(cfg.Scheduler.HeartbeatGrace),
		FailoverGrace:     time.Duration(cfg.Scheduler.FailoverGrace),
		Retention:         time.Duration(cfg.Scheduler.Retention),
		HTTPClient:        serving.NewHTTPClient(clientTLS),
		WorkerTLS:         cfg.GRPCServer.UseTLS,
		Logger:            logger,
	})
	if err != nil {
		return err
	}
	servers := make([]*serving.Server, 0, 2)
	srv, err := serving.Listen(cfg.GRPCServer.Addr, sched.Handler(), serverTLS, logger)
	if err != nil {
		return err
	}
	servers = append(servers, srv)
	if cfg.HTTPServer.Addr != "" {
		// Plain HTTP only: serving.Listen refuses anything but loopback.
		// The web page takes / and its assets; the API keeps its routes.
		hs, err := serving.Listen(cfg.HTTPServer.Addr, webui.Handler(sched.Handler()), nil, logger)
		if err != nil {
			_ = srv.Shutdown(context.Background())
			return err
		}
		servers = append(servers, hs)
	}
	if serverTLS == nil {
		logger.Warn("serving without TLS: there is no identity, every caller counts as an anonymous admin; use this on loopback only")
	}
	logger.Info("scheduler serving", "addr", srv.Addr().String(), "tls", serverTLS != nil, "http_addr", cfg.HTTPServer.Addr, "data_dir", cfg.Scheduler.DataDir)

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
