package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/jobrun"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/serving"
	"github.com/baton-run/baton/services/worker"
)

// WorkerConfig is the configuration of `baton worker`.
type WorkerConfig struct {
	GRPCServer config.GRPCServerConfig `koanf:"grpc_server"`
	Scheduler  struct {
		// Addr is the scheduler's host:port, or a comma-separated list of
		// the replicas' of a replicated scheduler; empty runs the worker
		// alone.
		Addr string `koanf:"addr"`
	} `koanf:"scheduler"`
	Worker WorkerSection    `koanf:"worker"`
	Log    config.LogConfig `koanf:"log"`
}

// WorkerSection is the [worker] section.
type WorkerSection struct {
	Name            string            `koanf:"name"`
	AdvertiseAddr   string            `koanf:"advertise_addr"`
	DataDir         string            `koanf:"data_dir"`
	ScriptsDir      string            `koanf:"scripts_dir"`
	AllowedCommands []string          `koanf:"allowed_commands"`
	InheritEnv      []string          `koanf:"inherit_env"`
	Labels          map[string]string `koanf:"labels"`
	Capacity        int               `koanf:"capacity"`
	StopGrace       config.Duration   `koanf:"stop_grace"`
	OutputLimit     config.ByteSize   `koanf:"output_limit"`
	Retention       config.Duration   `koanf:"retention"`
	ShutdownTimeout config.Duration   `koanf:"shutdown_timeout"`
	// AuditFile receives one JSON line per StartJob, StopJob and denied
	// call, naming the client the scheduler acted for; empty disables it.
	AuditFile string `koanf:"audit_file"`
	// JobUIDs is the range of uids jobs run under, one of its own per job
	// ("61184-65519"). Empty means that range when the worker runs as
	// root, and the worker's own uid otherwise.
	JobUIDs string `koanf:"job_uids"`
	// JobUser runs every job as this account instead of JobUIDs.
	JobUser string `koanf:"job_user"`
	// Keeper keeps the jobs in a keeper process of their own, so that they
	// outlive a restart, crash or upgrade of the worker process. False
	// runs them in the worker process: they end with it.
	Keeper bool `koanf:"keeper"`
}

// DefaultJobUIDs is the range a root worker takes its per-job uids from:
// the one systemd gives its dynamic users, below nobody (65534).
const DefaultJobUIDs = "61184-65519"

// FillJobUIDs sets job_uids to the default range when the worker runs as
// root and neither job_uids nor job_user is set, so that `config print`
// shows what applies.
func (s *WorkerSection) FillJobUIDs(euid int) {
	if euid == 0 && strings.TrimSpace(s.JobUIDs) == "" && strings.TrimSpace(s.JobUser) == "" {
		s.JobUIDs = DefaultJobUIDs
	}
}

// jobIdentity resolves job_uids and job_user for a worker running as euid:
// per-job uids from the range (the default range as root), one account, or
// neither, when jobs run as the worker's uid (a worker that is not root).
// Isolation that is asked for but cannot be had is an error naming the key.
func (s *WorkerSection) jobIdentity(euid int) (jobrun.UIDRange, *jobrun.User, error) {
	uids, name := strings.TrimSpace(s.JobUIDs), strings.TrimSpace(s.JobUser)
	switch {
	case uids != "" && name != "":
		return jobrun.UIDRange{}, nil, errors.New("worker.job_uids and worker.job_user exclude each other: set one")
	case name != "":
		u, err := jobrun.LookupUser(name)
		if err != nil {
			return jobrun.UIDRange{}, nil, fmt.Errorf("worker.job_user: %w", err)
		}
		if euid != 0 {
			return jobrun.UIDRange{}, nil, fmt.Errorf("worker.job_user: running jobs as %q needs the worker to run as root (it runs as uid %d); remove the key to run them as the worker's uid", name, euid)
		}
		return jobrun.UIDRange{}, u, nil
	case uids == "" && euid != 0:
		return jobrun.UIDRange{}, nil, nil
	case uids == "":
		uids = DefaultJobUIDs
	}
	rng, err := jobrun.ParseUIDRange(uids)
	if err != nil {
		return jobrun.UIDRange{}, nil, fmt.Errorf("worker.job_uids: %w", err)
	}
	if euid != 0 {
		return jobrun.UIDRange{}, nil, fmt.Errorf("worker.job_uids: per-job uids need the worker to run as root (it runs as uid %d); remove the key to run jobs as the worker's uid", euid)
	}
	return rng, nil, nil
}

// DefaultWorkerConfig is a worker named after the host, on loopback.
func DefaultWorkerConfig() WorkerConfig {
	host, _ := os.Hostname()
	var c WorkerConfig
	c.GRPCServer.Addr = "127.0.0.1:7071"
	c.Worker = WorkerSection{
		Name:            host,
		ScriptsDir:      "scripts",
		AllowedCommands: []string{"sh", "bash", "python3", "ruby", "perl", "node"},
		Labels:          map[string]string{},
		Capacity:        64,
		StopGrace:       config.Duration(10 * time.Second),
		OutputLimit:     64 << 20,
		Retention:       config.Duration(24 * time.Hour),
		ShutdownTimeout: config.Duration(30 * time.Second),
		Keeper:          true,
	}
	c.Log = config.DefaultLogConfig()
	return c
}

// Validate checks what the types cannot.
func (c *WorkerConfig) Validate() error { return c.validateAs(os.Geteuid()) }

// validateAs is Validate for a worker running with effective uid euid.
func (c *WorkerConfig) validateAs(euid int) error {
	var errs []error
	if c.Worker.Name == "" {
		errs = append(errs, errors.New("worker.name is required"))
	}
	if c.Worker.Capacity < 0 {
		errs = append(errs, errors.New("worker.capacity must be 0 (unlimited) or more"))
	}
	if c.Worker.StopGrace <= 0 || c.Worker.Retention <= 0 || c.Worker.OutputLimit <= 0 {
		errs = append(errs, errors.New("worker.stop_grace, worker.retention and worker.output_limit must be positive"))
	}
	if _, _, err := net.SplitHostPort(c.GRPCServer.Addr); err != nil {
		errs = append(errs, fmt.Errorf("grpc_server.addr %q: %w", c.GRPCServer.Addr, err))
	}
	if _, _, err := c.Worker.jobIdentity(euid); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// WorkerFlags are `baton worker`'s flags besides --config.
var WorkerFlags = []config.Flag{
	{Name: "addr", Key: "grpc_server.addr", Usage: "listen address"},
	{Name: "scheduler", Key: "scheduler.addr", Usage: "scheduler address; replicas: a comma-separated list"},
	{Name: "name", Key: "worker.name", Usage: "worker name"},
	{Name: "data-dir", Key: "worker.data_dir", Usage: "data directory"},
	{Name: "scripts-dir", Key: "worker.scripts_dir", Usage: "scripts directory"},
	{Name: "log-level", Key: "log.level", Usage: "debug, info, warn or error"},
	{Name: "log-format", Key: "log.format", Usage: "text, json or auto"},
}

// bindWorkerConfig binds the worker's config flags to cmd; the function
// it returns loads the configuration, its data directory defaulted.
func bindWorkerConfig(cmd *cobra.Command) func() (WorkerConfig, error) {
	load := config.BindFlags(cmd, WorkerFlags, Configs())
	return func() (WorkerConfig, error) {
		cfg := DefaultWorkerConfig()
		if err := load(&cfg); err != nil {
			return cfg, err
		}
		if cfg.Worker.DataDir == "" {
			cfg.Worker.DataDir = DefaultWorkerDataDir(cfg.Worker.Name)
		}
		return cfg, nil
	}
}

// NewWorkerCommand is `baton worker` and its `decommission`.
func NewWorkerCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker: it runs jobs as OS processes for the scheduler",
		Args:  cobra.NoArgs,
	}
	loadConfig := bindWorkerConfig(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		cfg.Worker.FillJobUIDs(os.Geteuid())
		if err := cfg.Validate(); err != nil {
			return err
		}
		return RunWorker(cmd.Context(), cfg)
	}
	cmd.AddCommand(newDecommissionCommand())
	return cmd
}

// WorkerOption changes how RunWorker runs a worker, beyond what its
// configuration says.
type WorkerOption func(*workerRun)

// workerRun is what the options set.
type workerRun struct {
	sharesProcess bool
	jobsAsWorker  string
}

// WithSharedProcess is for `baton dev`, whose workers run in the
// scheduler's process: the go_* and process_* metrics are then the
// scheduler's to report, and jobs run in this process, without a keeper.
func WithSharedProcess() WorkerOption {
	return func(r *workerRun) { r.sharesProcess = true }
}

// WithJobsAsWorker, given by `baton dev` with its reason, runs jobs under
// the worker's own uid even as root: a dev cluster whose directories jobs
// under other uids cannot reach still runs jobs, and says so. An empty
// reason changes nothing.
func WithJobsAsWorker(reason string) WorkerOption {
	return func(r *workerRun) { r.jobsAsWorker = reason }
}

// RunWorker serves until ctx ends, then shuts down in order: stop taking
// calls, stop the jobs, report their ends and deregister.
func RunWorker(ctx context.Context, cfg WorkerConfig, opts ...WorkerOption) error {
	var run workerRun
	for _, o := range opts {
		o(&run)
	}
	logger, err := config.NewLogger(cfg.Log, os.Stderr)
	if err != nil {
		return err
	}
	creds, err := cfg.GRPCServer.Credentials(identity.Principal{Role: identity.RoleWorker, Name: cfg.Worker.Name})
	if err != nil {
		return err
	}
	var serverTLS, clientTLS *tls.Config
	reloads := map[string]func() error{}
	if creds != nil {
		serverTLS = creds.ServerTLS()
		// The worker talks to the scheduler only, and knows it by its
		// certificate's identity.
		clientTLS = creds.ClientTLS(identity.Expect(identity.Scheduler))
		reloads["certificates"] = creds.Reload
	}
	var audit *identity.AuditLog
	if cfg.Worker.AuditFile != "" {
		if audit, err = identity.OpenAuditLog(cfg.Worker.AuditFile); err != nil {
			return err
		}
		defer audit.Close()
		reloads["audit file"] = audit.Reopen
	}
	scheduler, schedulers, err := schedulerClient(cfg.Scheduler.Addr, creds != nil, clientTLS)
	if err != nil {
		return err
	}
	cfg.Scheduler.Addr = strings.Join(schedulers, ",")
	advertise := cfg.Worker.AdvertiseAddr
	if advertise == "" {
		if advertise, err = AdvertiseAddr(cfg.GRPCServer.Addr, cfg.Scheduler.Addr); err != nil {
			return err
		}
	}
	var mopts []metrics.Option
	if !run.sharesProcess {
		mopts = append(mopts, metrics.WithProcessMetrics())
	}
	m := metrics.NewWorker(mopts...)
	jobUIDs, jobUser, err := cfg.Worker.jobIdentity(os.Geteuid())
	if err != nil {
		return err
	}
	if run.jobsAsWorker != "" {
		jobUIDs, jobUser = jobrun.UIDRange{}, nil
		logger.Warn("jobs run under the worker's own uid, without a uid of their own", "worker", cfg.Worker.Name, "reason", run.jobsAsWorker)
	}
	var keeperExe string
	if cfg.Worker.Keeper && !run.sharesProcess {
		if keeperExe, err = os.Executable(); err != nil {
			return fmt.Errorf("worker.keeper: the keeper is started from this executable, which cannot be found: %w", err)
		}
	}
	w, err := worker.New(worker.Options{
		KeeperExecutable: keeperExe,
		Name:             cfg.Worker.Name,
		Address:          advertise,
		Labels:           cfg.Worker.Labels,
		Scheduler:        scheduler,
		Logger:           logger,
		Audit:            audit,
		Metrics:          m,
		Runner: jobrun.Options{
			DataDir:         cfg.Worker.DataDir,
			ScriptsDir:      cfg.Worker.ScriptsDir,
			AllowedCommands: cfg.Worker.AllowedCommands,
			InheritEnv:      cfg.Worker.InheritEnv,
			StopGrace:       time.Duration(cfg.Worker.StopGrace),
			OutputLimit:     int64(cfg.Worker.OutputLimit),
			Retention:       time.Duration(cfg.Worker.Retention),
			Capacity:        cfg.Worker.Capacity,
			JobUIDs:         jobUIDs,
			JobUser:         jobUser,
		},
	})
	if err != nil {
		return err
	}
	auth := identity.NewAuthenticator(creds, nil, creds == nil)
	srv, err := serving.Listen(cfg.GRPCServer.Addr, auth.Middleware(identity.GuardOperations(m.Mount(w.Handler()))), serverTLS, logger)
	if err != nil {
		_ = w.Close(context.Background())
		return err
	}
	if serverTLS == nil {
		logger.Warn("serving without TLS: there is no identity, every caller counts as an anonymous admin; use this on loopback only")
	}
	logger.Info("worker serving", "worker", cfg.Worker.Name, "addr", srv.Addr().String(), "tls", serverTLS != nil, "scheduler", cfg.Scheduler.Addr)

	config.ReloadOnHangup(ctx, logger, reloads)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve() }()
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = w.Run(runCtx)
	}()

	select {
	case <-ctx.Done():
		if keeperExe != "" {
			// A planned restart: the scheduler keeps the jobs and places
			// nothing here until the worker is back.
			w.LeaveForRestart()
			logger.Info("worker stopping; its jobs run on in the keeper")
		}
	case err = <-serveErr:
	case <-w.Ending():
		logger.Info("the keeper stopped every job and ended (decommission); the worker leaves")
	}
	logger.Info("worker shutting down")
	w.SetNotServing()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.Worker.ShutdownTimeout))
	defer cancel()
	drainCtx, cancelDrain := context.WithTimeout(shutdownCtx, 5*time.Second)
	_ = srv.Shutdown(drainCtx)
	cancelDrain()
	closeErr := w.Close(shutdownCtx)
	stopRun()
	<-runDone
	return errors.Join(err, closeErr)
}

// schedulerClient is the worker's client of the scheduler at
// scheduler.addr, and the host:port of each of its replicas; nil and none
// when the address is empty. With several replicas, calls go to the one
// that leads.
func schedulerClient(addr string, useTLS bool, clientTLS *tls.Config) (batonv1connect.SchedulerServiceClient, []string, error) {
	schedulers, err := SchedulerHostPorts(addr, useTLS)
	if err != nil || len(schedulers) == 0 {
		return nil, nil, err
	}
	hc := serving.NewHTTPClient(clientTLS)
	if len(schedulers) > 1 {
		if hc.Transport, err = serving.FollowLeader(hc.Transport, schedulers); err != nil {
			return nil, nil, fmt.Errorf("scheduler.addr: %w", err)
		}
	}
	return batonv1connect.NewSchedulerServiceClient(
		hc,
		serving.BaseURL(schedulers[0], useTLS),
		connect.WithInterceptors(namedAddrErrors{addr: strings.Join(schedulers, ",")}),
	), schedulers, nil
}

// AdvertiseAddr turns a listen address into one the scheduler can dial.
// An unspecified host (0.0.0.0, ::) becomes the address this machine
// reaches the scheduler from: the source address the kernel picks for the
// route to it (a UDP "connect", which sends nothing). Without a scheduler
// it becomes the hostname. A loopback address the scheduler, not on
// loopback itself, could not dial is an error. Of a comma-separated list
// of replicas, the first stands for them all: they share a network.
func AdvertiseAddr(listen, scheduler string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen, nil
	}
	scheduler, _, _ = strings.Cut(scheduler, ",")
	scheduler = strings.TrimSpace(scheduler)
	schedHost := ""
	if scheduler != "" {
		target := scheduler
		if u, err := url.Parse(scheduler); err == nil && u.Host != "" {
			target = u.Host
		}
		if h, _, err := net.SplitHostPort(target); err == nil {
			schedHost = h
			if host == "" || host == "0.0.0.0" || host == "::" {
				c, err := net.Dial("udp", target)
				if err != nil {
					return "", fmt.Errorf("worker.advertise_addr is unset and grpc_server.addr %s listens on every address: finding the one scheduler.addr %s reaches this machine at failed (%v); set worker.advertise_addr", listen, scheduler, err)
				}
				host = c.LocalAddr().(*net.UDPAddr).IP.String()
				_ = c.Close()
			}
		}
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	if schedHost != "" && IsLoopbackHost(host) && !IsLoopbackHost(schedHost) {
		return "", fmt.Errorf("the worker would advertise %s, a loopback address, to a scheduler at %s that cannot dial it: set worker.advertise_addr to an address the scheduler reaches, or listen on one (grpc_server.addr)", net.JoinHostPort(host, port), scheduler)
	}
	return net.JoinHostPort(host, port), nil
}

// IsLoopbackHost reports whether host is "localhost" or a loopback IP.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// DefaultWorkerDataDir is a worker's data directory when none is
// configured. A worker running as root runs jobs under uids of their own,
// which must pass through the data directory to their homes: root's home
// directory is closed to them, so its data goes to /var/lib/baton unless
// XDG_STATE_HOME says otherwise.
func DefaultWorkerDataDir(name string) string {
	if os.Geteuid() == 0 && os.Getenv("XDG_STATE_HOME") == "" {
		return filepath.Join("/var/lib/baton", "worker-"+name)
	}
	return filepath.Join(config.StateDir(), "worker-"+name)
}

// SchedulerHostPorts reads scheduler.addr, one address or a
// comma-separated list of the replicas', each as SchedulerHostPort reads
// it. An empty scheduler.addr is no address: the worker runs alone. An
// empty member, or members of different schemes, are refused, naming the
// key.
func SchedulerHostPorts(addr string, useTLS bool) ([]string, error) {
	if strings.TrimSpace(addr) == "" {
		return nil, nil
	}
	members := strings.Split(addr, ",")
	scheme := ""
	hosts := make([]string, 0, len(members))
	for i, m := range members {
		m = strings.TrimSpace(m)
		if m == "" {
			return nil, fmt.Errorf("scheduler.addr %q: address %d of %d is empty; separate the addresses with single commas", addr, i+1, len(members))
		}
		if s, _, ok := strings.Cut(m, "://"); ok {
			if scheme != "" && s != scheme {
				return nil, fmt.Errorf("scheduler.addr %q: every address must use the same scheme", addr)
			}
			scheme = s
		}
		h, err := SchedulerHostPort(m, useTLS)
		if err != nil {
			return nil, err
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			return nil, fmt.Errorf("scheduler.addr %q: use host:port, or a URL like https://host:port", m)
		}
		hosts = append(hosts, h)
	}
	return hosts, nil
}

// SchedulerHostPort reads one scheduler.addr in the forms the CLI takes for
// client.scheduler: host:port, or a URL whose scheme agrees with the
// worker's TLS setting (https with use_tls, http without). It refuses
// anything else at start, naming the key, rather than dialling a host
// named "https".
func SchedulerHostPort(addr string, useTLS bool) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" || !strings.Contains(addr, "://") {
		return addr, nil
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("scheduler.addr %q: use host:port, or a URL like https://host:port", addr)
	}
	switch {
	case u.Scheme == "https" && !useTLS:
		return "", fmt.Errorf("scheduler.addr %q is https but this worker has use_tls = false: set grpc_server.use_tls and its certificate, or use http://", addr)
	case u.Scheme == "http" && useTLS:
		return "", fmt.Errorf("scheduler.addr %q is plain http but this worker uses TLS: use https:// or host:port", addr)
	case u.Scheme != "https" && u.Scheme != "http":
		return "", fmt.Errorf("scheduler.addr %q: the scheme must be http or https", addr)
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return "", fmt.Errorf("scheduler.addr %q: give the port (https://host:7070)", addr)
	}
	return u.Host, nil
}

// namedAddrErrors prefixes the errors of the worker's calls to the
// scheduler with scheduler.addr and its value (every replica's address): a refused connection, a
// name that does not resolve, a listener that takes only tokens or a peer
// that is not the scheduler are all fixed there, and the log should say
// so.
type namedAddrErrors struct{ addr string }

func (n namedAddrErrors) wrap(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if ce := new(connect.Error); errors.As(err, &ce) {
		msg = ce.Message()
	}
	return connect.NewError(connect.CodeOf(err), fmt.Errorf("scheduler.addr %s: %s", n.addr, msg))
}

func (n namedAddrErrors) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		return res, n.wrap(err)
	}
}

func (n namedAddrErrors) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (n namedAddrErrors) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
