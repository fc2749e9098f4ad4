package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/cmd/baton/internal/certs"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/keeper"
	"github.com/baton-run/baton/services/serving"
)

// localVariant is what a local cluster varies: mutual TLS, and which uid
// its jobs run under.
type localVariant struct {
	secure bool
	// jobUIDs sets worker.job_uids to the default range (root only).
	jobUIDs bool
	// jobUser sets worker.job_user (root only).
	jobUser string
	// outputLimit raises worker.output_limit when above its default.
	outputLimit int64
	// capacity sets worker.capacity when above zero.
	capacity int
	// schedules is how many schedules are defined once it runs.
	schedules int
	// replicas, when above 1, runs that many scheduler replicas, each with
	// an embedded etcd member (fsync on), instead of one scheduler on
	// SQLite (h2c only).
	replicas int
}

// benchWorkerNames are the local cluster's workers.
var benchWorkerNames = []string{"bench-1", "bench-2"}

// localCluster is a `baton scheduler` (or several replicas of it) and two
// `baton worker` processes on loopback, children of this process, with their
// configuration, certificates and data in one temporary directory. Its
// methods are not safe for concurrent use.
type localCluster struct {
	dir  string
	addr string
	// addrs are every scheduler replica's address, addr first; clients and
	// workers are given them all and follow the leader.
	addrs []string
	// clientTLS is what a client of a secure cluster dials with: an admin
	// certificate; nil for h2c.
	clientTLS *tls.Config
	// clientConfig is a client config file naming the scheduler and, for a
	// secure cluster, the admin certificate: what `baton run --config` takes.
	clientConfig string
	admin        batonv1connect.SchedulerServiceClient
	adminHTTP    *http.Client
	schedulers   []*benchDaemon
	workers      []*benchDaemon
}

// benchDaemon is one process of a local cluster, reaped by one waiter
// goroutine.
type benchDaemon struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	dataDir string
	// metrics scrapes the daemon's /metrics; metricsURL is where.
	metrics    *http.Client
	metricsURL string
	done       chan struct{}
	waitErr    error // written before done is closed
	// reported is set once an error has told of the exit.
	reported bool
}

// errPortTaken is a daemon that could not bind the port picked for it:
// something took it between the check and the bind.
var errPortTaken = errors.New("a port picked for the local cluster was taken meanwhile")

// startLocalCluster starts the scheduler and two workers that allow command
// (besides true, sh, bash and head) from binary, in a new directory under
// parent (the system's temporary directory when empty), and waits until
// both workers are READY. A port taken between its pick and its bind costs
// a new attempt.
func startLocalCluster(ctx context.Context, binary, parent, command string, v localVariant) (*localCluster, error) {
	var err error
	for range 3 {
		var lc *localCluster
		if lc, err = tryLocalCluster(ctx, binary, parent, command, v); !errors.Is(err, errPortTaken) {
			return lc, err
		}
	}
	return nil, err
}

func tryLocalCluster(ctx context.Context, binary, parent, command string, v localVariant) (_ *localCluster, err error) {
	dir, err := os.MkdirTemp(parent, "baton-bench-")
	if err != nil {
		return nil, err
	}
	lc := &localCluster{dir: dir}
	defer func() {
		if err != nil {
			err = errors.Join(err, lc.close())
		}
	}()
	// As root, jobs run under uids of their own (the worker's default, or
	// job_uids), which must pass through to their homes in the data dirs.
	if os.Geteuid() == 0 {
		if err := os.Chmod(dir, 0o711); err != nil {
			return nil, err
		}
	}
	if v.replicas > 1 && v.secure {
		return nil, errors.New("a local cluster of scheduler replicas speaks h2c only")
	}
	// One port for a scheduler on SQLite; a replica's API, its member's
	// client and peer ports.
	schedPorts := 1
	if v.replicas > 1 {
		schedPorts = 3 * v.replicas
	}
	ports, err := freeLoopbackPorts(schedPorts + len(benchWorkerNames))
	if err != nil {
		return nil, err
	}
	loopback := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	lc.addr = loopback(ports[0])
	lc.addrs = []string{lc.addr}
	if v.replicas > 1 {
		lc.addrs = nil
		for i := range v.replicas {
			lc.addrs = append(lc.addrs, loopback(ports[3*i]))
		}
	}

	var caFile string
	var files map[identity.Principal][2]string
	var admin *identity.Credentials
	adminP := identity.Principal{Role: identity.RoleAdmin, Name: "bench"}
	if v.secure {
		principals := []identity.Principal{identity.Scheduler, adminP}
		for _, n := range benchWorkerNames {
			principals = append(principals, identity.Principal{Role: identity.RoleWorker, Name: n})
		}
		if caFile, files, err = certs.Ensure(filepath.Join(dir, "certs"), "bench", principals...); err != nil {
			return nil, err
		}
		if admin, err = identity.LoadCredentials(caFile, files[adminP][0], files[adminP][1]); err != nil {
			return nil, err
		}
		lc.clientTLS = admin.ClientTLS(identity.Expect(identity.Scheduler))
	}
	server := func(p identity.Principal, addr string) config.GRPCServerConfig {
		if !v.secure {
			return config.GRPCServerConfig{Addr: addr}
		}
		return config.GRPCServerConfig{Addr: addr, UseTLS: true, CAFile: caFile, CrtFile: files[p][0], KeyFile: files[p][1]}
	}
	quiet := config.LogConfig{Level: "warn", Format: "text"}

	client := config.ClientSection{Scheduler: "http://" + strings.Join(lc.addrs, ",http://")}
	if v.secure {
		client = config.ClientSection{Scheduler: "https://" + lc.addr, CAFile: caFile, CertFile: files[adminP][0], KeyFile: files[adminP][1]}
	}
	lc.clientConfig = filepath.Join(dir, "client.toml")
	if err := config.WriteClientConfig(lc.clientConfig, client); err != nil {
		return nil, err
	}
	lc.adminHTTP = serving.NewHTTPClient(lc.clientTLS)
	if len(lc.addrs) > 1 {
		if lc.adminHTTP.Transport, err = serving.FollowLeader(lc.adminHTTP.Transport, lc.addrs); err != nil {
			return nil, err
		}
	}
	lc.admin = batonv1connect.NewSchedulerServiceClient(lc.adminHTTP, serving.BaseURL(lc.addr, v.secure))

	sched := daemon.DefaultSchedulerConfig()
	sched.GRPCServer = server(identity.Scheduler, lc.addr)
	sched.Scheduler.DataDir = filepath.Join(dir, "scheduler")
	sched.Log = quiet
	scheds := map[string]daemon.SchedulerConfig{"scheduler": sched}
	if v.replicas > 1 {
		scheds = replicaConfigs(sched, dir, ports[:schedPorts])
	}
	// The replicas start together: each member waits for a quorum of the
	// others before its scheduler serves.
	for _, name := range slices.Sorted(maps.Keys(scheds)) {
		c := scheds[name]
		if err := c.Validate(); err != nil {
			return nil, err
		}
		d, err := startDaemon(binary, "scheduler", name, dir, &c)
		if err != nil {
			return nil, err
		}
		d.dataDir = c.Scheduler.DataDir
		lc.schedulers = append(lc.schedulers, d)
	}
	// Workers that find no scheduler retry with a growing pause: start
	// them once it answers (a replica, once one leads).
	if err := lc.waitReady(ctx, 0); err != nil {
		return nil, err
	}

	allowed := []string{"true", "sh", "bash", "head"}
	if !strings.Contains(command, "/") && !slices.Contains(allowed, command) {
		allowed = append(allowed, command)
	}
	for i, name := range benchWorkerNames {
		self := identity.Principal{Role: identity.RoleWorker, Name: name}
		w := daemon.DefaultWorkerConfig()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[schedPorts+i]))
		w.GRPCServer = server(self, addr)
		w.Scheduler.Addr = strings.Join(lc.addrs, ",")
		w.Worker.Name = name
		w.Worker.DataDir = filepath.Join(dir, name, "data")
		w.Worker.ScriptsDir = filepath.Join(dir, name, "scripts")
		w.Worker.AllowedCommands = allowed
		w.Worker.StopGrace = config.Duration(time.Second)
		w.Worker.OutputLimit = max(w.Worker.OutputLimit, config.ByteSize(v.outputLimit))
		if v.capacity > 0 {
			w.Worker.Capacity = v.capacity
		}
		if v.jobUIDs {
			w.Worker.JobUIDs = daemon.DefaultJobUIDs
		}
		w.Worker.JobUser = v.jobUser
		w.Log = quiet
		if err := w.Validate(); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(w.Worker.ScriptsDir, 0o755); err != nil {
			return nil, err
		}
		d, err := startDaemon(binary, "worker", name, dir, &w)
		if err != nil {
			return nil, err
		}
		lc.workers = append(lc.workers, d)
		d.dataDir = w.Worker.DataDir
		var metricsTLS *tls.Config
		if admin != nil {
			metricsTLS = admin.ClientTLS(identity.Expect(self))
		}
		d.metrics = serving.NewHTTPClient(metricsTLS)
		d.metricsURL = serving.BaseURL(addr, v.secure) + "/metrics"
	}
	if err := lc.waitReady(ctx, len(benchWorkerNames)); err != nil {
		return nil, err
	}
	return lc, nil
}

// replicaConfigs derives from sched the configurations of len(ports)/3
// scheduler replicas, named scheduler-1 and on, replica i listening on
// ports[3i] with its embedded etcd member's client and peer URLs on the
// next two. Members keep etcd's defaults but the election timeout, as
// `baton dev --replicas` does, and sync every write to disk.
func replicaConfigs(sched daemon.SchedulerConfig, dir string, ports []int) map[string]daemon.SchedulerConfig {
	n := len(ports) / 3
	url := func(port int) string { return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	names := make([]string, n)
	initial := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("scheduler-%d", i+1)
		initial[i] = names[i] + "=" + url(ports[3*i+2])
	}
	out := make(map[string]daemon.SchedulerConfig, n)
	for i, name := range names {
		c := sched
		c.GRPCServer.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3*i]))
		c.Scheduler.DataDir = filepath.Join(dir, name)
		c.Store.Backend = daemon.BackendEtcd
		c.Store.Etcd.Embedded.Name = name
		c.Store.Etcd.Embedded.ClientURL = url(ports[3*i+1])
		c.Store.Etcd.Embedded.PeerURL = url(ports[3*i+2])
		c.Store.Etcd.Embedded.InitialCluster = strings.Join(initial, ",")
		out[name] = c
	}
	return out
}

// daemons are the cluster's processes, workers first.
func (lc *localCluster) daemons() []*benchDaemon {
	return append(slices.Clone(lc.workers), lc.schedulers...)
}

// waitReady waits until the scheduler lists want READY workers (with 0,
// until it answers at all). A daemon that exits meanwhile ends the wait
// with its log's last lines.
func (lc *localCluster) waitReady(ctx context.Context, want int) error {
	const limit = 30 * time.Second
	deadline := time.Now().Add(limit)
	for {
		callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		res, err := lc.admin.ListWorkers(callCtx, connect.NewRequest(&batonv1.ListWorkersRequest{
			States: []batonv1.WorkerState{batonv1.WorkerState_WORKER_STATE_READY},
		}))
		cancel()
		ready := 0
		if err == nil {
			if ready = len(res.Msg.GetWorkers()); ready >= want {
				return nil
			}
		}
		for _, d := range lc.daemons() {
			select {
			case <-d.done:
				return d.exitedEarly()
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("local cluster: %d of %d workers READY after %s (last error: %v)", ready, want, limit, err)
		}
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// close stops the workers and their keepers, then the scheduler (workers
// deregister on their way out), and removes the directory.
func (lc *localCluster) close() error {
	if lc.adminHTTP != nil {
		lc.adminHTTP.CloseIdleConnections()
	}
	errs := make([]error, len(lc.workers)+len(lc.schedulers)+1)
	var wg sync.WaitGroup
	for i, d := range lc.workers {
		wg.Go(func() {
			// SIGTERM leaves the jobs to the keeper; the decommission ends
			// them and it.
			errs[i] = d.stop()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := keeper.Decommission(ctx, d.dataDir); err != nil {
				errs[i] = errors.Join(errs[i], fmt.Errorf("decommission %s: %w", d.name, err))
			}
		})
	}
	wg.Wait()
	// Replicas stop together: one left alone has no quorum to resign with.
	for i, d := range lc.schedulers {
		wg.Go(func() { errs[len(lc.workers)+i] = d.stop() })
	}
	wg.Wait()
	if err := os.RemoveAll(lc.dir); err != nil {
		errs[len(errs)-1] = fmt.Errorf("remove the local cluster's directory: %w", err)
	}
	return errors.Join(errs...)
}

// startDaemon writes cfg (a config struct) to DIR/NAME.toml and starts
// `binary role --config` on it, its output going to DIR/NAME.log.
func startDaemon(binary, role, name, dir string, cfg any) (*benchDaemon, error) {
	configPath := filepath.Join(dir, name+".toml")
	f, err := os.OpenFile(configPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	werr := config.PrintTOML(f, cfg)
	if err := errors.Join(werr, f.Close()); err != nil {
		return nil, fmt.Errorf("%s config: %w", name, err)
	}
	d := &benchDaemon{name: name, logPath: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logFile, err := os.OpenFile(d.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	d.cmd = exec.Command(binary, role, "--config", configPath)
	d.cmd.Env = benchEnv()
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	d.cmd.SysProcAttr = &syscall.SysProcAttr{
		// Ctrl-C reaches this process only, which stops the daemons in
		// order; should it die first, the daemons get SIGTERM.
		Setpgid:   true,
		Pdeathsig: syscall.SIGTERM,
	}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

// benchEnv is this process's environment without BATON_ variables: the
// cluster's processes take their configuration from their files alone.
func benchEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, config.EnvPrefix) {
			env = append(env, kv)
		}
	}
	return env
}

// pid is the daemon's process id, valid until done is closed.
func (d *benchDaemon) pid() int { return d.cmd.Process.Pid }

// running returns an error telling of the daemon's exit once it has
// exited: its pid then no longer names it.
func (d *benchDaemon) running() error {
	select {
	case <-d.done:
		d.reported = true
		return fmt.Errorf("%s exited during the bench (%v)%s", d.name, d.waitErr, d.logTail())
	default:
		return nil
	}
}

// daemonStopGrace bounds a daemon's shutdown after SIGTERM before SIGKILL.
const daemonStopGrace = 30 * time.Second

// stop sends SIGTERM and waits for the exit, killing the daemon when it
// outlasts daemonStopGrace. Signals go through the process handle, which
// never reaches another process once this one is reaped.
func (d *benchDaemon) stop() error {
	if d.metrics != nil {
		d.metrics.CloseIdleConnections()
	}
	select {
	case <-d.done:
		if d.reported {
			return nil
		}
		return d.exitErr("had exited before the end")
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(daemonStopGrace)
	defer t.Stop()
	select {
	case <-d.done:
		return d.exitErr("exited")
	case <-t.C:
	}
	_ = d.cmd.Process.Kill()
	<-d.done
	return fmt.Errorf("%s did not stop within %s of SIGTERM and was killed%s", d.name, daemonStopGrace, d.logTail())
}

// exitErr describes an exit other than a clean one, after done.
func (d *benchDaemon) exitErr(what string) error {
	if d.waitErr == nil {
		return nil
	}
	return fmt.Errorf("%s %s: %w%s", d.name, what, d.waitErr, d.logTail())
}

// exitedEarly is the error of a daemon that exited before the cluster was
// ready, after done.
func (d *benchDaemon) exitedEarly() error {
	d.reported = true
	tail := d.logTail()
	err := fmt.Errorf("%s exited before the local cluster was ready (%v)%s", d.name, d.waitErr, tail)
	if strings.Contains(tail, "address already in use") {
		return fmt.Errorf("%w: %w", errPortTaken, err)
	}
	return err
}

// logTail is the end of the daemon's log, for error messages.
func (d *benchDaemon) logTail() string {
	f, err := os.Open(d.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	const keep = 2048
	if info, err := f.Stat(); err == nil && info.Size() > keep {
		_, _ = f.Seek(-keep, io.SeekEnd)
	}
	b, _ := io.ReadAll(io.LimitReader(f, keep))
	if s := strings.TrimSpace(string(b)); s != "" {
		return "; its log ends:\n" + s
	}
	return ""
}

// freeLoopbackPorts returns n distinct loopback ports nothing listens on
// now. They lie below the kernel's ephemeral range
// (ip_local_port_range): a port from that range may become the source
// port of an outgoing connection before the daemon binds it.
func freeLoopbackPorts(n int) ([]int, error) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	first := 10000
	if low-first < 1000 {
		first = 1024
	}
	var ports []int
	for range 1000 {
		if len(ports) == n {
			return ports, nil
		}
		p := first + rand.IntN(max(low-first, 1))
		if slices.Contains(ports, p) {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		ports = append(ports, p)
	}
	return nil, errors.New("no free loopback ports below the ephemeral range")
}
