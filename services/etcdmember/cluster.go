package etcdmember

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Cluster is a cluster of in-process members on loopback, for tests.
type Cluster struct {
	Members []*Member
}

// TestTimings are raft timings fast enough for fault tests yet slow
// enough that a loaded two-core machine does not hold elections at rest.
const (
	TestTickMs     = 50
	TestElectionMs = 500
)

// StartTestCluster starts n members on loopback, without fsync, stopped
// when the test ends. The ports are picked free and the start tried again
// if another process took one meanwhile.
func StartTestCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	var lastErr error
	for range 5 {
		c, err := startCluster(tb.Context(), tb.TempDir(), n)
		if err == nil {
			tb.Cleanup(c.Close)
			return c
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	tb.Fatalf("starting %d etcd members: %v", n, lastErr)
	return nil
}

func startCluster(ctx context.Context, dir string, n int) (*Cluster, error) {
	cfgs := make([]Config, n)
	var initial []string
	for i := range cfgs {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("m%d", i)
		cfgs[i] = Config{
			Name:       name,
			Dir:        filepath.Join(dir, name),
			PeerURL:    "http://127.0.0.1:" + ports[0],
			ClientURL:  "http://127.0.0.1:" + ports[1],
			Token:      "test",
			TickMs:     TestTickMs,
			ElectionMs: TestElectionMs,
			NoFsync:    true,
		}
		initial = append(initial, name+"="+cfgs[i].PeerURL)
	}
	c := &Cluster{Members: make([]*Member, n)}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(initial, ",")
		wg.Go(func() { c.Members[i], errs[i] = Start(ctx, cfgs[i]) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// freePorts returns n ports free at the time of asking.
func freePorts(n int) ([]string, error) {
	var ports []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		_, port, _ := net.SplitHostPort(l.Addr().String())
		ports = append(ports, port)
		defer l.Close()
	}
	return ports, nil
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	out := make([]string, 0, len(c.Members))
	for _, m := range c.Members {
		if m != nil {
			out = append(out, m.ClientURL())
		}
	}
	return out
}

// Close stops every member still running.
func (c *Cluster) Close() {
	for _, m := range c.Members {
		if m != nil {
			m.Close()
		}
	}
}

// Cut partitions member i from every other member, both ways.
func (c *Cluster) Cut(i int) { c.link(i, true) }

// Mend heals what Cut did.
func (c *Cluster) Mend(i int) { c.link(i, false) }

func (c *Cluster) link(i int, cut bool) {
	a := c.Members[i].etcd.Server
	for j, m := range c.Members {
		if j == i || m == nil {
			continue
		}
		b := m.etcd.Server
		if cut {
			a.CutPeer(b.MemberID())
			b.CutPeer(a.MemberID())
		} else {
			a.MendPeer(b.MemberID())
			b.MendPeer(a.MemberID())
		}
	}
}

// RaftLeader is the index of the member raft elected leader, or -1.
func (c *Cluster) RaftLeader() int {
	for i, m := range c.Members {
		if m != nil && m.etcd.Server.Leader() == m.etcd.Server.MemberID() {
			return i
		}
	}
	return -1
}
