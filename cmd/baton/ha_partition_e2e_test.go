package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/serving"
)

// TestHAPartition cuts the leading replica of a three-replica scheduler
// off from everything, with real processes, and checks that the other two
// elect a new leader, that the cut-off replica stops acting, and that it
// follows the new leader once the network heals.
//
// The replica runs in a network namespace of its own, joined to the
// machine by two veth links: one carries its etcd member's traffic with
// the other members, the other everything else (its API, which clients
// and workers call, and its own calls to workers). The links go down one
// after the other, so that a call the replica makes while it still leads
// is caught in the network: its service link goes down, a client follows
// a job's output through it (over a connection made inside the
// namespace), which it relays from the worker, and then its etcd link
// goes down. The other two elect a new leader, the worker moves to it,
// and the new leader starts a job there. The service link comes back
// first: the call sent while the replica led reaches the worker, which
// refuses it for its epoch. Then the etcd link comes back, the replica
// names the new leader, and a client given every replica, the cut-off one
// first, starts a job through the cluster.
func TestHAPartition(t *testing.T) {
	requirePartitionable(t)
	started := time.Now()
	bin := e2e.SharedBaton(t)
	pn := newPartitionNet(t)

	c := &cluster{
		t:       t,
		bin:     bin,
		dir:     e2e.JobsTempDir(t),
		marker:  "bzp" + randomHex(6),
		workers: map[string]*workerInfo{},
	}
	t.Cleanup(c.cleanup)

	certs := filepath.Join(c.dir, "certs")
	issueCerts(t, bin, certs, "partition", "admin/tester")
	for _, issue := range [][]string{
		append([]string{"--role", "scheduler"}, hostFlags(pn.schedulerHosts())...),
		append([]string{"--role", "worker", "--name", "w1"}, hostFlags([]string{pn.svc})...),
	} {
		if out, err := runBaton(t, bin, certs, append([]string{"certs", "issue", "--dir", certs}, issue...)...); err != nil {
			t.Fatalf("baton certs issue %v: %v\n%s", issue, err, out)
		}
	}
	ca := filepath.Join(certs, "ca.crt")
	tlsConf := clientTLS(t, certs, "admin-tester")
	hc := serving.NewHTTPClient(tlsConf)
	// inside reaches the cut-off replica whatever its links do.
	inside := serving.NewHTTPClient(tlsConf)
	inside.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialInNetns(ctx, pn.ns, network, addr)
	}

	// Replica 0 is the one cut off: it runs in the namespace. The others'
	// API and etcd ports are on the machine's side, where the namespace
	// reaches their peer ports through the etcd link and everything else
	// through the service link.
	reps := []*partReplica{
		{name: "scheduler-1", addr: net.JoinHostPort(pn.nsSvc, "7001"), netns: pn.ns,
			peerURL: "https://" + net.JoinHostPort(pn.nsEtcd, "2381"), clientURL: "https://127.0.0.1:2391"},
		{name: "scheduler-2", addr: net.JoinHostPort(pn.svc, "7002"),
			peerURL: "https://" + net.JoinHostPort(pn.peers, "2382"), clientURL: "https://" + net.JoinHostPort(pn.svc, "2392")},
		{name: "scheduler-3", addr: net.JoinHostPort(pn.svc, "7003"),
			peerURL: "https://" + net.JoinHostPort(pn.peers, "2383"), clientURL: "https://" + net.JoinHostPort(pn.svc, "2393")},
	}
	var initial, addrs []string
	for _, r := range reps {
		initial = append(initial, r.name+"="+r.peerURL)
		addrs = append(addrs, r.addr)
	}
	for _, r := range reps {
		data := filepath.Join(c.dir, r.name)
		if err := os.MkdirAll(data, 0o700); err != nil {
			t.Fatal(err)
		}
		r.cfg = filepath.Join(data, "scheduler.toml")
		c.writeFile(r.cfg, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = true
ca_file = %q
crt_file = %q
key_file = %q

[scheduler]
data_dir = %q
heartbeat_interval = "250ms"
heartbeat_grace = "10s"
failover_grace = "30s"
shutdown_timeout = "5s"

[store]
backend = "etcd"

[store.etcd.embedded]
name = %q
peer_url = %q
client_url = %q
initial_cluster = %q

[log]
format = "json"
`, r.addr, ca, filepath.Join(certs, "scheduler.crt"), filepath.Join(certs, "scheduler.key"), data,
			r.name, r.peerURL, r.clientURL, strings.Join(initial, ",")), 0o600)
	}
	for _, r := range reps {
		r.start(c)
	}
	for _, r := range reps {
		e2e.WaitListening(t, r.addr)
	}

	// The replica to cut off must lead. A replica that resigns hands
	// office to the one waiting longest, so each round that restarts the
	// leader brings replica 0 nearer the front.
	for round := 0; ; round++ {
		leader, _ := waitLeader(t, hc, reps, 0, 30*time.Second)
		if leader == reps[0] {
			break
		}
		if round == 4 {
			t.Fatalf("%s still does not lead after %d handovers", reps[0].name, round)
		}
		leader.restart(c)
	}
	_, epoch1 := waitLeader(t, hc, reps, 0, time.Second)
	t.Logf("%s leads at epoch %d (%.1fs)", reps[0].name, epoch1, time.Since(started).Seconds())

	// One worker, given every replica, the one to cut off first.
	w := &workerInfo{name: "w1", addr: net.JoinHostPort(pn.svc, "7100")}
	base := filepath.Join(c.dir, w.name)
	scripts := filepath.Join(base, "scripts")
	w.dataDir = filepath.Join(base, "data")
	if err := os.MkdirAll(scripts, 0o755); err != nil {
		t.Fatal(err)
	}
	for file, body := range clusterScripts {
		c.writeFile(filepath.Join(scripts, file), body, 0o755)
	}
	w.cfgPath = filepath.Join(base, "worker.toml")
	c.writeFile(w.cfgPath, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = true
ca_file = %q
crt_file = %q
key_file = %q

[scheduler]
addr = %q

[worker]
name = %q
data_dir = %q
scripts_dir = %q
allowed_commands = ["bash"]
capacity = 8
stop_grace = "2s"
shutdown_timeout = "20s"

[log]
format = "json"
`, w.addr, ca, filepath.Join(certs, "worker-w1.crt"), filepath.Join(certs, "worker-w1.key"),
		strings.Join(addrs, ","), w.name, w.dataDir, scripts), 0o600)
	c.workers[w.name] = w
	c.startWorker(w.name)
	r1 := schedulerClient(hc, reps[0].addr)
	waitWorkerReady(t, r1, w.name, 30*time.Second)
	job1 := startNap(t, r1, c.workerMarker(w.name), w.name)
	if got := workerEpoch(t, w); got != epoch1 {
		t.Fatalf("after a start by the leader of epoch %d, the worker's epoch file holds %d", epoch1, got)
	}

	// 1. The service link goes down, and the leader is made to call the
	// worker: a client follows job 1's output through it.
	pn.down(pn.svcLink)
	cutSvc := time.Now()
	r1in := schedulerClient(inside, reps[0].addr)
	streamEnded := make(chan error, 1)
	go func() {
		s, err := r1in.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: job1, Follow: true}))
		if err != nil {
			streamEnded <- err
			return
		}
		for s.Receive() {
		}
		streamEnded <- s.Err()
	}()
	// The relay's request is in the replica's socket to the worker,
	// unacknowledged: the call has left the process.
	waitFor(t, 10*time.Second, "the leader to send its call to the worker", func() bool {
		return unsentBytes(reps[0].proc.cmd.Process.Pid, w.addr) > 0
	})

	// 2. The etcd link goes down: the replica is cut off from everything.
	pn.down(pn.etcdLink)
	cut := time.Now()
	t.Logf("cut off at %.1fs", time.Since(started).Seconds())

	leader2, epoch2 := waitLeader(t, hc, reps[1:], epoch1, 20*time.Second)
	elected := time.Since(cut)
	var left logEntry
	waitFor(t, 20*time.Second, reps[0].name+" to leave office", func() bool {
		left = firstLog(t, reps[0].logPath(c), func(e logEntry) bool { return e.Msg == "left office" && e.Epoch == epoch1 })
		return !left.Time.IsZero()
	})
	leadAt := firstLog(t, leader2.logPath(c), func(e logEntry) bool {
		return e.Msg == "leading the scheduler" && e.Epoch == epoch2
	}).Time
	t.Logf("%s leads at epoch %d %.1fs after the cut; %s left office %.1fs after the cut (%+.2fs from the new leader's start): %s",
		leader2.name, epoch2, elected.Seconds(), reps[0].name, left.Time.Sub(cut).Seconds(), left.Time.Sub(leadAt).Seconds(), left.Why)
	if !left.Time.Before(leadAt) {
		t.Errorf("%s left office after %s took it: two leaders for %s", reps[0].name, leader2.name, left.Time.Sub(leadAt))
	}
	if m := replicaMetrics(t, inside, reps[0].addr); m.leader != 0 {
		t.Errorf("%s left office, yet its metrics say baton_scheduler_leader %v", reps[0].name, m.leader)
	}
	select {
	case err := <-streamEnded:
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("the output stream relayed by the deposed leader ended with %v, want unavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("the output stream relayed by %s did not end within 10s of its leaving office", reps[0].name)
	}

	// 3. The worker moves to the new leader (a heartbeat to the cut-off
	// one goes unanswered), and a job started there gives it the new
	// epoch.
	var registered time.Time
	waitFor(t, 40*time.Second, "the worker to register with the new leader", func() bool {
		registered = firstLog(t, w.proc.logPath, func(e logEntry) bool {
			return e.Msg == "registered with the scheduler" && e.Time.After(cut)
		}).Time
		return !registered.IsZero()
	})
	t.Logf("the worker registered with the new leader %.1fs after the cut", registered.Sub(cut).Seconds())
	l2 := schedulerClient(hc, leader2.addr)
	waitWorkerReady(t, l2, w.name, 10*time.Second)
	startNap(t, l2, c.workerMarker(w.name), w.name)
	if got := workerEpoch(t, w); got != epoch2 {
		t.Fatalf("after a start by the leader of epoch %d, the worker's epoch file holds %d", epoch2, got)
	}

	// 4. The service link comes back, the etcd link still down: the call
	// the replica sent while it led reaches the worker, which refuses it
	// for its epoch.
	pn.up(pn.svcLink)
	upSvc := time.Now()
	want := fmt.Sprintf("stale leader: epoch %d is older than %d", epoch1, epoch2)
	var refusedAt time.Time
	waitFor(t, 45*time.Second, "the worker to refuse the deposed leader's call", func() bool {
		refusedAt = firstLog(t, w.proc.logPath, func(e logEntry) bool {
			return e.Msg == "rpc" && e.Procedure == batonv1connect.WorkerServiceStreamJobOutputProcedure &&
				e.Code == "failed_precondition" && peerHost(e.Peer) == pn.nsSvc && strings.Contains(e.Error, want)
		}).Time
		return !refusedAt.IsZero()
	})
	t.Logf("the worker refused the call of epoch %d %.1fs after the service link came back", epoch1, refusedAt.Sub(upSvc).Seconds())
	// Nothing the replica sent once its links went down was carried out.
	for _, e := range readLog(t, w.proc.logPath) {
		if e.Msg == "rpc" && peerHost(e.Peer) == pn.nsSvc && e.Time.Add(-time.Duration(e.Duration)).After(cutSvc) && e.Code != "failed_precondition" {
			t.Errorf("the worker answered %s to the cut-off replica's %s", e.Code, e.Procedure)
		}
		if e.Msg == "job started" && e.Time.After(cutSvc) && e.Epoch < epoch2 {
			t.Errorf("the worker started job %s for epoch %d after the cut", e.JobID, e.Epoch)
		}
	}
	if got := workerEpoch(t, w); got != epoch2 {
		t.Errorf("after refusing epoch %d the worker's epoch file holds %d, want %d", epoch1, got, epoch2)
	}
	// Still cut off from etcd, it knows of no leader to name.
	if _, err := r1.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{})); connect.CodeOf(err) != connect.CodeUnavailable || leaderHint(err) != "" {
		t.Errorf("ListWorkers on the replica cut off from etcd: %v (leader %q), want unavailable naming none", err, leaderHint(err))
	}

	// 5. Heal: it follows the new leader.
	pn.up(pn.etcdLink)
	healed := time.Now()
	var hint string
	waitFor(t, 30*time.Second, reps[0].name+" to relay a call to the new leader", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		res, err := r1.ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
		if err == nil {
			hint = res.Msg.GetLeader()
		}
		return err == nil && hint != reps[0].addr
	})
	leader3, epoch3 := waitLeader(t, hc, reps, epoch2-1, 10*time.Second)
	if hint != leader3.addr {
		t.Errorf("after the heal %s relays to %s; the leader is %s", reps[0].name, hint, leader3.addr)
	}
	if leader3 == reps[0] {
		t.Errorf("%s leads again after the heal", reps[0].name)
	}
	if m := replicaMetrics(t, hc, reps[0].addr); m.leader != 0 || m.epoch != float64(epoch3) {
		t.Errorf("after the heal %s's metrics say leader %v epoch %v, want 0 and %d", reps[0].name, m.leader, m.epoch, epoch3)
	}
	t.Logf("%s follows %s (epoch %d) %.1fs after the heal", reps[0].name, leader3.name, epoch3, time.Since(healed).Seconds())

	// A client given every replica, the healed one first, starts a job.
	clientCfg := filepath.Join(c.dir, "client.toml")
	c.writeFile(clientCfg, fmt.Sprintf(`[client]
scheduler = %q
ca_file = %q
cert_file = %q
key_file = %q
`, "https://"+strings.Join(addrs, ",https://"), ca, filepath.Join(certs, "admin-tester.crt"), filepath.Join(certs, "admin-tester.key")), 0o600)
	out, err := runBaton(t, bin, c.dir, "start", "--config", clientCfg, "--worker", w.name, "-o", "json", "--",
		"bash", "nap.sh", c.workerMarker(w.name), "300")
	if err != nil {
		t.Fatalf("baton start through the cluster after the heal: %v\n%s", err, out)
	}
	var started3 struct {
		JobID string `json:"jobId"`
	}
	if err := json.Unmarshal([]byte(out), &started3); err != nil || started3.JobID == "" {
		t.Fatalf("baton start -o json printed %q (%v)", out, err)
	}
	l3 := schedulerClient(hc, leader3.addr)
	waitFor(t, 10*time.Second, "the job started after the heal to run", func() bool {
		res, err := l3.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: started3.JobID}))
		return err == nil && res.Msg.GetStatus().GetState() == batonv1.JobState_JOB_STATE_RUNNING
	})
	t.Logf("done in %.1fs", time.Since(started).Seconds())
}

// leaderHint is the leader a replica's refusal names (LeaderHeader).
func leaderHint(err error) string {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return ""
	}
	return ce.Meta().Get(serving.LeaderHeader)
}

// dialInNetns dials addr from inside the network namespace ns: a thread
// joins the namespace to make the socket, which stays in it, and goes
// back before it serves any other goroutine. It must not exit instead:
// the processes it started would get their Pdeathsig.
func dialInNetns(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	type dialed struct {
		conn net.Conn
		err  error
	}
	out := make(chan dialed, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			out <- dialed{nil, err}
			return
		}
		defer home.Close()
		there, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			out <- dialed{nil, err}
			return
		}
		defer there.Close()
		if err := unix.Setns(int(there.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			out <- dialed{nil, fmt.Errorf("joining network namespace %s: %w", ns, err)}
			return
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if berr := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); berr != nil {
			// Stuck in the namespace: the thread stays locked to a
			// goroutine that never ends.
			out <- dialed{conn, err}
			select {}
		}
		runtime.UnlockOSThread()
		out <- dialed{conn, err}
	}()
	r := <-out
	return r.conn, r.err
}

// requirePartitionable skips the test unless BATONTEST_HA=1 asks for the
// replicated scheduler's fault tests and this process may make network
// namespaces (root, with ip(8)); under CI (CI set), missing rights fail it.
func requirePartitionable(t *testing.T) {
	t.Helper()
	if os.Getenv("BATONTEST_HA") != "1" {
		t.Skip("set BATONTEST_HA=1 to run the replicated scheduler's fault tests (real processes)")
	}
	why := ""
	if os.Geteuid() != 0 {
		why = "making network namespaces and veth links needs root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "ip(8) (iproute2) is not installed"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// partitionNet is a network namespace joined to this machine by two veth
// links, and an interface on the machine's side holding the addresses the
// namespace reaches through them. The links are /30s of a 10.231.N.0/24
// that no address or route of this machine uses; names carry a random
// id, so that runs at the same time do not meet.
type partitionNet struct {
	t  *testing.T
	ns string
	// The links, by their name on the machine's side: taking that end
	// down cuts a link and leaves the namespace's addresses in place.
	etcdLink, svcLink string
	// The namespace's end of each link, and the machine's.
	nsEtcd, nsSvc     string
	rootEtcd, rootSvc string
	// svc holds the machine's services (workers, the other replicas' API
	// and etcd clients), reached from the namespace through the service
	// link; peers holds the other etcd members' peer ports, reached
	// through the etcd link.
	svc, peers string
	// subnet is the 10.231.N.0/24 all of them are in.
	subnet string
}

func newPartitionNet(t *testing.T) *partitionNet {
	t.Helper()
	id := randomHex(3)
	n := &partitionNet{t: t, ns: "batonpart-" + id}
	prefix := freeSubnet(t)
	n.subnet = prefix + "0/24"
	addr := func(host int) string { return prefix + strconv.Itoa(host) }
	n.nsEtcd, n.rootEtcd = addr(1), addr(2)
	n.nsSvc, n.rootSvc = addr(5), addr(6)
	n.svc, n.peers = addr(17), addr(18)
	hold := "bp" + id + "h0"
	n.etcdLink, n.svcLink = "bp"+id+"e0", "bp"+id+"s0"

	// Removed last, whatever was made: deleting the namespace deletes
	// its ends of the links and with them the machine's ends; deleting
	// those explicitly too covers a namespace kept alive by a process.
	t.Cleanup(func() {
		_ = exec.Command("ip", "route", "del", "blackhole", n.subnet).Run()
		for _, link := range []string{n.etcdLink, n.svcLink, hold} {
			_ = exec.Command("ip", "link", "del", link).Run()
		}
		if out, err := exec.Command("ip", "netns", "del", n.ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
			t.Errorf("ip netns del %s: %v: %s", n.ns, err, out)
		}
	})
	// A cut link takes its route with it: without this one, packets for
	// the namespace would follow the default route off the machine (where
	// a transparent proxy may even answer them) instead of being lost.
	n.ip("route", "add", "blackhole", n.subnet)
	n.ip("netns", "add", n.ns)
	n.ip("netns", "exec", n.ns, "ip", "link", "set", "lo", "up")
	// The machine's service addresses sit on a veth pair of their own
	// (the dummy driver may be missing), which takes them when it goes.
	n.ip("link", "add", hold, "type", "veth", "peer", "name", peerLink(hold))
	n.ip("addr", "add", n.svc+"/32", "dev", hold)
	n.ip("addr", "add", n.peers+"/32", "dev", hold)
	n.ip("link", "set", hold, "up")
	n.ip("link", "set", peerLink(hold), "up")
	for _, l := range []struct{ root, rootAddr, nsAddr string }{
		{n.etcdLink, n.rootEtcd, n.nsEtcd},
		{n.svcLink, n.rootSvc, n.nsSvc},
	} {
		n.ip("link", "add", l.root, "type", "veth", "peer", "name", peerLink(l.root), "netns", n.ns)
		n.ip("addr", "add", l.rootAddr+"/30", "dev", l.root)
		n.ip("link", "set", l.root, "up")
		n.ip("netns", "exec", n.ns, "ip", "addr", "add", l.nsAddr+"/30", "dev", peerLink(l.root))
		n.ip("netns", "exec", n.ns, "ip", "link", "set", peerLink(l.root), "up")
	}
	// Which link a packet from the namespace takes depends on where it
	// goes: the other members' peer ports through the etcd link, every
	// other service on the machine through the service link.
	n.ip("netns", "exec", n.ns, "ip", "route", "add", n.peers+"/32", "via", n.rootEtcd)
	n.ip("netns", "exec", n.ns, "ip", "route", "add", n.svc+"/32", "via", n.rootSvc)
	return n
}

// peerLink names the other end of the veth pair whose first end is
// link ("...0" and "...1").
func peerLink(link string) string { return strings.TrimSuffix(link, "0") + "1" }

// schedulerHosts are every address a scheduler replica serves or dials
// from: etcd checks a peer's certificate against the address it comes
// from.
func (n *partitionNet) schedulerHosts() []string {
	return []string{n.nsEtcd, n.rootEtcd, n.nsSvc, n.rootSvc, n.svc, n.peers}
}

func (n *partitionNet) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// down cuts a link at the machine's end: the namespace's end loses its
// carrier, and what either side sends into the link is lost.
func (n *partitionNet) down(link string) { n.t.Helper(); n.ip("link", "set", link, "down") }

func (n *partitionNet) up(link string) { n.t.Helper(); n.ip("link", "set", link, "up") }

// freeSubnet returns "10.231.N." for an N that no address or route of
// this machine is in.
func freeSubnet(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", "ip -o -4 addr show; ip -o -4 route show table all").CombinedOutput()
	if err != nil {
		t.Fatalf("listing addresses and routes: %v: %s", err, out)
	}
	taken := map[string]bool{}
	for _, f := range strings.Fields(string(out)) {
		if rest, ok := strings.CutPrefix(f, "10.231."); ok {
			n, _, _ := strings.Cut(rest, ".")
			taken[n] = true
		}
	}
	var b [1]byte
	for range 256 {
		_, _ = rand.Read(b[:])
		if n := strconv.Itoa(int(b[0])); !taken[n] {
			return "10.231." + n + "."
		}
	}
	t.Fatal("every 10.231.N.0/24 is in use on this machine")
	return ""
}

func hostFlags(hosts []string) []string {
	var out []string
	for _, h := range hosts {
		out = append(out, "--host", h)
	}
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// partReplica is one scheduler replica process, with its embedded etcd
// member; netns names the namespace it runs in, if any.
type partReplica struct {
	name, addr, cfg    string
	peerURL, clientURL string
	netns              string
	proc               *proc
}

func (r *partReplica) logPath(c *cluster) string { return filepath.Join(c.dir, r.name+".log") }

// start runs the replica, in its namespace if it has one (ip netns exec
// execs the command in place: the process is the replica's).
func (r *partReplica) start(c *cluster) {
	c.t.Helper()
	if r.netns == "" {
		r.proc = c.spawn(r.name, "scheduler", "--config", r.cfg)
		return
	}
	logFile, err := os.OpenFile(r.logPath(c), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command("ip", "netns", "exec", r.netns, c.bin, "scheduler", "--config", r.cfg)
	cmd.Env = append([]string{"HOME=" + c.dir, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	p := &proc{name: r.name, cmd: cmd, logPath: r.logPath(c), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	r.proc = p
}

// restart stops the replica with SIGTERM (it resigns, if it leads) and
// starts it again.
func (r *partReplica) restart(c *cluster) {
	c.t.Helper()
	if err := r.proc.signal(syscall.SIGTERM); err != nil {
		c.t.Fatalf("%s: %v", r.name, err)
	}
	if exited, _ := r.proc.wait(30 * time.Second); !exited {
		c.t.Fatalf("%s did not exit within 30s of SIGTERM", r.name)
	}
	r.start(c)
	e2e.WaitListening(c.t, r.addr)
}

func schedulerClient(hc *http.Client, addr string) batonv1connect.SchedulerServiceClient {
	return batonv1connect.NewSchedulerServiceClient(hc, serving.BaseURL(addr, true))
}

// waitLeader waits until one of reps answers ListWorkers as the leader,
// at an epoch above after, and returns it and its epoch.
func waitLeader(t *testing.T, hc *http.Client, reps []*partReplica, after int64, d time.Duration) (*partReplica, int64) {
	t.Helper()
	var leader *partReplica
	var epoch int64
	waitFor(t, d, fmt.Sprintf("a leader above epoch %d", after), func() bool {
		for _, r := range reps {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			res, err := schedulerClient(hc, r.addr).ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
			cancel()
			if err != nil || res.Msg.GetEpoch() <= after {
				continue
			}
			// A follower relays the call: the answer names the leader.
			for _, l := range reps {
				if l.addr == res.Msg.GetLeader() {
					leader, epoch = l, res.Msg.GetEpoch()
					return true
				}
			}
		}
		return false
	})
	return leader, epoch
}

func waitWorkerReady(t *testing.T, sc batonv1connect.SchedulerServiceClient, name string, d time.Duration) {
	t.Helper()
	waitFor(t, d, "worker "+name+" READY", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		res, err := sc.ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
		if err != nil {
			return false
		}
		for _, w := range res.Msg.GetWorkers() {
			if w.GetName() == name && w.GetState() == batonv1.WorkerState_WORKER_STATE_READY {
				return true
			}
		}
		return false
	})
}

// startNap starts a long marked sleep on worker and returns its job id.
func startNap(t *testing.T, sc batonv1connect.SchedulerServiceClient, marker, worker string) string {
	t.Helper()
	res, err := sc.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{
		WorkerId: worker, Command: "bash", Path: "nap.sh", Args: []string{marker, "300"},
	}))
	if err != nil {
		t.Fatalf("StartJob: %v", err)
	}
	return res.Msg.GetJobId()
}

// workerEpoch reads the newest leader epoch the worker has recorded.
func workerEpoch(t *testing.T, w *workerInfo) int64 {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(w.dataDir, "epoch"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		t.Fatalf("the worker's epoch file holds %q", raw)
	}
	return n
}

type replicaGauges struct{ leader, epoch float64 }

// replicaMetrics reads baton_scheduler_leader and baton_scheduler_epoch
// from a replica's /metrics.
func replicaMetrics(t *testing.T, hc *http.Client, addr string) replicaGauges {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, serving.BaseURL(addr, true)+"/metrics", nil)
	res, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET /metrics of %s: %v", addr, err)
	}
	defer res.Body.Close()
	var g replicaGauges
	found := 0
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch name {
		case "baton_scheduler_leader":
			g.leader = v
			found++
		case "baton_scheduler_epoch":
			g.epoch = v
			found++
		}
	}
	if found != 2 {
		t.Fatalf("%s/metrics lacks baton_scheduler_leader or baton_scheduler_epoch", addr)
	}
	return g
}

// unsentBytes is how many bytes the sockets of process pid to hostPort
// hold unacknowledged (tx_queue in /proc/PID/net/tcp, which shows the
// process's network namespace).
func unsentBytes(pid int, hostPort string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[0] == "sl" {
			continue
		}
		if procNetAddr(fields[2]) != hostPort {
			continue
		}
		tx, _, _ := strings.Cut(fields[4], ":")
		n, _ := strconv.ParseInt(tx, 16, 64)
		total += n
	}
	return total
}

// procNetAddr turns /proc/net/tcp's "0100007F:1F90" (an IPv4 address in
// host byte order, little-endian here) into "127.0.0.1:8080".
func procNetAddr(s string) string {
	ipHex, portHex, ok := strings.Cut(s, ":")
	b, err := hex.DecodeString(ipHex)
	if !ok || err != nil || len(b) != 4 {
		return ""
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return ""
	}
	return net.JoinHostPort(net.IPv4(b[3], b[2], b[1], b[0]).String(), strconv.FormatUint(port, 10))
}

// logEntry is what the tests read of a baton process's JSON log line.
type logEntry struct {
	Time      time.Time   `json:"time"`
	Msg       string      `json:"msg"`
	Epoch     int64       `json:"epoch"`
	JobID     string      `json:"job_id"`
	Procedure string      `json:"procedure"`
	Peer      string      `json:"peer"`
	Code      string      `json:"code"`
	Error     string      `json:"error"`
	Why       string      `json:"why"`
	Duration  logDuration `json:"duration"`
}

// logDuration reads a slog duration: a string such as "1.5ms" (the
// JSON handler's text for a time.Duration value) or nanoseconds.
type logDuration time.Duration

func (d *logDuration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var ns int64
		if err := json.Unmarshal(b, &ns); err != nil {
			return err
		}
		*d = logDuration(ns)
		return nil
	}
	v, err := time.ParseDuration(s)
	*d = logDuration(v)
	return err
}

func readLog(t *testing.T, path string) []logEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []logEntry
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && line[0] == '{' {
			var e logEntry
			if json.Unmarshal(line, &e) == nil {
				out = append(out, e)
			}
		}
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// firstLog is the first line of the log at path that match accepts; its
// Time is zero when there is none.
func firstLog(t *testing.T, path string, match func(logEntry) bool) logEntry {
	t.Helper()
	for _, e := range readLog(t, path) {
		if match(e) {
			return e
		}
	}
	return logEntry{}
}

func peerHost(peer string) string {
	host, _, err := net.SplitHostPort(peer)
	if err != nil {
		return peer
	}
	return host
}

// waitFor polls ok until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
