package dev

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/knadh/koanf/parsers/toml/v2"

	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
)

// Where replica i (from 0) of a replicated dev cluster listens: its API,
// web page and etcd member are the single scheduler's ports moved up by
// replicaPortStep*i; the member's ports sit beside the API's.
const (
	replicaPortStep = 100
	etcdClientPort  = 5
	etcdPeerPort    = 6
	// restartAfter is how long a replica that exited waits before it is
	// started again: time enough to watch the others elect a leader.
	restartAfter = 5 * time.Second
)

// replicaSet is a replicated scheduler of `baton dev`: each replica a
// child process of this binary, with an embedded etcd member, so that it
// can be killed on its own.
type replicaSet struct {
	names, addrs, httpAddrs []string
	configs                 []string
	mu                      sync.Mutex
	procs                   []*exec.Cmd
	wg                      sync.WaitGroup
}

// replicaConfigs derives n replica configurations from the single
// scheduler's, and writes each to <data dir>/scheduler-<i>/scheduler.toml.
func replicaConfigs(dc devConfig, base daemon.SchedulerConfig, n int) (*replicaSet, error) {
	rs := &replicaSet{}
	host, port, err := splitPort(dc.addr)
	if err != nil {
		return nil, fmt.Errorf("--addr: %w", err)
	}
	httpHost, httpPort, err := splitPort(dc.httpAddr)
	if err != nil {
		return nil, fmt.Errorf("--http-addr: %w", err)
	}
	var initial []string
	for i := range n {
		p := port + replicaPortStep*i
		rs.names = append(rs.names, fmt.Sprintf("scheduler-%d", i+1))
		rs.addrs = append(rs.addrs, net.JoinHostPort(host, strconv.Itoa(p)))
		rs.httpAddrs = append(rs.httpAddrs, net.JoinHostPort(httpHost, strconv.Itoa(httpPort+replicaPortStep*i)))
		initial = append(initial, rs.names[i]+"=https://"+net.JoinHostPort(host, strconv.Itoa(p+etcdPeerPort)))
	}
	for i := range n {
		c := base
		c.GRPCServer.Addr = rs.addrs[i]
		c.HTTPServer.Addr = rs.httpAddrs[i]
		c.Scheduler.DataDir = filepath.Join(dc.dataDir, rs.names[i])
		c.Scheduler.AuditFile = filepath.Join(c.Scheduler.DataDir, "audit.log")
		p := port + replicaPortStep*i
		c.Store.Backend = daemon.BackendEtcd
		c.Store.Etcd.Embedded.Name = rs.names[i]
		c.Store.Etcd.Embedded.PeerURL = "https://" + net.JoinHostPort(host, strconv.Itoa(p+etcdPeerPort))
		c.Store.Etcd.Embedded.ClientURL = "https://" + net.JoinHostPort(host, strconv.Itoa(p+etcdClientPort))
		c.Store.Etcd.Embedded.InitialCluster = strings.Join(initial, ",")
		if err := c.Validate(); err != nil {
			return nil, err
		}
		body, err := toml.Parser().Marshal(config.StructMap(reflect.ValueOf(&c).Elem()))
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(c.Scheduler.DataDir, 0o700); err != nil {
			return nil, err
		}
		path := filepath.Join(c.Scheduler.DataDir, "scheduler.toml")
		if err := os.WriteFile(path, body, 0o600); err != nil {
			return nil, err
		}
		rs.configs = append(rs.configs, path)
	}
	rs.procs = make([]*exec.Cmd, n)
	return rs, nil
}

func splitPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(port)
	return host, p, err
}

// ports are every address the replicas listen on, to check they are free.
func (rs *replicaSet) ports() []string {
	var out []string
	for i, a := range rs.addrs {
		host, p, _ := splitPort(a)
		out = append(out, a, rs.httpAddrs[i],
			net.JoinHostPort(host, strconv.Itoa(p+etcdClientPort)),
			net.JoinHostPort(host, strconv.Itoa(p+etcdPeerPort)))
	}
	return out
}

// start runs every replica until ctx ends, starting again one that exits
// (killed by its user, say) after restartAfter.
func (rs *replicaSet) start(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	for i := range rs.configs {
		if err := rs.startOne(exe, i); err != nil {
			rs.stop()
			return err
		}
		rs.wg.Go(func() { rs.keep(ctx, exe, i) })
	}
	return nil
}

func (rs *replicaSet) startOne(exe string, i int) error {
	cmd := exec.Command(exe, "scheduler", "--config", rs.configs[i])
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// The replicas end with `baton dev`, however it ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", rs.names[i], err)
	}
	rs.mu.Lock()
	rs.procs[i] = cmd
	rs.mu.Unlock()
	return nil
}

// keep waits for replica i and starts it again until ctx ends.
func (rs *replicaSet) keep(ctx context.Context, exe string, i int) {
	for {
		rs.mu.Lock()
		cmd := rs.procs[i]
		rs.mu.Unlock()
		err := cmd.Wait()
		if ctx.Err() != nil {
			return
		}
		fmt.Fprintf(os.Stderr, "%s (pid %d) exited (%v): starting it again in %s\n", rs.names[i], cmd.Process.Pid, err, restartAfter)
		select {
		case <-ctx.Done():
			return
		case <-time.After(restartAfter):
		}
		if err := rs.startOne(exe, i); err != nil {
			fmt.Fprintf(os.Stderr, "%v\n", err)
			return
		}
		fmt.Fprintf(os.Stderr, "%s started again (pid %d)\n", rs.names[i], rs.pid(i))
	}
}

func (rs *replicaSet) pid(i int) int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.procs[i].Process.Pid
}

// stop ends every replica with SIGTERM (each resigns, if it leads) and
// waits for them.
func (rs *replicaSet) stop() {
	rs.mu.Lock()
	for _, c := range rs.procs {
		if c != nil && c.Process != nil {
			_ = c.Process.Signal(syscall.SIGTERM)
		}
	}
	rs.mu.Unlock()
	rs.wg.Wait()
}

// waitListening waits until every replica accepts connections.
func (rs *replicaSet) waitListening(ctx context.Context) error {
	deadline := time.Now().Add(time.Minute)
	for _, a := range rs.addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				_ = c.Close()
				break
			}
			if time.Now().After(deadline) {
				return errors.New("the scheduler replicas did not listen within a minute: see their log above")
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// banner lines naming each replica, its addresses and process.
func (rs *replicaSet) banner() string {
	var b strings.Builder
	for i, n := range rs.names {
		fmt.Fprintf(&b, "  %-10s https://%s  web http://%s/  pid %d\n", n, rs.addrs[i], rs.httpAddrs[i], rs.pid(i))
	}
	return b.String()
}
