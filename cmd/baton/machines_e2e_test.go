package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// machines is a set of hosts, each a network namespace with an address of
// its own on one private subnet, joined by a bridge in a namespace of
// their own: what the README's "Several machines" walks through on real
// machines.
type machines struct {
	t      *testing.T
	bin    string
	prefix string // of the namespaces' names
	subnet string // "10.231.N"
	procs  []*exec.Cmd
}

// newMachines makes a switch and the named hosts, host i at subnet.i+1.
func newMachines(t *testing.T, hosts ...string) *machines {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root (network namespaces); CI runs as root")
		}
		t.Skip("needs root: it makes network namespaces")
	}
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	m := &machines{
		t: t, bin: e2e.SharedBaton(t),
		prefix: "bz" + hex.EncodeToString(rnd[:2]),
		subnet: fmt.Sprintf("10.%d.%d", 200+int(rnd[2])%50, rnd[0]),
	}
	t.Cleanup(m.cleanup)
	sw := m.prefix + "-sw"
	m.ip("netns", "add", sw)
	m.ip("-n", sw, "link", "add", "br0", "type", "bridge")
	m.ip("-n", sw, "link", "set", "br0", "up")
	for i, h := range hosts {
		ns := m.prefix + "-" + h
		host, peer := "eth0", fmt.Sprintf("p%d", i)
		m.ip("netns", "add", ns)
		m.ip("-n", ns, "link", "add", host, "type", "veth", "peer", "name", peer, "netns", sw)
		m.ip("-n", sw, "link", "set", peer, "master", "br0")
		m.ip("-n", sw, "link", "set", peer, "up")
		m.ip("-n", ns, "addr", "add", m.addr(i)+"/24", "dev", host)
		m.ip("-n", ns, "link", "set", host, "up")
		m.ip("-n", ns, "link", "set", "lo", "up")
	}
	return m
}

// addr is host i's address.
func (m *machines) addr(i int) string { return fmt.Sprintf("%s.%d", m.subnet, i+1) }

func (m *machines) ip(args ...string) {
	m.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		m.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// command is `baton args...` on host, in dir.
func (m *machines) command(ctx context.Context, host, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", m.prefix + "-" + host, m.bin}, args...)...)
	cmd.Dir = dir
	cmd.Env = append([]string{"HOME=" + dir, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// run runs `baton args...` on host to its end and returns its output.
func (m *machines) run(host, dir string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := m.command(ctx, host, dir, args...).CombinedOutput()
	return string(out), err
}

// start starts `baton args...` on host, its output in dir/NAME.log.
func (m *machines) start(host, dir, name string, args ...string) {
	m.t.Helper()
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		m.t.Fatal(err)
	}
	defer log.Close()
	cmd := m.command(context.Background(), host, "/", args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	m.procs = append(m.procs, cmd)
}

func (m *machines) cleanup() {
	for _, p := range m.procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range m.procs {
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if name, _, _ := strings.Cut(line, " "); strings.HasPrefix(name, m.prefix+"-") {
			_ = exec.Command("ip", "netns", "del", name).Run()
		}
	}
}

// TestSeveralMachines follows the README's "Several machines": a CA on an
// admin's machine, a certificate per host copied beside that host's
// config, workers listening on 0.0.0.0 without advertise_addr, every
// daemon started from / with configs whose paths are relative; then jobs
// on each worker from a client on a fourth machine.
func TestSeveralMachines(t *testing.T) {
	m := newMachines(t, "sched", "w1", "w2", "client")
	schedIP, clientHost := m.addr(0), "client"
	root := e2e.JobsTempDir(t)
	dirs := map[string]string{}
	for _, h := range []string{"admin", "sched", "w1", "w2", "client"} {
		dirs[h] = filepath.Join(root, h)
		if err := os.MkdirAll(filepath.Join(dirs[h], "certs"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// 1. The CA and every certificate, on the admin's machine.
	ca := filepath.Join(dirs["admin"], "certs")
	for _, args := range [][]string{
		{"certs", "init", "--dir", ca, "--cluster", "lab"},
		{"certs", "issue", "--dir", ca, "--role", "scheduler", "--host", schedIP},
		{"certs", "issue", "--dir", ca, "--role", "worker", "--name", "w1", "--host", m.addr(1)},
		{"certs", "issue", "--dir", ca, "--role", "worker", "--name", "w2", "--host", m.addr(2)},
		{"certs", "issue", "--dir", ca, "--role", "user", "--name", "alice"},
	} {
		if out, err := m.run("client", dirs["admin"], args...); err != nil {
			t.Fatalf("baton %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// 2. Each host gets ca.crt and its own pair, beside its config.
	copyFiles := func(host string, names ...string) {
		t.Helper()
		for _, n := range append([]string{"ca.crt"}, names...) {
			b, err := os.ReadFile(filepath.Join(ca, n))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dirs[host], "certs", n), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	copyFiles("sched", "scheduler.crt", "scheduler.key")
	copyFiles("w1", "worker-w1.crt", "worker-w1.key")
	copyFiles("w2", "worker-w2.crt", "worker-w2.key")
	copyFiles("client", "user-alice.crt", "user-alice.key")
	write := func(host, name, body string) string {
		t.Helper()
		p := filepath.Join(dirs[host], name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	schedCfg := write("sched", "scheduler.toml", `
[grpc_server]
addr = "0.0.0.0:7070"
use_tls = true
ca_file = "certs/ca.crt"
crt_file = "certs/scheduler.crt"
key_file = "certs/scheduler.key"

[scheduler]
data_dir = "data"
heartbeat_interval = "250ms"
`)
	workerCfg := map[string]string{}
	for _, w := range []string{"w1", "w2"} {
		if err := os.MkdirAll(filepath.Join(dirs[w], "scripts"), 0o755); err != nil {
			t.Fatal(err)
		}
		write(w, "scripts/count.sh", "#!/bin/bash\nfor i in 1 2 3; do echo $i; done\n")
		if err := os.Chmod(filepath.Join(dirs[w], "scripts", "count.sh"), 0o755); err != nil {
			t.Fatal(err)
		}
		workerCfg[w] = write(w, "worker.toml", fmt.Sprintf(`
[grpc_server]
addr = "0.0.0.0:7071"
use_tls = true
ca_file = "certs/ca.crt"
crt_file = "certs/worker-%[1]s.crt"
key_file = "certs/worker-%[1]s.key"

[scheduler]
addr = "%[2]s:7070"

[worker]
name = "%[1]s"
data_dir = "data"
scripts_dir = "scripts"
`, w, schedIP))
	}
	clientCfg := write(clientHost, "client.toml", fmt.Sprintf(`
[client]
scheduler = "https://%s:7070"
ca_file = "certs/ca.crt"
cert_file = "certs/user-alice.crt"
key_file = "certs/user-alice.key"
`, schedIP))

	// 3. The daemons, each started from / on its own host, each worker
	// after `baton check` passed on its host.
	check := func(host, cfg string) (string, error) {
		t.Helper()
		return m.run(host, "/", "check", "--config", cfg)
	}
	if out, err := check("sched", schedCfg); err != nil {
		t.Fatalf("baton check on the scheduler's host: %v\n%s", err, out)
	}
	m.start("sched", dirs["sched"], "scheduler", "scheduler", "--config", schedCfg)
	for _, w := range []string{"w1", "w2"} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err := check(w, workerCfg[w])
			if err == nil {
				break
			}
			if time.Now().After(deadline) || !strings.Contains(out, "scheduler.addr") {
				t.Fatalf("baton check on %s: %v\n%s", w, err, out)
			}
			time.Sleep(200 * time.Millisecond) // the scheduler is still starting
		}
		m.start(w, dirs[w], "worker", "worker", "--config", workerCfg[w])
		t.Cleanup(func() {
			if out, err := m.run(w, "/", "worker", "decommission", "--config", workerCfg[w]); err != nil {
				t.Logf("decommission %s: %v\n%s", w, err, out)
			}
		})
	}

	// 4. From the client: both workers READY at the addresses they
	// reached the scheduler from, and a job on each.
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := m.run(clientHost, "/", "--config", clientCfg, "workers", "-o", "json")
		var workers []struct {
			Name    string `json:"name"`
			Address string `json:"address"`
			State   string `json:"state"`
		}
		ready := map[string]string{}
		if err == nil && json.Unmarshal([]byte(out), &workers) == nil {
			for _, w := range workers {
				if w.State == "WORKER_STATE_READY" {
					ready[w.Name] = w.Address
				}
			}
		}
		if ready["w1"] == m.addr(1)+":7071" && ready["w2"] == m.addr(2)+":7071" {
			break
		}
		if time.Now().After(deadline) {
			logs, _ := os.ReadFile(filepath.Join(dirs["w1"], "worker.log"))
			t.Fatalf("workers not READY at their own addresses: %s %v %v\nw1's log:\n%s", out, err, ready, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, w := range []string{"w1", "w2"} {
		out, err := m.run(clientHost, "/", "--config", clientCfg, "run", "--worker", w, "--", "bash", "count.sh")
		if err != nil || out != "1\n2\n3\n" {
			t.Errorf("baton run on %s from the client machine: %q, %v", w, out, err)
		}
	}
	if out, err := check(clientHost, clientCfg); err != nil {
		t.Errorf("baton check on the client's machine: %v\n%s", err, out)
	}

	// 5. What check catches: a worker advertising an address the
	// scheduler cannot reach, and a client with another cluster's
	// certificate.
	bad := write("w2", "unreachable.toml", strings.Replace(mustRead(t, workerCfg["w2"]), `scripts_dir = "scripts"`,
		fmt.Sprintf("scripts_dir = \"scripts\"\nadvertise_addr = \"%s:7999\"", m.addr(2)), 1))
	out, err := check("w2", bad)
	t.Logf("baton check of a worker advertising an address nobody answers at:\n%s", out)
	unreachable := m.addr(2) + ":7999"
	if err == nil || !strings.Contains(out, "FAIL worker.advertise_addr") || !strings.Contains(out, "dial tcp "+unreachable) || !strings.Contains(out, "connection refused") {
		t.Errorf("baton check of a worker advertising %s: %v\n%s\nwant FAIL worker.advertise_addr naming the address dialled and \"connection refused\"", unreachable, err, out)
	}
	other := filepath.Join(dirs["admin"], "other")
	for _, args := range [][]string{
		{"certs", "init", "--dir", other, "--cluster", "lab"},
		{"certs", "issue", "--dir", other, "--role", "user", "--name", "alice"},
	} {
		if out, err := m.run("client", dirs["admin"], args...); err != nil {
			t.Fatalf("baton %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	strange := write(clientHost, "other.toml", fmt.Sprintf(`
[client]
scheduler = "https://%s:7070"
ca_file = "certs/ca.crt"
cert_file = %q
key_file = %q
`, schedIP, filepath.Join(other, "user-alice.crt"), filepath.Join(other, "user-alice.key")))
	out, err = check(clientHost, strange)
	t.Logf("baton check of a client with another cluster's certificate:\n%s", out)
	if err == nil || !strings.Contains(out, "FAIL client.cert_file: ") || !strings.Contains(out, "user-alice.crt is not signed by the CA in certs/ca.crt") {
		t.Errorf("baton check of a client with another cluster's certificate: %v\n%s\nwant FAIL client.cert_file saying it is not signed by the CA", err, out)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
