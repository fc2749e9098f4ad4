package clientcli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/cobra"

	"github.com/baton-run/baton/client"
	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/serving"
)

// defaultCheckTimeout bounds each call `baton check` makes.
const defaultCheckTimeout = 10 * time.Second

// checkKind is what a config file configures.
type checkKind string

const (
	checkScheduler checkKind = "scheduler"
	checkWorker    checkKind = "worker"
	checkClient    checkKind = "client"
)

// checkOptions say what `baton check` checks.
type checkOptions struct {
	file string
	// kind is what the file configures; empty infers it from its sections.
	kind    checkKind
	timeout time.Duration
	// environ replaces the process environment in tests.
	environ []string
}

func newCheckCommand() *cobra.Command {
	o := checkOptions{}
	var role string
	cmd := &cobra.Command{
		Use:   "check --config FILE [--role scheduler|worker|client]",
		Short: "Check a scheduler, worker or client config: its files, certificates, and the calls it will make",
		Long: `check loads a config as the command it configures would (defaults, the
file, BATON_ variables), then checks the files it names (keys 0600), its
certificate (signed by the CA, not expired, of the role and name the config
says, covering the addresses it is reached at), and the calls it will make:
a worker calls its scheduler with its identity and has the scheduler dial
back its advertised address; a client calls the scheduler with its identity.
It prints one line per finding, naming the key to change, and exits 0 only
when every finding is ok. Run it as the user the daemon runs as.`,
		Args: cliout.UsageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.file == "" {
				return cliout.UsageErrorf("baton check: give the config file with --config FILE (or BATON_CONFIG)")
			}
			switch k := checkKind(role); k {
			case "", checkScheduler, checkWorker, checkClient:
				o.kind = k
			default:
				return cliout.UsageErrorf("baton check: --role %q: use scheduler, worker or client", role)
			}
			if o.timeout <= 0 {
				return cliout.UsageErrorf("baton check: --timeout must be positive")
			}
			r := checkConfig(cmd.Context(), o)
			out := cmd.OutOrStdout()
			for _, f := range r.findings {
				fmt.Fprintln(out, f)
			}
			if !r.ok() {
				return &cliout.ExitError{Code: 1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.file, "config", os.Getenv("BATON_CONFIG"), "the TOML config file to check")
	f.StringVar(&role, "role", "", "what the file configures: scheduler, worker or client (default: from its sections)")
	f.DurationVar(&o.timeout, "timeout", defaultCheckTimeout, "bound on each call to the scheduler")
	return cmd
}

// finding is one line of the report: the key to change and what holds
// there, or what fails and how to fix it.
type finding struct {
	status   string // "ok", "FAIL" or "skip"
	key, msg string
}

func (f finding) String() string { return fmt.Sprintf("%-4s %s: %s", f.status, f.key, f.msg) }

// checkReport collects findings in the order they are made.
type checkReport struct {
	findings []finding
	// dir is the config file's directory: a path under it is shown as the
	// file would give it, relative to it.
	dir string
}

func (r *checkReport) pass(key, format string, a ...any) {
	r.findings = append(r.findings, finding{"ok", key, fmt.Sprintf(format, a...)})
}

func (r *checkReport) fail(key, format string, a ...any) {
	r.findings = append(r.findings, finding{"FAIL", key, fmt.Sprintf(format, a...)})
}

// skip records a check not made because of a failure before it.
func (r *checkReport) skip(key, format string, a ...any) {
	r.findings = append(r.findings, finding{"skip", key, fmt.Sprintf(format, a...)})
}

// ok reports whether no finding failed.
func (r *checkReport) ok() bool {
	return !slices.ContainsFunc(r.findings, func(f finding) bool { return f.status == "FAIL" })
}

// failures counts the failed findings so far.
func (r *checkReport) failures() int {
	n := 0
	for _, f := range r.findings {
		if f.status == "FAIL" {
			n++
		}
	}
	return n
}

// show is path as the report prints it: relative to the config file's
// directory when under it, as the file would give it, else absolute (a
// default such as "scripts" is relative to the working directory).
func (r *checkReport) show(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return path
	}
	if rel, err := filepath.Rel(r.dir, abs); err == nil && filepath.IsLocal(rel) {
		return rel
	}
	return abs
}

// checkConfig checks the config file o names and reports every finding.
func checkConfig(ctx context.Context, o checkOptions) *checkReport {
	r := &checkReport{}
	if abs, err := filepath.Abs(o.file); err == nil {
		r.dir = filepath.Dir(abs)
	}
	kind, why := o.kind, "as --role says"
	if kind == "" {
		var err error
		if kind, why, err = inferCheckKind(o.file); err != nil {
			r.fail("config", "%v", err)
			return r
		}
	}
	switch kind {
	case checkWorker:
		checkWorkerConfig(ctx, r, o, why)
	case checkClient:
		checkClientConfig(ctx, r, o, why)
	default:
		checkSchedulerConfig(r, o, why)
	}
	return r
}

// inferCheckKind reads what a config file configures from its sections:
// only a worker's has [worker], only a client's [client], and a file with
// scheduler.addr (the original design's config.toml) is a worker's, since
// the scheduler's own [scheduler] has no addr.
func inferCheckKind(path string) (checkKind, string, error) {
	k := koanf.New(".")
	if err := k.Load(file.Provider(path), toml.Parser()); err != nil {
		return "", "", fmt.Errorf("config file %s: %w", path, err)
	}
	switch {
	case k.Exists("worker"):
		return checkWorker, "it has a [worker] section", nil
	case k.Exists("client"):
		return checkClient, "it has a [client] section", nil
	case k.Exists("scheduler.addr"):
		return checkWorker, "it names scheduler.addr, the scheduler a worker registers with", nil
	}
	return checkScheduler, "it has neither [worker] nor [client]", nil
}

// loadChecked loads cfg as its command would and reports whether it
// loaded. Each error validate finds is a finding of its own, under the
// key it names; the checks after it go on.
func loadChecked(r *checkReport, o checkOptions, cfg any, validate func() error, kind checkKind, why string) bool {
	if _, err := config.Load(cfg, config.Source{File: o.file, Environ: o.environ, Others: daemon.Configs()}); err != nil {
		r.fail("config", "%v", err)
		return false
	}
	var errs []error
	if err := validate(); err != nil {
		errs = []error{err}
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			errs = joined.Unwrap()
		}
	}
	leaves := config.LeafKeys(reflect.TypeOf(cfg).Elem(), "")
	for _, err := range errs {
		r.fail(keyNamed(err.Error(), leaves, "config"), "%v", err)
	}
	if len(errs) == 0 {
		r.pass("config", "%s loads as a %s config (%s)", r.show(o.file), kind, why)
	}
	return true
}

// keyNamed is the first config key msg names, or fallback.
func keyNamed(msg string, leaves map[string]reflect.Type, fallback string) string {
	for _, word := range strings.FieldsFunc(msg, func(c rune) bool { return c == ' ' || c == ',' || c == ':' || c == '"' }) {
		if _, ok := leaves[word]; ok {
			return word
		}
	}
	return fallback
}

// checkWorkerConfig checks a worker's config: its certificate, then the
// scheduler with the worker's identity, then the scheduler dialling back.
func checkWorkerConfig(ctx context.Context, r *checkReport, o checkOptions, why string) {
	cfg := daemon.DefaultWorkerConfig()
	validate := func() error {
		cfg.Worker.FillJobUIDs(os.Geteuid())
		return cfg.Validate()
	}
	if !loadChecked(r, o, &cfg, validate, checkWorker, why) {
		return
	}

	checkDirectory(r, "worker.scripts_dir", cfg.Worker.ScriptsDir)

	// The address the scheduler will dial, as daemon.RunWorker works it out.
	advertise, advertiseKey := cfg.Worker.AdvertiseAddr, "worker.advertise_addr"
	if advertise == "" {
		listenHost, _, _ := net.SplitHostPort(cfg.GRPCServer.Addr)
		if !unspecifiedHost(listenHost) {
			advertiseKey = "grpc_server.addr"
		}
		a, err := daemon.AdvertiseAddr(cfg.GRPCServer.Addr, cfg.Scheduler.Addr)
		if err != nil {
			r.fail("worker.advertise_addr", "%v", err)
		} else {
			advertise = a
		}
	} else if _, _, err := net.SplitHostPort(advertise); err != nil {
		r.fail("worker.advertise_addr", "%q is not host:port: %v", advertise, err)
		advertise = ""
	}

	var creds *identity.Credentials
	if cfg.GRPCServer.UseTLS {
		var hosts []reachedAt
		if host, _, err := net.SplitHostPort(advertise); err == nil {
			hosts = append(hosts, reachedAt{host, advertiseKey})
		}
		self := identity.Principal{Role: identity.RoleWorker, Name: cfg.Worker.Name}
		creds = checkMemberTLS(r, cfg.GRPCServer, self, "worker.name", hosts)
	} else {
		checkPlainListener(r, "grpc_server.use_tls", "grpc_server.addr", cfg.GRPCServer.Addr)
	}

	if cfg.Scheduler.Addr == "" {
		r.pass("scheduler.addr", "empty: the worker runs alone, with no scheduler to reach")
		return
	}
	if cfg.GRPCServer.UseTLS && creds == nil {
		r.skip("scheduler.addr", "not called: the worker's certificate must load first")
		return
	}
	checkWorkerCalls(ctx, r, o.timeout, cfg, creds, advertise)
}

// checkWorkerCalls calls the scheduler as the worker would, then has the
// scheduler dial the worker's advertised address back.
func checkWorkerCalls(ctx context.Context, r *checkReport, timeout time.Duration, cfg daemon.WorkerConfig, creds *identity.Credentials, advertise string) {
	var clientTLS *tls.Config
	if creds != nil {
		// As daemon.RunWorker: the scheduler is known by its identity.
		clientTLS = creds.ClientTLS(identity.Expect(identity.Scheduler))
	}
	// The addresses as the worker reads them: host:port or a URL whose
	// scheme must agree with use_tls, one per replica.
	hostPorts, err := daemon.SchedulerHostPorts(cfg.Scheduler.Addr, creds != nil)
	if err != nil {
		r.fail("scheduler.addr", "%v", err)
		r.skip("worker.advertise_addr", "not checked: the scheduler must answer first")
		return
	}
	hc := serving.NewHTTPClient(clientTLS)
	defer hc.CloseIdleConnections()

	// Every replica must answer: the worker follows whichever leads.
	for _, hostPort := range hostPorts {
		callCtx, cancel := context.WithTimeout(ctx, timeout)
		_, err = grpchealth.NewClient(hc, serving.BaseURL(hostPort, creds != nil)).Check(callCtx, &grpchealth.CheckRequest{})
		cancel()
		if err != nil {
			key, why := blameSchedulerCall(err, timeout)
			r.fail(key, "calling the scheduler at %s: %s", hostPort, why)
			r.skip("worker.advertise_addr", "not checked: the scheduler must answer first")
			return
		}
	}
	base := serving.BaseURL(hostPorts[0], creds != nil)
	if len(hostPorts) > 1 {
		hc.Transport, err = serving.FollowLeader(hc.Transport, hostPorts)
		if err != nil {
			r.fail("scheduler.addr", "%v", err)
			return
		}
	}
	if creds != nil {
		r.pass("scheduler.addr", "%s answers as the scheduler of cluster %s and takes %s's certificate", cfg.Scheduler.Addr, creds.Cluster(), creds.Self())
	} else {
		r.pass("scheduler.addr", "%s answers over h2c (no TLS: no identity on either side)", cfg.Scheduler.Addr)
	}
	if advertise == "" {
		r.skip("worker.advertise_addr", "not checked: no address to advertise")
		return
	}

	// Until the worker runs, the check answers in its stead on its listen
	// address, so that the dial back holds before the worker's first start.
	stand, standErr := startStandIn(cfg.GRPCServer.Addr, creds)
	var answered, listened string
	switch {
	case standErr == nil:
		defer stand.stop()
		answered = "this check answered on grpc_server.addr " + cfg.GRPCServer.Addr + ", in the worker's stead"
		listened = "this check listened on grpc_server.addr " + cfg.GRPCServer.Addr + " in the worker's stead"
	case errors.Is(standErr, syscall.EADDRINUSE):
		answered = "the process on grpc_server.addr answered"
		listened = "a process already listens on grpc_server.addr " + cfg.GRPCServer.Addr + ", so this check could not stand in for the worker"
	default:
		answered = fmt.Sprintf("this check could not listen on grpc_server.addr in the worker's stead: %v", standErr)
		listened = answered
	}

	callCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sched := batonv1connect.NewSchedulerServiceClient(hc, base)
	res, err := sched.CheckWorkerAddress(callCtx, connect.NewRequest(&batonv1.CheckWorkerAddressRequest{Address: advertise}))
	switch {
	case connect.CodeOf(err) == connect.CodeUnimplemented:
		r.fail("worker.advertise_addr", "the scheduler at %s cannot dial back on request (it predates CheckWorkerAddress): upgrade it to check %s", cfg.Scheduler.Addr, advertise)
	case err != nil:
		key, why := blameSchedulerCall(err, timeout)
		if key == "scheduler.addr" {
			key = "worker.advertise_addr"
		}
		r.fail(key, "asking the scheduler to dial %s: %s", advertise, why)
	case res.Msg.GetReachable():
		who := res.Msg.GetExpected()
		if who == "" {
			who = "a worker's listener, with no identity to check (no TLS)"
		}
		r.pass("worker.advertise_addr", "the scheduler dialed %s and found %s; %s", advertise, who, answered)
	default:
		who := res.Msg.GetExpected()
		if who == "" {
			who = "the worker"
		}
		r.fail("worker.advertise_addr", "the scheduler cannot reach %s at %s: %s (%s); set worker.advertise_addr to an address the scheduler reaches this worker at, and open its port", who, advertise, res.Msg.GetError(), listened)
	}
}

// standIn serves what a worker's listener serves besides WorkerService,
// the gRPC health check for any caller it authenticates, so that the
// scheduler's dial back finds the worker's identity where the worker
// will listen.
type standIn struct {
	srv  *serving.Server
	done chan struct{}
}

func startStandIn(addr string, creds *identity.Credentials) (*standIn, error) {
	mux, _ := serving.Mux(batonv1connect.WorkerServiceName)
	var serverTLS *tls.Config
	if creds != nil {
		serverTLS = creds.ServerTLS()
	}
	auth := identity.NewAuthenticator(creds, nil, creds == nil)
	srv, err := serving.Listen(addr, auth.Middleware(identity.GuardOperations(mux)), serverTLS, nil)
	if err != nil {
		return nil, err
	}
	s := &standIn{srv: srv, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = srv.Serve()
	}()
	return s, nil
}

func (s *standIn) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	<-s.done
}

// blameSchedulerCall says which key a failed call to the scheduler
// points at, and why it failed.
func blameSchedulerCall(err error, timeout time.Duration) (key, why string) {
	var unknownCA x509.UnknownAuthorityError
	var op *net.OpError
	switch code := connect.CodeOf(err); {
	case errors.Is(err, context.DeadlineExceeded) || code == connect.CodeDeadlineExceeded:
		return "scheduler.addr", fmt.Sprintf("no answer within %s: is the scheduler running there, and the port open?", timeout)
	case errors.As(err, &unknownCA):
		return "grpc_server.ca_file", fmt.Sprintf("its certificate is not signed by this CA (%v): use the cluster's CA", unknownCA)
	case errors.As(err, &op) && op.Op == "remote error":
		return "grpc_server.crt_file", fmt.Sprintf("it refused this certificate (%v): issue it from the CA the scheduler uses", op.Err)
	case code == connect.CodeUnauthenticated:
		return "grpc_server.use_tls", fmt.Sprintf("it does not know this caller (%s): the scheduler uses mutual TLS, so must the worker", connectMessage(err))
	case code == connect.CodePermissionDenied:
		return "grpc_server.crt_file", fmt.Sprintf("it refused this identity: %s", connectMessage(err))
	case errors.As(err, &op) && op.Op == "dial":
		return "scheduler.addr", fmt.Sprintf("cannot connect (%v): is the scheduler running there, and the port open?", op.Err)
	}
	return "scheduler.addr", connectMessage(err)
}

// connectMessage is err without the Connect code in front.
func connectMessage(err error) string {
	if ce := new(connect.Error); errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}

// checkSchedulerConfig checks a scheduler's config: its files and
// certificates. Nothing is called: the scheduler's peers call it.
func checkSchedulerConfig(r *checkReport, o checkOptions, why string) {
	cfg := daemon.DefaultSchedulerConfig()
	if !loadChecked(r, o, &cfg, cfg.Validate, checkScheduler, why) {
		return
	}

	if cfg.GRPCServer.UseTLS {
		checkMemberTLS(r, cfg.GRPCServer, identity.Scheduler, "", listenHosts("grpc_server.addr", cfg.GRPCServer.Addr))
	} else {
		checkPlainListener(r, "grpc_server.use_tls", "grpc_server.addr", cfg.GRPCServer.Addr)
	}
	if cfg.HTTPServer.Addr == "" {
		return
	}
	if cfg.HTTPServer.CrtFile == "" {
		checkPlainListener(r, "http_server.crt_file", "http_server.addr", cfg.HTTPServer.Addr)
		return
	}
	// Browsers and JSON clients check this certificate by host name
	// against whatever CA they trust, so it need not be the cluster's.
	keyPEM := checkKeyFile(r, "http_server.key_file", cfg.HTTPServer.KeyFile)
	checkCertFile(r, certCheck{
		key: "http_server.crt_file", file: cfg.HTTPServer.CrtFile,
		keyKey: "http_server.key_file", keyPEM: keyPEM,
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		hosts:  listenHosts("http_server.addr", cfg.HTTPServer.Addr),
	})
}

// listenHosts is the host of a listen address for the SAN check: none for
// a wildcard, which clients reach under names only they know.
func listenHosts(key, addr string) []reachedAt {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || unspecifiedHost(host) {
		return nil
	}
	return []reachedAt{{host, key}}
}

func unspecifiedHost(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// checkPlainListener checks a listener without TLS: like serving.Listen,
// it must be on loopback, since without TLS there is no identity.
func checkPlainListener(r *checkReport, tlsKey, addrKey, addr string) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return // validate reported it
	}
	if !daemon.IsLoopbackHost(host) {
		r.fail(tlsKey, "%s has no TLS but %s is not a loopback address: without TLS there is no identity, so it may only listen on 127.0.0.1, ::1 or localhost; serve TLS with certificates from `baton certs`", addrKey, addr)
		return
	}
	r.pass(tlsKey, "no TLS on %s %s: no identity, every caller there counts as an anonymous admin (loopback only)", addrKey, addr)
}

// reachedAt is a host a certificate must cover and the key that says so.
type reachedAt struct{ host, key string }

// checkMemberTLS checks a daemon's [grpc_server] files: the CA, the key,
// and a certificate for self. nameKey is where self's name comes from.
// It returns the credentials as the daemon loads them, or nil if any
// check failed.
func checkMemberTLS(r *checkReport, gs config.GRPCServerConfig, self identity.Principal, nameKey string, hosts []reachedAt) *identity.Credentials {
	before := r.failures()
	ca, cluster := checkCAFile(r, "grpc_server.ca_file", gs.CAFile, true)
	keyPEM := checkKeyFile(r, "grpc_server.key_file", gs.KeyFile)
	checkCertFile(r, certCheck{
		key: "grpc_server.crt_file", file: gs.CrtFile,
		keyKey: "grpc_server.key_file", keyPEM: keyPEM,
		ca: ca, caKey: "grpc_server.ca_file", caPath: gs.CAFile, cluster: cluster,
		// Members are dialled and dial: both usages.
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		hosts:  hosts,
		who: func(p identity.Principal) (string, string) {
			switch {
			case p.Role != self.Role:
				return "grpc_server.crt_file", fmt.Sprintf("%s is %s, but this config runs as %s: give it a %s certificate (baton certs issue --role %s)", r.show(gs.CrtFile), p, self, self.Role, self.Role)
			case p.Name != self.Name:
				return nameKey, fmt.Sprintf("%q, but the certificate %s is %s: set %s = %q, or issue a certificate for %s", self.Name, r.show(gs.CrtFile), p, nameKey, p.Name, self)
			}
			return "", ""
		},
	})
	if r.failures() > before {
		return nil
	}
	creds, err := identity.LoadCredentials(gs.CAFile, gs.CrtFile, gs.KeyFile)
	if err != nil {
		r.fail("grpc_server.crt_file", "%v", err)
		return nil
	}
	return creds
}

// readCheckedFile reads a file a key names, or reports why it cannot.
func readCheckedFile(r *checkReport, key, path string) ([]byte, bool) {
	if path == "" {
		r.fail(key, "not set: name the file")
		return nil, false
	}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		r.fail(key, "%s does not exist", r.show(path))
		return nil, false
	case errors.Is(err, fs.ErrPermission):
		r.fail(key, "%s cannot be read by uid %d: run the check as the user the daemon runs as", r.show(path), os.Geteuid())
		return nil, false
	case err != nil:
		r.fail(key, "%v", err)
		return nil, false
	}
	return data, true
}

// checkDirectory checks that a directory the daemon reads exists.
func checkDirectory(r *checkReport, key, path string) {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		r.fail(key, "%s does not exist", r.show(path))
	case err != nil:
		r.fail(key, "%v", err)
	case !info.IsDir():
		r.fail(key, "%s is not a directory", r.show(path))
	default:
		r.pass(key, "%s: a directory", r.show(path))
	}
}

// checkKeyFile checks that a private key file exists and is readable by
// its owner only, as the daemons require, and returns its PEM.
func checkKeyFile(r *checkReport, key, path string) []byte {
	data, ok := readCheckedFile(r, key, path)
	if !ok {
		return nil
	}
	info, err := os.Stat(path)
	if err != nil {
		r.fail(key, "%v", err)
		return nil
	}
	if mode := info.Mode().Perm(); mode&0o077 != 0 {
		r.fail(key, "%s: mode %04o: make it 0600 (chmod 600 %s)", r.show(path), mode, path)
		return data
	}
	r.pass(key, "%s: mode %04o", r.show(path), info.Mode().Perm())
	return data
}

// checkCAFile checks the CA certificate file and returns it with the
// cluster it names. A client may trust a CA that is not a cluster's (the
// scheduler's http_server certificate may come from anywhere): member
// says the file must be a cluster CA.
func checkCAFile(r *checkReport, key, path string, member bool) (*x509.Certificate, string) {
	data, ok := readCheckedFile(r, key, path)
	if !ok {
		return nil, ""
	}
	ca, err := firstCertificate(data)
	if err != nil {
		r.fail(key, "%s: %v", r.show(path), err)
		return nil, ""
	}
	now := time.Now()
	if now.After(ca.NotAfter) {
		r.fail(key, "%s expired on %s: every certificate it signed stops working; create a new CA (baton certs init --force) and issue them again", r.show(path), day(ca.NotAfter))
		return nil, ""
	}
	cluster, err := identity.ClusterOf(ca)
	switch {
	case err == nil:
		r.pass(key, "%s: the CA of cluster %s, valid until %s", r.show(path), cluster, day(ca.NotAfter))
	case member:
		r.fail(key, "%s: %v", r.show(path), err)
		return nil, ""
	default:
		r.pass(key, "%s: a CA that names no Baton cluster (%s), valid until %s", r.show(path), ca.Subject.CommonName, day(ca.NotAfter))
	}
	return ca, cluster
}

// certCheck is what checkCertFile checks a certificate file against.
type certCheck struct {
	key, file string
	// keyKey names the private key; keyPEM is its content, nil when it
	// could not be read.
	keyKey string
	keyPEM []byte
	// ca, when set, must have signed the certificate; its cluster, when
	// set, must name its identity.
	ca      *x509.Certificate
	caKey   string
	caPath  string
	cluster string
	usages  []x509.ExtKeyUsage
	// who checks the identity and returns the key to change and why, or
	// empty strings.
	who func(identity.Principal) (key, msg string)
	// hosts must be covered by the certificate's DNS and IP SANs.
	hosts []reachedAt
}

// checkCertFile checks a certificate: it pairs with its key, is valid
// now, chains to the CA, names the identity wanted and covers the hosts
// it is reached at. One ok line sums it up when everything holds.
func checkCertFile(r *checkReport, c certCheck) *x509.Certificate {
	data, ok := readCheckedFile(r, c.key, c.file)
	if !ok {
		return nil
	}
	leaf, err := firstCertificate(data)
	if err != nil {
		r.fail(c.key, "%s: %v", r.show(c.file), err)
		return nil
	}
	name := r.show(c.file)
	before := r.failures()
	if c.keyPEM != nil {
		if _, err := tls.X509KeyPair(data, c.keyPEM); err != nil {
			r.fail(c.keyKey, "does not pair with %s (%v): give the key issued with it", name, err)
		}
	}
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		r.fail(c.key, "%s expired on %s: issue a new one (baton certs issue … --force)", name, day(leaf.NotAfter))
	case now.Before(leaf.NotBefore):
		r.fail(c.key, "%s is not valid before %s: is this machine's clock right?", name, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if leaf.IsCA {
		r.fail(c.key, "%s is a CA certificate: give the daemon's own certificate (baton certs issue)", name)
	}
	chained := c.ca == nil || checkChain(r, c, leaf, name)
	var who identity.Principal
	if chained && c.cluster != "" {
		if len(leaf.URIs) != 1 {
			r.fail(c.key, "%s has %d URI identities, want 1 (spiffe://%s/<role>/<name>): issue it with baton certs issue", name, len(leaf.URIs), c.cluster)
		} else if who, err = identity.ParseURI(leaf.URIs[0], c.cluster); err != nil {
			r.fail(c.key, "%s: %v", name, err)
		} else if c.who != nil {
			if key, msg := c.who(who); key != "" {
				r.fail(key, "%s", msg)
			}
		}
	}
	var covered []string
	for _, h := range c.hosts {
		if err := leaf.VerifyHostname(h.host); err != nil {
			r.fail(c.key, "%s does not cover %s (%s), where it is reached: its names are %s; issue it again with --host %s (baton certs issue … --force)", name, h.host, h.key, sanList(leaf), h.host)
			continue
		}
		covered = append(covered, h.host)
	}
	if r.failures() > before {
		return nil
	}
	var b strings.Builder
	b.WriteString(name + ": ")
	if !who.IsZero() {
		b.WriteString(who.String() + ", ")
	}
	b.WriteString("valid until " + day(leaf.NotAfter))
	if len(covered) > 0 {
		b.WriteString(", SANs cover " + strings.Join(covered, ", "))
	} else if len(c.hosts) == 0 && (len(leaf.DNSNames) > 0 || len(leaf.IPAddresses) > 0) {
		b.WriteString(", SANs " + sanList(leaf) + " (the listener takes every address: not matched)")
	}
	r.pass(c.key, "%s", b.String())
	return leaf
}

// checkChain checks that c.ca signed leaf, for the usages. A cluster CA
// signs leaves directly (its path length is zero), so the signature is
// the chain; validity is a finding of its own.
func checkChain(r *checkReport, c certCheck, leaf *x509.Certificate, name string) bool {
	if err := leaf.CheckSignatureFrom(c.ca); err != nil {
		other := ""
		if len(leaf.URIs) == 1 && leaf.URIs[0].Scheme == "spiffe" && leaf.URIs[0].Host != c.cluster {
			other = fmt.Sprintf("; it names cluster %q", leaf.URIs[0].Host)
		}
		r.fail(c.key, "%s is not signed by the CA in %s (cluster %s)%s: issue it from that CA, or set %s to the CA that issued it", name, r.show(c.caPath), c.cluster, other, c.caKey)
		return false
	}
	for _, usage := range c.usages {
		// No extended key usage at all means any, as x509 reads it.
		if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, usage) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
			r.fail(c.key, "%s cannot serve as %s (its extended key usage): issue it with baton certs issue", name, usageName(usage))
			return false
		}
	}
	return true
}

func usageName(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageClientAuth {
		return "a TLS client"
	}
	return "a TLS server"
}

// sanList lists a certificate's DNS and IP SANs.
func sanList(c *x509.Certificate) string {
	names := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func day(t time.Time) string { return t.UTC().Format("2006-01-02") }

// firstCertificate parses the first PEM certificate in data.
func firstCertificate(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("holds no PEM certificate")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// clientRoles are the roles a client certificate may have.
var clientRoles = []identity.Role{identity.RoleAdmin, identity.RoleUser, identity.RoleViewer}

// checkClientConfig checks a client's config: its files, then a call to
// the scheduler with its identity.
func checkClientConfig(ctx context.Context, r *checkReport, o checkOptions, why string) {
	cfg := config.DefaultClientConfig()
	if !loadChecked(r, o, &cfg, func() error { return nil }, checkClient, why) {
		return
	}
	c := cfg.Client
	cc := client.Config{Schedulers: []string{c.Scheduler}, CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile, Token: c.Token}
	urls, err := cc.BaseURLs()
	if err != nil {
		r.fail("client.scheduler", "%v", err)
		return
	}
	secure := strings.HasPrefix(urls[0], "https://")
	before := r.failures()
	var who identity.Principal
	if secure {
		var ca *x509.Certificate
		var cluster string
		if c.CAFile == "" {
			r.pass("client.ca_file", "empty: the scheduler's certificate must chain to this machine's system roots")
		} else {
			ca, cluster = checkCAFile(r, "client.ca_file", c.CAFile, false)
		}
		if cluster == "" {
			// Not a cluster's CA: the client's certificate, which the
			// scheduler checks against its own CA, is not held to it.
			ca = nil
		}
		switch {
		case c.CertFile != "" && c.KeyFile != "":
			keyPEM := checkKeyFile(r, "client.key_file", c.KeyFile)
			leaf := checkCertFile(r, certCheck{
				key: "client.cert_file", file: c.CertFile,
				keyKey: "client.key_file", keyPEM: keyPEM,
				ca: ca, caKey: "client.ca_file", caPath: c.CAFile, cluster: cluster,
				usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
				who: func(p identity.Principal) (string, string) {
					if !slices.Contains(clientRoles, p.Role) {
						return "client.cert_file", fmt.Sprintf("%s is %s: a client needs an admin, user or viewer certificate (baton certs issue --role user --name NAME)", r.show(c.CertFile), p)
					}
					return "", ""
				},
			})
			if leaf != nil && cluster != "" && len(leaf.URIs) == 1 {
				who, _ = identity.ParseURI(leaf.URIs[0], cluster)
			}
		case c.CertFile != "" || c.KeyFile != "":
			r.fail("client.cert_file", "client.cert_file and client.key_file go together: set both or neither")
		}
	}
	if r.failures() > before {
		r.skip("client.scheduler", "not called: fix the findings above first")
		return
	}
	cl, err := client.New(cc)
	if err != nil {
		r.fail(keyNamed(err.Error(), config.LeafKeys(reflect.TypeOf(cfg), ""), "client.scheduler"), "%v", err)
		return
	}
	defer cl.Close()
	callCtx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	_, err = cl.Scheduler().ListWorkers(callCtx, connect.NewRequest(&batonv1.ListWorkersRequest{PageSize: 1}))
	if err != nil {
		key, why := blameClientCall(err, c, urls[0], o.timeout)
		if !strings.Contains(why, urls[0]) {
			why = "calling the scheduler at " + urls[0] + ": " + why
		}
		r.fail(key, "%s", why)
		return
	}
	as := "the anonymous caller of a plain h2c listener"
	switch {
	case c.Token != "":
		as = "the token"
	case !who.IsZero():
		as = who.String()
	case secure:
		as = "a caller without a certificate"
	}
	r.pass("client.scheduler", "%s accepts %s (ListWorkers answered)", urls[0], as)
}

// blameClientCall says which key a client's failed call points at, and
// why. Package client already words what it diagnoses (a TLS mismatch)
// by the key to change; that key is taken from its message.
func blameClientCall(err error, c config.ClientSection, base string, timeout time.Duration) (key, why string) {
	var hostErr x509.HostnameError
	var unknownCA x509.UnknownAuthorityError
	var op *net.OpError
	msg := connectMessage(err)
	named := keyNamed(msg, config.LeafKeys(reflect.TypeOf(config.ClientConfig{}), ""), "")
	switch code := connect.CodeOf(err); {
	case errors.Is(err, context.DeadlineExceeded) || code == connect.CodeDeadlineExceeded:
		return "client.scheduler", fmt.Sprintf("no answer within %s: is the scheduler running there, and the port open?", timeout)
	case named != "" && named != "client.scheduler":
		return named, msg
	case errors.As(err, &hostErr):
		host := hostErr.Host
		return "client.scheduler", fmt.Sprintf("the scheduler's certificate does not cover %s (its names are %s): use a name it covers, or issue the scheduler's certificate again with --host %s", host, sanList(hostErr.Certificate), host)
	case errors.As(err, &unknownCA):
		return "client.ca_file", fmt.Sprintf("the scheduler's certificate is not signed by this CA (%v)", unknownCA)
	case errors.As(err, &op) && op.Op != "dial" && c.CertFile == "" && strings.HasPrefix(base, "https://"):
		// A mutual-TLS listener ends the handshake of a caller without a
		// certificate: the client sees an alert or the connection reset.
		return "client.cert_file", fmt.Sprintf("it ended the connection (%v): its mutual-TLS port takes only callers with a certificate; set client.cert_file and client.key_file, or point client.scheduler at its http_server to use client.token", op.Err)
	case errors.As(err, &op) && op.Op == "remote error":
		return "client.cert_file", fmt.Sprintf("it refused the certificate (%v): issue it from the cluster's CA", op.Err)
	case code == connect.CodeUnauthenticated && c.Token != "":
		return "client.token", "it does not accept the token: " + msg
	case code == connect.CodeUnauthenticated:
		return "client.cert_file", "it does not know this caller: " + msg
	case code == connect.CodePermissionDenied:
		return "client.cert_file", "it refused this identity: " + msg
	}
	return "client.scheduler", msg
}
