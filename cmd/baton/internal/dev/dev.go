// Package dev is `baton dev`: a scheduler and two workers in one process,
// on loopback, over mutual TLS, with the example scripts, for trying Baton
// out.
package dev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-run/baton/cmd/baton/internal/certs"
	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
	"github.com/baton-run/baton/services/identity"
)

// NewCommand starts a scheduler and two workers in one process, on
// loopback, for trying Baton out. Data persists between runs.
func NewCommand() *cobra.Command {
	var dataDir, scriptsDir, addr, httpAddr, logLevel string
	var workerPort, replicas int
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local cluster: a scheduler and two workers on loopback",
		Args:  cobra.NoArgs,
	}
	flags := cmd.Flags()
	flags.StringVar(&dataDir, "data-dir", filepath.Join(config.StateDir(), "dev"), "where the cluster keeps its data")
	flags.StringVar(&scriptsDir, "scripts-dir", "", "the workers' scripts directory (default: the example scripts, written to <data-dir>/"+devScriptsDir+" at each start)")
	flags.StringVar(&addr, "addr", "127.0.0.1:7070", "the scheduler's address")
	flags.StringVar(&httpAddr, "http-addr", "127.0.0.1:7080", "the scheduler's plain HTTP address")
	flags.IntVar(&workerPort, "worker-port", 7071, "the first worker's port (the second uses the next one)")
	flags.StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error")
	flags.IntVar(&replicas, "replicas", 1, "scheduler replicas: 3 (or 5) run a replicated scheduler on embedded etcd, each replica a process of its own")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if scriptsDir != "" {
			if info, err := os.Stat(scriptsDir); err != nil || !info.IsDir() {
				return fmt.Errorf("--scripts-dir: %q is not a directory", scriptsDir)
			}
		}
		if replicas < 1 || replicas%2 == 0 || replicas > 7 {
			return fmt.Errorf("--replicas is %d: give 1, 3, 5 or 7 (a majority must survive a loss)", replicas)
		}
		return runDev(cmd.Context(), devConfig{
			dataDir: dataDir, scriptsDir: scriptsDir, addr: addr, httpAddr: httpAddr,
			workerPort: workerPort, logLevel: logLevel, replicas: replicas,
		})
	}
	return cmd
}

// devAdmin is the client identity `baton dev` issues for its user.
var devAdmin = identity.Principal{Role: identity.RoleAdmin, Name: "dev"}

// devScriptsDir is where, under its data directory, `baton dev` writes
// the example scripts when it is given no scripts directory.
const devScriptsDir = "scripts"

type devConfig struct {
	// scriptsDir "" means the example scripts built into the binary.
	dataDir, scriptsDir, addr, httpAddr, logLevel string
	workerPort                                    int
	// replicas > 1 runs a replicated scheduler (replicas.go).
	replicas int
}

// runDev runs the cluster until ctx ends. Workers shut down first, so they
// can stop their jobs and deregister while the scheduler still listens.
func runDev(ctx context.Context, dc devConfig) error {
	host, _, err := net.SplitHostPort(dc.addr)
	if err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	// The cluster runs over mutual TLS, like a real one: its own CA and
	// certificates, made on the first run and reused afterwards.
	workerNames := []string{"worker-1", "worker-2"}
	principals := []identity.Principal{identity.Scheduler, devAdmin}
	for _, n := range workerNames {
		principals = append(principals, identity.Principal{Role: identity.RoleWorker, Name: n})
	}
	// As root, the workers run jobs under uids of their own, which must
	// pass through the data directory to their homes (its certificates
	// stay in 0700 directories).
	if os.Geteuid() == 0 {
		if err := os.MkdirAll(dc.dataDir, 0o711); err != nil {
			return err
		}
		if err := os.Chmod(dc.dataDir, 0o711); err != nil {
			return err
		}
	}
	caFile, certs, err := ensureDevCerts(os.Stdout, dc.dataDir, principals...)
	if err != nil {
		return fmt.Errorf("dev certificates: %w", err)
	}
	if dc.scriptsDir == "" {
		dc.scriptsDir = filepath.Join(dc.dataDir, devScriptsDir)
		if err := writeExampleScripts(dc.scriptsDir); err != nil {
			return fmt.Errorf("write the example scripts: %w", err)
		}
	}
	tlsFor := func(p identity.Principal, addr string) config.GRPCServerConfig {
		return config.GRPCServerConfig{Addr: addr, UseTLS: true, CAFile: caFile, CrtFile: certs[p][0], KeyFile: certs[p][1]}
	}

	sched := daemon.DefaultSchedulerConfig()
	sched.GRPCServer = tlsFor(identity.Scheduler, dc.addr)
	sched.Scheduler.AuditFile = filepath.Join(dc.dataDir, "scheduler", "audit.log")
	sched.HTTPServer.Addr = dc.httpAddr
	sched.Scheduler.DataDir = filepath.Join(dc.dataDir, "scheduler")
	sched.Log = config.LogConfig{Level: dc.logLevel, Format: "text"}
	if err := sched.Validate(); err != nil {
		return err
	}
	// With replicas, clients and workers are given every replica and
	// follow the leader.
	schedulerAddrs := []string{dc.addr}
	var rs *replicaSet
	if dc.replicas > 1 {
		if rs, err = replicaConfigs(dc, sched, dc.replicas); err != nil {
			return err
		}
		schedulerAddrs = rs.addrs
	}
	if err := config.WriteClientConfig(filepath.Join(dc.dataDir, "client.toml"), config.ClientSection{
		Scheduler: "https://" + strings.Join(schedulerAddrs, ",https://"), CAFile: caFile, CertFile: certs[devAdmin][0], KeyFile: certs[devAdmin][1],
	}); err != nil {
		return err
	}

	schedCtx, stopSched := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSched()
	// Refuse addresses something else holds: waitForListener below would
	// take that something for our scheduler.
	addrs := []string{dc.addr, dc.httpAddr}
	if rs != nil {
		addrs = rs.ports()
	}
	for i := range workerNames {
		addrs = append(addrs, net.JoinHostPort(host, strconv.Itoa(dc.workerPort+i)))
	}
	for _, a := range addrs {
		if a == "" {
			continue
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("%s is taken (another baton dev?); pick other ports with --addr, --http-addr and --worker-port: %w", a, err)
		}
		_ = ln.Close()
	}

	schedDone := make(chan error, 1)
	if rs != nil {
		if err := rs.start(schedCtx); err != nil {
			stopSched()
			rs.stop()
			return err
		}
		go func() {
			<-schedCtx.Done()
			rs.stop()
			schedDone <- nil
		}()
		if err := rs.waitListening(ctx); err != nil {
			stopSched()
			<-schedDone
			return err
		}
	} else {
		go func() { schedDone <- daemon.RunScheduler(schedCtx, sched, nil) }()
		if err, exited := waitForListener(ctx, dc.addr, schedDone); err != nil {
			stopSched()
			if !exited {
				<-schedDone
			}
			return err
		}
	}

	// As root, jobs get uids of their own when they can reach their homes
	// and the scripts; otherwise (a data directory under /root, say) the
	// dev cluster still runs them, as root, and says why.
	jobsAsWorker := ""
	if os.Geteuid() == 0 {
		for _, dir := range []string{dc.dataDir, dc.scriptsDir} {
			if blocked := unsearchable(dir); blocked != "" {
				jobsAsWorker = blocked + " is not searchable by other users, so jobs cannot have uids of their own; they run as root (put --data-dir and the scripts under searchable directories to isolate them)"
				break
			}
		}
	}

	// A worker that fails (say, its port was taken meanwhile) stops the
	// whole cluster, rather than leaving half of it running.
	ctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	var names []string
	programs := pathPrograms(os.Getenv("PATH"))
	for i, name := range workerNames {
		w := daemon.DefaultWorkerConfig()
		names = append(names, name+" "+net.JoinHostPort(host, strconv.Itoa(dc.workerPort+i)))
		w.GRPCServer = tlsFor(identity.Principal{Role: identity.RoleWorker, Name: name}, net.JoinHostPort(host, strconv.Itoa(dc.workerPort+i)))
		w.Scheduler.Addr = strings.Join(schedulerAddrs, ",")
		w.Worker.Name = name
		w.Worker.DataDir = filepath.Join(dc.dataDir, name)
		w.Worker.ScriptsDir = dc.scriptsDir
		w.Worker.AllowedCommands = programs
		w.Worker.Labels = map[string]string{"slot": strconv.Itoa(i + 1)}
		w.Worker.StopGrace = config.Duration(5 * time.Second)
		w.Log = sched.Log
		if err := w.Validate(); err != nil {
			return err
		}
		wg.Go(func() {
			if errs[i] = daemon.RunWorker(ctx, w, daemon.WithSharedProcess(), daemon.WithJobsAsWorker(jobsAsWorker)); errs[i] != nil {
				stopWorkers()
			}
		})
	}

	if jobsAsWorker != "" {
		fmt.Printf("Note: %s.\n", jobsAsWorker)
	}
	certDir := filepath.Dir(caFile)
	if rs != nil {
		fmt.Printf(`Baton dev cluster is running with %[1]d scheduler replicas on embedded etcd.
%[2]s  workers    %[3]s, %[4]s
  certs      %[5]s   (ca.crt, admin-dev.crt/.key for clients)
  data       %[6]s
Try:
  %[7]s workers                  which replica leads, and its epoch
  kill -9 <pid of the leader>   another replica takes over within seconds; the killed one comes back as a follower
  %[7]s run -- bash count.sh
Press Ctrl-C to stop.
`, dc.replicas, rs.banner(), names[0], names[1], certDir, dc.dataDir, cliName())
		wg.Wait()
		stopSched()
		err = errors.Join(append(errs, <-schedDone)...)
		if err == nil {
			fmt.Println("Baton dev cluster stopped.")
		}
		return err
	}
	fmt.Printf(`Baton dev cluster is running.
  web page   http://%[2]s/   workers, jobs and live output in the browser
  scheduler  https://%[1]s   mutual TLS: gRPC, gRPC-Web and Connect JSON
  http api   http://%[2]s    plain HTTP on loopback, no tokens: every caller is an anonymous admin
  workers    %[3]s, %[4]s
  jobs       any program on PATH (%[7]d found at start) and the scripts in %[8]s
  certs      %[5]s   (ca.crt, admin-dev.crt/.key for clients)
  data       %[6]s
Try:
  %[9]s run -- bash count.sh
  curl -s -H 'Content-Type: application/json' -d '{"command":"bash","path":"count.sh"}' http://%[2]s/baton.v1.SchedulerService/StartJob
  curl -s --cacert %[5]s/ca.crt --cert %[5]s/admin-dev.crt --key %[5]s/admin-dev.key -H 'Content-Type: application/json' -d '{}' https://%[1]s/baton.v1.SchedulerService/ListWorkers
Press Ctrl-C to stop.
`, dc.addr, dc.httpAddr, names[0], names[1], certDir, dc.dataDir, len(programs), dc.scriptsDir, cliName())

	wg.Wait()
	stopSched()
	err = errors.Join(append(errs, <-schedDone)...)
	if err == nil {
		fmt.Println("Baton dev cluster stopped.")
	}
	return err
}

// cliName is how the banner tells its user to run the client. `go run`
// leaves its binary in a go-build temporary directory, gone once the
// cluster stops; the binary PATH finds is "baton"; any other goes by its
// path.
func cliName() string {
	exe, err := os.Executable()
	if err != nil {
		return "baton"
	}
	if strings.Contains(exe, string(filepath.Separator)+"go-build") {
		return "go run ./cmd/baton"
	}
	if onPath, err := exec.LookPath("baton"); err == nil {
		a, errA := os.Stat(onPath)
		b, errB := os.Stat(exe)
		if errA == nil && errB == nil && os.SameFile(a, b) {
			return "baton"
		}
	}
	return cliout.ShellQuote(exe)
}

// waitForListener waits until addr accepts connections, the server fails,
// or ctx ends; exited says whether it took the server's result.
func waitForListener(ctx context.Context, addr string, failed <-chan error) (err error, exited bool) {
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			return c.Close(), false
		}
		select {
		case err := <-failed:
			if err == nil {
				err = errors.New("the scheduler stopped before it listened")
			}
			return err, true
		case <-ctx.Done():
			return ctx.Err(), false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Where `baton dev` keeps its certificates, under its data directory. The
// directory clients are told to take their files from holds nothing that
// lets its reader issue certificates or pose as the scheduler or a worker
// (who may start jobs on any worker directly).
const (
	// devCADir holds the CA, ca.crt and ca.key, like a `baton certs`
	// directory: only baton dev reads it, to issue what is missing.
	devCADir = "ca"
	// devClientDir holds ca.crt and the admin/dev pair, for clients.
	devClientDir = "certs"
	// devServerDir holds the scheduler's and the workers' own pairs.
	devServerDir = "servers"
)

// ensureDevCerts returns the CA certificate clients trust and each
// principal's certificate and key files under dataDir, creating the CA and
// what is missing: baton dev run twice reuses what it made the first time.
// A data directory from before the split (all in certs/) is moved into
// place first, keeping its CA, and a line saying so is written to w.
func ensureDevCerts(w io.Writer, dataDir string, principals ...identity.Principal) (caFile string, files map[identity.Principal][2]string, err error) {
	caDir := filepath.Join(dataDir, devCADir)
	clientDir := filepath.Join(dataDir, devClientDir)
	serverDir := filepath.Join(dataDir, devServerDir)
	for _, d := range []string{caDir, clientDir, serverDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", nil, err
		}
	}
	// MkdirAll keeps the mode of a directory that exists.
	for _, d := range []string{caDir, serverDir} {
		if err := os.Chmod(d, 0o700); err != nil {
			return "", nil, err
		}
	}
	var servers []identity.Principal
	for _, p := range principals {
		if isServer(p) {
			servers = append(servers, p)
		}
	}
	if err := migrateDevCerts(w, caDir, clientDir, serverDir, servers); err != nil {
		return "", nil, fmt.Errorf("move the certificates of an older baton dev into place: %w", err)
	}
	ca, err := devAuthority(caDir, clientDir)
	if err != nil {
		return "", nil, err
	}
	caFile = filepath.Join(clientDir, "ca.crt")
	if err := writeIfChanged(caFile, ca.CertPEM(), 0o644); err != nil {
		return "", nil, err
	}
	files, err = certs.IssueMissing(ca, func(p identity.Principal) string {
		if isServer(p) {
			return serverDir
		}
		return clientDir
	}, principals)
	if err != nil {
		return "", nil, err
	}
	return caFile, files, nil
}

// isServer says whether p is one of the cluster's own processes, whose
// pair goes to devServerDir.
func isServer(p identity.Principal) bool {
	return p.Role == identity.RoleScheduler || p.Role == identity.RoleWorker
}

// devAuthority loads the dev CA from caDir, or creates it there when
// there is none. A CA certificate whose key is gone is an error, not a
// reason to make a new CA, which would void the certificates clients hold.
func devAuthority(caDir, clientDir string) (*identity.Authority, error) {
	crtFile, keyFile := filepath.Join(caDir, "ca.crt"), filepath.Join(caDir, "ca.key")
	if _, err := os.Stat(keyFile); !errors.Is(err, os.ErrNotExist) {
		return identity.LoadAuthority(crtFile, keyFile)
	}
	for _, crt := range []string{crtFile, filepath.Join(clientDir, "ca.crt")} {
		if _, err := os.Stat(crt); err == nil {
			return nil, fmt.Errorf("the dev CA's key %s is missing (%s is there): restore it, or remove the data directory to start over with a new CA", keyFile, crt)
		}
	}
	return certs.InitAuthority(caDir, "dev", false)
}

// migrateDevCerts moves what an older baton dev kept in clientDir to where
// it belongs now: the CA key (with a copy of the CA certificate) to caDir,
// the servers' pairs to serverDir. Renames keep the keys' bytes and modes,
// and the CA stays the one that signed every certificate already issued.
// Each step can be repeated, so an interrupted move finishes on the next
// start.
func migrateDevCerts(w io.Writer, caDir, clientDir, serverDir string, servers []identity.Principal) error {
	oldKey, newKey := filepath.Join(clientDir, "ca.key"), filepath.Join(caDir, "ca.key")
	if _, err := os.Lstat(oldKey); err == nil {
		if err := moveCAKey(oldKey, newKey, filepath.Join(clientDir, "ca.crt"), filepath.Join(caDir, "ca.crt")); err != nil {
			return err
		}
		fmt.Fprintf(w, "Moved the dev CA's key out of the clients' directory %s, to %s.\n", clientDir, newKey)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, p := range servers {
		for _, ext := range []string{".crt", ".key"} {
			name := identity.FileBase(p) + ext
			if err := moveUnlessThere(filepath.Join(clientDir, name), filepath.Join(serverDir, name)); err != nil {
				return err
			}
		}
	}
	return nil
}

// moveCAKey moves the CA key from oldKey to newKey, after copying the CA
// certificate beside it. When both keys exist (a copy made by hand), the
// old one goes only if it is the same key.
func moveCAKey(oldKey, newKey, oldCrt, newCrt string) error {
	if _, err := os.Lstat(newKey); err == nil {
		a, err := os.ReadFile(oldKey)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(newKey)
		if err != nil {
			return err
		}
		if !bytes.Equal(a, b) {
			return fmt.Errorf("%s and %s hold different CA keys: keep the one that signed the certificates in use and remove the other", oldKey, newKey)
		}
		return os.Remove(oldKey)
	}
	crt, err := os.ReadFile(oldCrt)
	if err != nil {
		return err
	}
	if err := writeIfChanged(newCrt, crt, 0o644); err != nil {
		return err
	}
	if err := os.Rename(oldKey, newKey); err != nil {
		return err
	}
	return os.Chmod(newKey, 0o600)
}

// moveUnlessThere renames from to to; when to exists already, from is
// only removed.
func moveUnlessThere(from, to string) error {
	if _, err := os.Lstat(from); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if _, err := os.Lstat(to); err == nil {
		return os.Remove(from)
	}
	return os.Rename(from, to)
}

// writeIfChanged writes data to path through a temporary file and a
// rename, unless path already holds exactly data.
func writeIfChanged(path string, data []byte, mode os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// unsearchable returns the first directory on the way to dir that users
// other than its owner and group cannot search, or "" when there is none.
func unsearchable(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return dir
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	for p := abs; ; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o001 == 0 {
			return p
		}
		if p == filepath.Dir(p) {
			return ""
		}
	}
}
