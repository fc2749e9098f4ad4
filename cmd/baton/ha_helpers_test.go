package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"testing"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baton-run/baton/client"
	"github.com/baton-run/baton/cmd/baton/internal/certs"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/etcdmember"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/serving"
)

// This file runs a replicated scheduler as real processes: replicas of
// `baton scheduler` with embedded etcd members, over mutual TLS, and
// `baton worker` processes given every replica's address. The fault tests
// kill, stop, restart and cut off replicas through it.

// haEnv is the variable that turns the replicated-scheduler fault tests
// on: they take minutes, start a dozen processes and measure failover.
const haEnv = "BATONTEST_HA"

// haLogsEnv names a directory where a failed test's cluster directory
// (configurations, logs, data) is copied, for a look after the test.
const haLogsEnv = "BATONTEST_HA_KEEP"

// requireHA skips t unless BATONTEST_HA=1.
func requireHA(t *testing.T) {
	t.Helper()
	if os.Getenv(haEnv) != "1" {
		t.Skipf("replicated scheduler fault test (real processes, about a minute): run with %s=1", haEnv)
	}
}

// haOptions shape a replicated cluster. The zero value is 3 replicas and
// 2 workers on loopback.
type haOptions struct {
	// replicas is the number of scheduler replicas (3 when 0).
	replicas int
	// workers is the number of workers, named worker-1, worker-2, ... (2
	// when 0).
	workers int
	// replicaHosts[i] is the IP replica i listens on and advertises
	// (127.0.0.1 when empty or short). Every replica's certificate is
	// valid for all of them.
	replicaHosts []string
	// workerHost is the IP the workers listen on (127.0.0.1 when empty).
	workerHost string
	// wrap, when set, returns the command line that runs replica i's argv
	// (the binary first), e.g. prefixed with `ip netns exec NAME`.
	wrap func(i int, argv []string) []string
	// heartbeat is the workers' heartbeat interval (1 s when 0).
	heartbeat time.Duration
}

// haReplica is one scheduler replica: its addresses, files and process.
type haReplica struct {
	name string
	// addr is the API's host:port, which clients, workers and the other
	// replicas use; clientURL and peerURL are its etcd member's.
	addr, clientURL, peerURL string
	dir, cfgPath, logPath    string

	mu   sync.Mutex
	proc *proc
	// starts counts the processes started, for the log's markers.
	starts int
}

// current returns the replica's latest process, nil before the first.
func (r *haReplica) current() *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc
}

// haWorker is one worker process.
type haWorker struct {
	name, addr           string
	dataDir, cfgPath     string
	logPath, scriptsPath string
	proc                 *proc
}

// haCluster is a replicated scheduler and its workers, each a child
// process of the test, with their configuration, certificates, data and
// logs under one directory. Methods may be called from several
// goroutines, except the ones that start or stop processes, which the
// test calls from its own goroutine.
type haCluster struct {
	t    *testing.T
	bin  string
	dir  string
	opts haOptions

	caFile string
	files  map[identity.Principal][2]string
	admin  identity.Principal
	// adminCreds dial the replicas as an admin, checking that they are
	// the scheduler.
	adminCreds *identity.Credentials

	replicas []*haReplica
	workers  []*haWorker

	// rclients[i] calls replica i alone, and etcd the replicas' members;
	// made on first use.
	rmu      sync.Mutex
	rclients map[int]batonv1connect.SchedulerServiceClient
	etcd     *clientv3.Client
}

// haAdmin is the admin identity the tests' clients use.
var haAdmin = identity.Principal{Role: identity.RoleAdmin, Name: "ha-test"}

// newHACluster starts the replicas and the workers and returns once a
// leader is elected and every worker is READY. A port taken between its
// pick and its bind (another test process can take it) costs a new
// attempt with new ports.
func newHACluster(t *testing.T, opts haOptions) *haCluster {
	t.Helper()
	if opts.replicas == 0 {
		opts.replicas = 3
	}
	if opts.workers == 0 {
		opts.workers = 2
	}
	if opts.heartbeat == 0 {
		opts.heartbeat = time.Second
	}
	c := &haCluster{t: t, bin: e2e.SharedBaton(t), dir: e2e.JobsTempDir(t), opts: opts, admin: haAdmin}
	t.Cleanup(c.cleanup)
	c.issueCerts()
	for attempt := 1; ; attempt++ {
		err := c.startReplicas(attempt)
		if err == nil {
			break
		}
		c.stopReplicas()
		if !errors.Is(err, errHAPortTaken) || attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v; trying other ports", attempt, err)
	}
	if _, _, err := c.waitLeader(30*time.Second, -1); err != nil {
		t.Fatal(err)
	}
	c.startWorkers()
	c.waitWorkersReady(30 * time.Second)
	return c
}

// errHAPortTaken is a replica that could not bind a port picked for it.
var errHAPortTaken = errors.New("a port picked for a replica was taken meanwhile")

func (c *haCluster) replicaHost(i int) string {
	if i < len(c.opts.replicaHosts) && c.opts.replicaHosts[i] != "" {
		return c.opts.replicaHosts[i]
	}
	return "127.0.0.1"
}

func (c *haCluster) workerHost() string {
	if c.opts.workerHost != "" {
		return c.opts.workerHost
	}
	return "127.0.0.1"
}

// issueCerts makes the cluster's CA, one scheduler certificate valid for
// every replica's host, the workers' and the admin's.
func (c *haCluster) issueCerts() {
	t := c.t
	dir := filepath.Join(c.dir, "certs")
	ca, err := certs.InitAuthority(dir, "ha", false)
	if err != nil {
		t.Fatal(err)
	}
	hosts := []string{"localhost", "127.0.0.1", "::1", c.workerHost()}
	for i := range c.opts.replicas {
		hosts = append(hosts, c.replicaHost(i))
	}
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)
	principals := []identity.Principal{identity.Scheduler, c.admin}
	for i := range c.opts.workers {
		principals = append(principals, identity.Principal{Role: identity.RoleWorker, Name: haWorkerName(i)})
	}
	c.files = map[identity.Principal][2]string{}
	now := time.Now()
	for _, p := range principals {
		var h []string
		if p.Role != identity.RoleAdmin {
			h = hosts
		}
		crt, key, err := ca.Issue(p, identity.IssueOptions{Hosts: h, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		crtFile, keyFile, err := identity.WriteKeyPair(dir, identity.FileBase(p), crt, key)
		if err != nil {
			t.Fatal(err)
		}
		c.files[p] = [2]string{crtFile, keyFile}
	}
	c.caFile = filepath.Join(dir, "ca.crt")
	if c.adminCreds, err = identity.LoadCredentials(c.caFile, c.files[c.admin][0], c.files[c.admin][1]); err != nil {
		t.Fatal(err)
	}
}

func haWorkerName(i int) string { return "worker-" + strconv.Itoa(i+1) }

// serverTLS is the [grpc_server] section of principal p listening on addr.
func (c *haCluster) serverTLS(p identity.Principal, addr string) config.GRPCServerConfig {
	return config.GRPCServerConfig{Addr: addr, UseTLS: true, CAFile: c.caFile, CrtFile: c.files[p][0], KeyFile: c.files[p][1]}
}

// freePort returns a port free on loopback now, below the kernel's
// ephemeral range (as e2e.FreeAddr's are) but picked at random, and never
// twice in this process: other test processes, of this package or another,
// walk e2e.FreeAddr's ports in step with this one, and a replica keeps its
// ports across restarts.
func (c *haCluster) freePort() string {
	c.t.Helper()
	haPortsMu.Lock()
	defer haPortsMu.Unlock()
	for range 1000 {
		p := 20000 + rand.IntN(32768-20000)
		if haPortsTaken[p] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		haPortsTaken[p] = true
		return strconv.Itoa(p)
	}
	c.t.Fatal("no free port below the ephemeral range")
	return ""
}

var (
	haPortsMu    sync.Mutex
	haPortsTaken = map[int]bool{}
)

// startReplicas writes every replica's configuration, with new ports,
// starts them all (an etcd cluster bootstraps only with a quorum of its
// initial members) and waits until each listens.
func (c *haCluster) startReplicas(attempt int) error {
	n := c.opts.replicas
	c.replicas = make([]*haReplica, n)
	c.rmu.Lock()
	c.rclients = nil
	if c.etcd != nil {
		_ = c.etcd.Close()
		c.etcd = nil
	}
	c.rmu.Unlock()
	var initial []string
	for i := range n {
		host := c.replicaHost(i)
		r := &haReplica{
			name:      "scheduler-" + strconv.Itoa(i+1),
			addr:      net.JoinHostPort(host, c.freePort()),
			clientURL: "https://" + net.JoinHostPort(host, c.freePort()),
			peerURL:   "https://" + net.JoinHostPort(host, c.freePort()),
		}
		r.dir = filepath.Join(c.dir, fmt.Sprintf("%s.%d", r.name, attempt))
		r.cfgPath = filepath.Join(r.dir, "scheduler.toml")
		r.logPath = filepath.Join(r.dir, "scheduler.log")
		c.replicas[i] = r
		initial = append(initial, r.name+"="+r.peerURL)
	}
	for _, r := range c.replicas {
		cfg := daemon.DefaultSchedulerConfig()
		cfg.GRPCServer = c.serverTLS(identity.Scheduler, r.addr)
		cfg.Scheduler.DataDir = filepath.Join(r.dir, "data")
		cfg.Scheduler.HeartbeatInterval = config.Duration(c.opts.heartbeat)
		cfg.Scheduler.ShutdownTimeout = config.Duration(10 * time.Second)
		cfg.Store.Backend = daemon.BackendEtcd
		cfg.Store.Etcd.Embedded.Name = r.name
		cfg.Store.Etcd.Embedded.PeerURL = r.peerURL
		cfg.Store.Etcd.Embedded.ClientURL = r.clientURL
		cfg.Store.Etcd.Embedded.InitialCluster = strings.Join(initial, ",")
		cfg.Log = config.LogConfig{Level: "info", Format: "json"}
		if err := cfg.Validate(); err != nil {
			c.t.Fatal(err)
		}
		if err := os.MkdirAll(cfg.Scheduler.DataDir, 0o700); err != nil {
			c.t.Fatal(err)
		}
		writeTOML(c.t, r.cfgPath, &cfg)
	}
	for i := range c.replicas {
		if err := c.launchReplica(i); err != nil {
			return err
		}
	}
	for i := range c.replicas {
		if err := c.waitReplicaServing(i, 60*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// writeTOML writes cfg, a config struct, to path.
func writeTOML(t *testing.T, path string, cfg any) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(config.PrintTOML(f, cfg), f.Close()); err != nil {
		t.Fatal(err)
	}
}

// launchReplica starts replica i's process, its output appended to its
// log after a line that marks the start.
func (c *haCluster) launchReplica(i int) error {
	r := c.replicas[i]
	r.mu.Lock()
	r.starts++
	n := r.starts
	r.mu.Unlock()
	argv := []string{c.bin, "scheduler", "--config", r.cfgPath}
	if c.opts.wrap != nil {
		argv = c.opts.wrap(i, argv)
	}
	p, err := startProc(fmt.Sprintf("%s (start %d)", r.name, n), r.logPath, argv, c.dir)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.proc = p
	r.mu.Unlock()
	return nil
}

// startProc starts argv with its output appended to logPath, after a
// line naming the start. It dies with the test process (Pdeathsig).
func startProc(name, logPath string, argv []string, home string) (*proc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "=== %s at %s\n", name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// waitReplicaServing waits until replica i answers a call as a replica of
// this cluster: the leader's answer, or a follower's refusal (which names
// the leader, or none yet), over mutual TLS with the cluster's CA. A
// connection alone proves nothing: another process may hold the port.
// A replica that exits first fails the wait, with errHAPortTaken when it
// could not bind.
func (c *haCluster) waitReplicaServing(i int, d time.Duration) error {
	r := c.replicas[i]
	p := r.current()
	rc := c.replicaClient(i)
	deadline := time.Now().Add(d)
	for {
		select {
		case <-p.done:
			tail := logTail(r.logPath, 3000)
			err := fmt.Errorf("%s exited before it served (%v):\n%s", p.name, p.err, tail)
			if strings.Contains(tail, "address already in use") {
				return fmt.Errorf("%w: %w", errHAPortTaken, err)
			}
			return err
		default:
		}
		ctx, cancel := context.WithTimeout(c.t.Context(), time.Second)
		_, err := rc.ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
		cancel()
		var ce *connect.Error
		if err == nil || errors.As(err, &ce) && ce.Meta().Values(serving.LeaderHeader) != nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not answer on %s within %s (last: %v):\n%s", p.name, r.addr, d, err, logTail(r.logPath, 3000))
		}
		select {
		case <-p.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// logTail returns the last n bytes of the file at path.
func logTail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(raw) > n {
		raw = raw[len(raw)-n:]
	}
	return string(raw)
}

// startWorkers starts every worker, each given all the replicas.
func (c *haCluster) startWorkers() {
	t := c.t
	for i := range c.opts.workers {
		name := haWorkerName(i)
		base := filepath.Join(c.dir, name)
		w := &haWorker{name: name, addr: net.JoinHostPort(c.workerHost(), c.freePort())}
		w.dataDir = filepath.Join(base, "data")
		w.scriptsPath = filepath.Join(base, "scripts")
		w.cfgPath = filepath.Join(base, "worker.toml")
		w.logPath = filepath.Join(base, "worker.log")
		if err := os.MkdirAll(w.scriptsPath, 0o755); err != nil {
			t.Fatal(err)
		}
		cfg := daemon.DefaultWorkerConfig()
		cfg.GRPCServer = c.serverTLS(identity.Principal{Role: identity.RoleWorker, Name: name}, w.addr)
		cfg.Scheduler.Addr = strings.Join(c.addrs(), ",")
		cfg.Worker.Name = name
		cfg.Worker.DataDir = w.dataDir
		cfg.Worker.ScriptsDir = w.scriptsPath
		cfg.Worker.AllowedCommands = []string{"sleep", "true", "bash"}
		cfg.Worker.StopGrace = config.Duration(2 * time.Second)
		cfg.Worker.ShutdownTimeout = config.Duration(20 * time.Second)
		// The jobs end with their worker: nothing outlives the test.
		cfg.Worker.Keeper = false
		cfg.Log = config.LogConfig{Level: "info", Format: "json"}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		writeTOML(t, w.cfgPath, &cfg)
		p, err := startProc(name, w.logPath, []string{c.bin, "worker", "--config", w.cfgPath}, c.dir)
		if err != nil {
			t.Fatal(err)
		}
		w.proc = p
		c.workers = append(c.workers, w)
	}
}

// addrs are the replicas' API addresses, in order.
func (c *haCluster) addrs() []string {
	out := make([]string, len(c.replicas))
	for i, r := range c.replicas {
		out[i] = r.addr
	}
	return out
}

// replicaIndex returns the index of the replica at addr, or -1.
func (c *haCluster) replicaIndex(addr string) int {
	for i, r := range c.replicas {
		if r.addr == addr {
			return i
		}
	}
	return -1
}

// client returns a client of the Go client package given every replica,
// as an admin: its calls follow the leader.
func (c *haCluster) client() *client.Client {
	c.t.Helper()
	cl, err := client.New(client.Config{
		Schedulers: c.addrs(),
		CAFile:     c.caFile,
		CertFile:   c.files[c.admin][0],
		KeyFile:    c.files[c.admin][1],
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(cl.Close)
	return cl
}

// replicaClient returns a client of replica i alone, as an admin: a
// follower's refusal reaches the caller as it is.
func (c *haCluster) replicaClient(i int) batonv1connect.SchedulerServiceClient {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if rc, ok := c.rclients[i]; ok {
		return rc
	}
	if c.rclients == nil {
		c.rclients = map[int]batonv1connect.SchedulerServiceClient{}
	}
	rc := batonv1connect.NewSchedulerServiceClient(c.httpClient(), serving.BaseURL(c.replicas[i].addr, true))
	c.rclients[i] = rc
	return rc
}

// httpClient is a new HTTP client dialing the replicas as an admin,
// checking that they are the scheduler.
func (c *haCluster) httpClient() *http.Client {
	hc := serving.NewHTTPClient(c.adminCreds.ClientTLS(identity.Expect(identity.Scheduler)))
	c.t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// leader asks the replicas which one leads: the index of the leader and
// its epoch, as ListWorkers reports them.
func (c *haCluster) leader(ctx context.Context) (int, int64, error) {
	var last error
	for i := range c.replicas {
		callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		res, err := c.replicaClient(i).ListWorkers(callCtx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
		cancel()
		if err != nil {
			last = err
			continue
		}
		idx := c.replicaIndex(res.Msg.GetLeader())
		if idx < 0 {
			return -1, 0, fmt.Errorf("ListWorkers names leader %q, none of %v", res.Msg.GetLeader(), c.addrs())
		}
		return idx, res.Msg.GetEpoch(), nil
	}
	return -1, 0, fmt.Errorf("no replica answers as the leader: %w", last)
}

// waitLeader waits up to d for a leader other than replica not (-1: any)
// and returns it with its epoch.
func (c *haCluster) waitLeader(d time.Duration, not int) (int, int64, error) {
	deadline := time.Now().Add(d)
	for {
		i, epoch, err := c.leader(c.t.Context())
		if err == nil && i != not {
			return i, epoch, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("%s still leads", c.replicas[i].name)
			}
			return -1, 0, fmt.Errorf("no new leader within %s: %w", d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL to replica i and reaps it.
func (c *haCluster) kill(i int) {
	c.replicas[i].current().kill()
}

// terminate sends SIGTERM to replica i (it resigns if it leads) and waits
// up to d for it to exit.
func (c *haCluster) terminate(i int, d time.Duration) error {
	p := c.replicas[i].current()
	if err := p.signal(syscall.SIGTERM); err != nil {
		return err
	}
	if exited, err := p.wait(d); !exited {
		p.kill()
		return fmt.Errorf("%s did not exit within %s of SIGTERM", p.name, d)
	} else if err != nil {
		return fmt.Errorf("%s exit after SIGTERM: %w", p.name, err)
	}
	return nil
}

// restart starts replica i again, on its ports and data: its member
// rejoins the etcd cluster and the replica follows. A port still held by
// another process is tried again for a few seconds.
func (c *haCluster) restart(i int) error {
	if p := c.replicas[i].current(); p != nil && !p.exited() {
		return fmt.Errorf("%s is still running", p.name)
	}
	var err error
	for range 10 {
		if err = c.launchReplica(i); err != nil {
			return err
		}
		if err = c.waitReplicaServing(i, 60*time.Second); !errors.Is(err, errHAPortTaken) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
	return err
}

// etcdClient returns a client of the replicas' etcd members, with the
// scheduler's certificate, the only one they let in.
func (c *haCluster) etcdClient() (*clientv3.Client, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.etcd != nil {
		return c.etcd, nil
	}
	conf, err := config.ClientTLSFiles(c.caFile, c.files[identity.Scheduler][0], c.files[identity.Scheduler][1])
	if err != nil {
		return nil, err
	}
	var endpoints []string
	for _, r := range c.replicas {
		endpoints = append(endpoints, r.clientURL)
	}
	cli, err := etcdmember.NewClient(endpoints, conf)
	if err != nil {
		return nil, err
	}
	c.t.Cleanup(func() { _ = cli.Close() })
	c.etcd = cli
	return cli, nil
}

// raftLeader returns the index of the replica whose etcd member is the
// raft leader, or -1 with the reason.
func (c *haCluster) raftLeader(ctx context.Context) (int, error) {
	cli, err := c.etcdClient()
	if err != nil {
		return -1, err
	}
	var errs []error
	for i, r := range c.replicas {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cli.Status(sctx, r.clientURL)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.name, err))
			continue
		}
		if st.Header.GetMemberId() == st.Leader {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no etcd member says it is the raft leader: %w", errors.Join(errs...))
}

// tookOffice returns when replica i logged that it took office at epoch,
// by its own clock (the machine's).
func (c *haCluster) tookOffice(i int, epoch int64) (time.Time, error) {
	raw, err := os.ReadFile(c.replicas[i].logPath)
	if err != nil {
		return time.Time{}, err
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if !strings.Contains(line, `"leading the scheduler"`) {
			continue
		}
		var rec struct {
			Time  time.Time `json:"time"`
			Epoch int64     `json:"epoch"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Epoch == epoch {
			return rec.Time, nil
		}
	}
	return time.Time{}, fmt.Errorf("%s did not log taking office at epoch %d", c.replicas[i].name, epoch)
}

// waitFollowing waits up to d until replica i follows: a client's call to
// it is answered by another replica, which leads (the follower relayed
// it).
func (c *haCluster) waitFollowing(i int, d time.Duration) error {
	deadline := time.Now().Add(d)
	rc := c.replicaClient(i)
	for {
		ctx, cancel := context.WithTimeout(c.t.Context(), 2*time.Second)
		res, err := rc.ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
		cancel()
		if err == nil {
			if leader := c.replicaIndex(res.Msg.GetLeader()); leader >= 0 && leader != i {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not follow a leader within %s (last answer: %v)", c.replicas[i].name, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitWorkersReady waits until the leader lists every worker READY. A
// worker that exits meanwhile (its port taken, say) fails the test at once.
func (c *haCluster) waitWorkersReady(d time.Duration) {
	c.t.Helper()
	cl := c.client()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(c.t.Context(), 5*time.Second)
		res, err := cl.Scheduler().ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{
			States: []batonv1.WorkerState{batonv1.WorkerState_WORKER_STATE_READY},
		}))
		cancel()
		if err == nil && len(res.Msg.GetWorkers()) == len(c.workers) {
			return
		}
		for _, w := range c.workers {
			if w.proc.exited() {
				c.t.Fatalf("%s exited (%v):\n%s", w.name, w.proc.err, logTail(w.logPath, 3000))
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the workers are not all READY within %s (last: %v, %v)", d, res, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// listJobs returns every job the leader lists.
func (c *haCluster) listJobs(ctx context.Context) ([]*batonv1.JobStatus, error) {
	cl := c.client()
	var all []*batonv1.JobStatus
	token := ""
	for range 10000 {
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := cl.Scheduler().ListJobs(callCtx, connect.NewRequest(&batonv1.ListJobsRequest{PageSize: 1000, PageToken: token}))
		cancel()
		if err != nil {
			return nil, err
		}
		all = append(all, res.Msg.GetJobs()...)
		if token = res.Msg.GetNextPageToken(); token == "" {
			return all, nil
		}
	}
	return nil, errors.New("ListJobs: too many pages")
}

// haStart is one "job started" line of a worker's log: a process the
// worker started, for the leader of epoch Epoch.
type haStart struct {
	Worker string
	JobID  string
	Epoch  int64
	// Line is the line's number in the worker's log, from 1.
	Line int
}

// workerStarts reads every worker's log for the processes it started.
func (c *haCluster) workerStarts() ([]haStart, error) {
	var out []haStart
	for _, w := range c.workers {
		starts, err := readStarts(w.name, w.logPath)
		if err != nil {
			return nil, err
		}
		out = append(out, starts...)
	}
	return out, nil
}

// readStarts parses the JSON log of worker name for its "job started"
// lines.
func readStarts(name, path string) ([]haStart, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []haStart
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if !strings.Contains(string(line), `"job started"`) {
			continue
		}
		var rec struct {
			Msg   string `json:"msg"`
			JobID string `json:"job_id"`
			Epoch int64  `json:"epoch"`
		}
		if err := json.Unmarshal(line, &rec); err != nil || rec.Msg != "job started" || rec.JobID == "" {
			return nil, fmt.Errorf("%s:%d: a \"job started\" line without job_id: %s", path, n, line)
		}
		out = append(out, haStart{Worker: name, JobID: rec.JobID, Epoch: rec.Epoch, Line: n})
	}
	return out, sc.Err()
}

// stopReplicas ends every replica process: SIGTERM, then SIGKILL.
func (c *haCluster) stopReplicas() {
	var wg sync.WaitGroup
	for _, r := range c.replicas {
		p := r.current()
		if p == nil {
			continue
		}
		wg.Go(func() {
			if p.exited() {
				return
			}
			_ = p.signal(syscall.SIGTERM)
			if exited, _ := p.wait(15 * time.Second); !exited {
				c.t.Errorf("%s did not exit within 15s of SIGTERM", p.name)
				p.kill()
			}
		})
	}
	wg.Wait()
}

// cleanup stops the workers (their jobs end with them), then the
// replicas, and shows the logs' tails when the test failed.
func (c *haCluster) cleanup() {
	var wg sync.WaitGroup
	for _, w := range c.workers {
		p := w.proc
		wg.Go(func() {
			if p.exited() {
				return
			}
			_ = p.signal(syscall.SIGTERM)
			if exited, _ := p.wait(30 * time.Second); !exited {
				c.t.Errorf("%s did not exit within 30s of SIGTERM", w.name)
				p.kill()
			}
		})
	}
	wg.Wait()
	c.stopReplicas()
	for _, w := range c.workers {
		removeCgroupTree(cgroupDirFor(w.dataDir))
		removeV1Parents(w.dataDir)
	}
	if c.t.Failed() {
		if keep := os.Getenv(haLogsEnv); keep != "" {
			dst := filepath.Join(keep, strings.ReplaceAll(c.t.Name(), "/", "_")+"-"+time.Now().Format("150405"))
			if out, err := exec.Command("cp", "-a", c.dir, dst).CombinedOutput(); err != nil {
				c.t.Logf("copying the cluster's directory to %s: %v %s", dst, err, out)
			} else {
				c.t.Logf("the cluster's directory is copied to %s", dst)
			}
		}
		for _, r := range c.replicas {
			c.t.Logf("--- %s log (tail) ---\n%s", r.name, logTail(r.logPath, 6000))
		}
		for _, w := range c.workers {
			c.t.Logf("--- %s log (tail) ---\n%s", w.name, logTail(w.logPath, 4000))
		}
	}
}
