package dev

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// TestDevReplicas runs `baton dev --replicas 3` as a newcomer would: the
// client finds the leader, a SIGKILL of the leader's process hands office
// to another replica, dev starts the killed one again, and Ctrl-C leaves no
// replica behind.
func TestDevReplicas(t *testing.T) {
	bin := e2e.SharedBaton(t)
	home := e2e.JobsTempDir(t)
	d := newDevProcess(t, bin, home, t.TempDir())
	baton := func(args ...string) *exec.Cmd { return d.baton(t.Context(), args...) }
	// Replica i listens on --addr's and --http-addr's ports + 100·i, its
	// etcd member beside the first: all must be free.
	for !replicaPortsFree(d.addr, d.httpAddr) {
		d.addr, d.httpAddr = e2e.FreeAddr(t), e2e.FreeAddr(t)
	}

	out := &e2e.LockedBuffer{}
	dev := d.baton(context.Background(), "dev", "--replicas", "3", "--addr", d.addr, "--http-addr", d.httpAddr, "--worker-port", strconv.Itoa(d.port))
	dev.Stdout, dev.Stderr = out, out
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dev.Process.Kill(); _, _ = dev.Process.Wait() })

	leaderRE := regexp.MustCompile(`Scheduler leader: (\S+) \(epoch (\d+)\)`)
	leader := func() (addr string, epoch int) {
		b, err := baton("workers").Output()
		m := leaderRE.FindSubmatch(b)
		if err != nil || m == nil || bytes.Count(b, []byte("READY")) != 2 {
			return "", 0
		}
		e, _ := strconv.Atoi(string(m[2]))
		return string(m[1]), e
	}
	waitLeader := func(what string, ok func(addr string, epoch int) bool) (string, int) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if a, e := leader(); a != "" && ok(a, e) {
				return a, e
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: never seen\n%s", what, out.String())
			}
		}
	}
	first, epoch := waitLeader("a leader and two READY workers", func(string, int) bool { return true })
	if b, err := baton("run", "--", "sh", "-c", "echo hi").Output(); err != nil || string(b) != "hi\n" {
		t.Fatalf("run through the replicas: %v %q\n%s", err, b, out.String())
	}

	pids := map[string]int{}
	for _, m := range regexp.MustCompile(`https://(\S+)\s+web \S+\s+pid (\d+)`).FindAllStringSubmatch(out.String(), -1) {
		pids[m[1]], _ = strconv.Atoi(m[2])
	}
	if len(pids) != 3 || pids[first] == 0 {
		t.Fatalf("the banner names %d replicas' pids (%v), want 3 with the leader %s\n%s", len(pids), pids, first, out.String())
	}
	// A client that knows one follower only is served through it: the
	// follower relays the call, and the output stream, to the leader.
	var followerAddr string
	for a := range pids {
		if a != first {
			followerAddr = a
			break
		}
	}
	if b, err := baton("run", "--scheduler", followerAddr, "--", "sh", "-c", "echo relayed").CombinedOutput(); err != nil || string(b) != "relayed\n" {
		t.Fatalf("run through the follower %s alone: %v %q\n%s", followerAddr, err, b, out.String())
	}
	webRE := regexp.MustCompile(`https://` + regexp.QuoteMeta(followerAddr) + `\s+web (http://\S+)/`)
	web := webRE.FindStringSubmatch(out.String())
	if web == nil {
		t.Fatalf("the banner names no web address for %s\n%s", followerAddr, out.String())
	}
	res, err := http.Post(web[1]+"/baton.v1.SchedulerService/ListWorkers", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"leader":"`+first+`"`) {
		t.Fatalf("ListWorkers on the follower's web port: %s %s, want the leader %s's answer", res.Status, body, first)
	}

	if err := syscall.Kill(pids[first], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	second, _ := waitLeader("another leader after the first was killed", func(a string, e int) bool { return a != first && e > epoch })
	if b, err := baton("run", "--", "sh", "-c", "echo again").Output(); err != nil || string(b) != "again\n" {
		t.Fatalf("run after the failover to %s: %v %q\n%s", second, err, b, out.String())
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "started again"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("dev did not start the killed replica again\n%s", out.String())
		}
	}

	d.stop(dev, out)
	restarted := regexp.MustCompile(`started again \(pid (\d+)\)`).FindStringSubmatch(out.String())
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil && pid != pids[first] {
			t.Errorf("replica pid %d outlived baton dev", pid)
		}
	}
	if restarted != nil {
		if pid, _ := strconv.Atoi(restarted[1]); syscall.Kill(pid, 0) == nil {
			t.Errorf("the restarted replica (pid %d) outlived baton dev", pid)
		}
	}
}

// replicaPortsFree reports whether every port 3 replicas would take is
// free now.
func replicaPortsFree(addr, httpAddr string) bool {
	host, port, err := splitPort(addr)
	if err != nil {
		return false
	}
	hhost, hport, err := splitPort(httpAddr)
	if err != nil {
		return false
	}
	var want []string
	for i := range 3 {
		p := port + replicaPortStep*i
		want = append(want, net.JoinHostPort(host, strconv.Itoa(p)), net.JoinHostPort(host, strconv.Itoa(p+etcdClientPort)),
			net.JoinHostPort(host, strconv.Itoa(p+etcdPeerPort)), net.JoinHostPort(hhost, strconv.Itoa(hport+replicaPortStep*i)))
	}
	for _, a := range want {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return false
		}
		_ = l.Close()
	}
	return true
}
