package replica_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baton-run/baton/services/etcdmember"
	"github.com/baton-run/baton/services/replica"
	"github.com/baton-run/baton/services/scheduler/store"
)

// TestCutOffLeaderLeavesBeforeNextLeads cuts the leader's etcd member off
// from the other two and checks that its term ends before the next
// leader's begins: a leader cut off must stop acting on its own, before
// the cluster can have ended its lease, and not when it next hears from
// etcd. Raft's leadership is placed on the leader's member or elsewhere:
// only a new raft leader extends the leases it inherits.
func TestCutOffLeaderLeavesBeforeNextLeads(t *testing.T) {
	t.Parallel()
	for _, raftLeader := range []bool{false, true} {
		t.Run(fmt.Sprintf("raft leader %t", raftLeader), func(t *testing.T) {
			t.Parallel()
			c := etcdmember.StartTestCluster(t, 3)
			var terms termLog
			var raftLead int
			deadline := time.Now().Add(10 * time.Second)
			for raftLead = c.RaftLeader(); raftLead < 0; raftLead = c.RaftLeader() {
				if time.Now().After(deadline) {
					t.Fatal("no raft leader within 10s")
				}
				time.Sleep(10 * time.Millisecond)
			}
			first := raftLead
			if !raftLeader {
				first = (raftLead + 1) % 3
			}
			runCutOffReplica(t, c, first, &terms)
			old := terms.wait(t, 0, 20*time.Second)
			for i := range 3 {
				if i != first {
					runCutOffReplica(t, c, i, &terms)
				}
			}
			if got := c.RaftLeader(); (got == first) != raftLeader {
				t.Skipf("raft's leadership moved (member %d leads, not as placed): the case is not the one named", got)
			}

			c.Cut(first)
			cut := time.Now()
			next := terms.wait(t, old.epoch, 20*time.Second)
			oldEnd := old.waitEnd(t, 20*time.Second)
			t.Logf("the cut-off leader left office %s after the cut, the next took office %s after it",
				oldEnd.Sub(cut).Round(time.Millisecond), next.began.Sub(cut).Round(time.Millisecond))
			if !oldEnd.Before(next.began) {
				t.Errorf("the cut-off leader (epoch %d) left office %s after the next leader (epoch %d) took it",
					old.epoch, oldEnd.Sub(next.began).Round(time.Millisecond), next.epoch)
			}
			c.Mend(first)
		})
	}
}

// termLog records the terms of several replicas as they begin and end.
type termLog struct {
	mu    sync.Mutex
	terms []*loggedTerm
	added chan struct{}
}

// loggedTerm is a Term that records when it began and when its context
// ended: the moment its replica left office.
type loggedTerm struct {
	epoch int64
	began time.Time
	ended chan time.Time
}

func (l *loggedTerm) Handler() http.Handler { return http.NotFoundHandler() }
func (l *loggedTerm) Run(ctx context.Context) error {
	<-ctx.Done()
	l.ended <- time.Now()
	return nil
}
func (l *loggedTerm) SetNotServing() {}

func (l *loggedTerm) waitEnd(t *testing.T, d time.Duration) time.Time {
	t.Helper()
	select {
	case at := <-l.ended:
		return at
	case <-time.After(d):
		t.Fatalf("the term of epoch %d did not end within %s", l.epoch, d)
		return time.Time{}
	}
}

func (tl *termLog) lead(_ context.Context, _ store.Store, epoch int64) (replica.Term, prometheus.Gatherer, error) {
	lt := &loggedTerm{epoch: epoch, began: time.Now(), ended: make(chan time.Time, 1)}
	tl.mu.Lock()
	tl.terms = append(tl.terms, lt)
	if tl.added == nil {
		tl.added = make(chan struct{})
	}
	close(tl.added)
	tl.added = make(chan struct{})
	tl.mu.Unlock()
	return lt, nil, nil
}

// wait returns the first term above epoch after, waiting up to d.
func (tl *termLog) wait(t *testing.T, after int64, d time.Duration) *loggedTerm {
	t.Helper()
	timeout := time.After(d)
	for {
		tl.mu.Lock()
		for _, lt := range tl.terms {
			if lt.epoch > after {
				tl.mu.Unlock()
				return lt
			}
		}
		if tl.added == nil {
			tl.added = make(chan struct{})
		}
		added := tl.added
		tl.mu.Unlock()
		select {
		case <-added:
		case <-timeout:
			t.Fatalf("no term above epoch %d began within %s", after, d)
		}
	}
}

// runCutOffReplica runs a replica on member i alone, with the default
// session TTL, until the test ends.
func runCutOffReplica(t *testing.T, c *etcdmember.Cluster, i int, terms *termLog) {
	t.Helper()
	cli, err := etcdmember.NewClient([]string{c.Members[i].ClientURL()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := replica.New(replica.Options{
		Client:  cli,
		Address: fmt.Sprintf("replica-%d:7070", i),
		Lead:    terms.lead,
	})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, r, func() { cli.Close() })
}
