package replica_test

import (
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// TestFailover strikes the leader while every replica's term writes to
// the store, and checks that another replica takes office at a higher
// epoch, that the old term can no longer write, and that the store's
// history never has a write of the old epoch after one of the new.
func TestFailover(t *testing.T) {
	tests := []struct {
		name string
		ttl  time.Duration
		// raftLeader places raft's leadership on the leader's own member
		// when the fault strikes, or elsewhere.
		raftLeader bool
		// within bounds the wait for the next leader.
		within time.Duration
		fault  func(c *cluster, t *testing.T, old *node)
		// heal, when set, undoes the fault once the next leader writes.
		heal func(t *testing.T, c *cluster, old, leader *node, tm tenure)
	}{
		{
			name:   "crash",
			ttl:    time.Second,
			within: 20 * time.Second,
			fault:  (*cluster).crash,
		},
		{
			name:       "crash with raft's leader",
			ttl:        time.Second,
			raftLeader: true,
			within:     20 * time.Second,
			fault:      (*cluster).crash,
		},
		{
			name:   "partition",
			ttl:    time.Second,
			within: 20 * time.Second,
			fault:  func(c *cluster, t *testing.T, old *node) { c.etcd.Cut(old.i) },
			heal:   mendAndFollow,
		},
		{
			name:       "partition with raft's leader",
			ttl:        time.Second,
			raftLeader: true,
			within:     20 * time.Second,
			fault:      func(c *cluster, t *testing.T, old *node) { c.etcd.Cut(old.i) },
			heal:       mendAndFollow,
		},
		{
			// The cluster ends the leader's lease while the leader, slow
			// or paused, still believes it holds it: its lease would be
			// renewed for long after the wait, so only its key's loss
			// (a refused write, the next leader observed) ends its term.
			name:   "lease lost unnoticed",
			ttl:    30 * time.Second,
			within: 5 * time.Second,
			fault:  (*cluster).revoke,
		},
		{
			// The lease outlives the wait many times over: only a
			// resignation lets the next leader in that soon.
			name:   "resign",
			ttl:    10 * time.Second,
			within: 5 * time.Second,
			fault:  (*cluster).stop,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, tt.ttl)
			var raftLead int
			waitFor(t, "a raft leader", 10*time.Second, func() bool {
				raftLead = c.etcd.RaftLeader()
				return raftLead >= 0
			})
			first := raftLead
			if !tt.raftLeader {
				first = (raftLead + 1) % len(c.nodes)
			}
			c.start(t, first)
			old, oldTerm := c.waitLeader(t, 0, 20*time.Second)
			for _, n := range c.nodes {
				if n != old {
					c.start(t, n.i)
				}
			}
			c.waitAcked(t, oldTerm.epoch, 20)
			c.placeRaftLeader(t, old.i, tt.raftLeader)

			left := outOfOffice(t, old)
			struck := time.Now()
			tt.fault(c, t, old)
			leader, newTerm := c.waitLeader(t, oldTerm.epoch, tt.within)
			var leftAt time.Time
			select {
			case leftAt = <-left:
			case <-time.After(tt.within):
				t.Fatalf("replica %d still leads at epoch %d %s after the fault", old.i, oldTerm.epoch, tt.within)
			}
			t.Logf("after the fault, replica %d (epoch %d) left office in %s, replica %d (epoch %d) took office in %s",
				old.i, oldTerm.epoch, leftAt.Sub(struck).Round(time.Millisecond),
				leader.i, newTerm.epoch, newTerm.began.Sub(struck).Round(time.Millisecond))
			c.waitAcked(t, newTerm.epoch, 20)
			c.staleWrite(t, leader, oldTerm, staleSeq)
			if tt.heal != nil {
				tt.heal(t, c, old, leader, newTerm)
			}
			if c.etcd.Members[old.i] != nil {
				// The deposed leader's own member, which may have been
				// cut off when the term changed, refuses it as well.
				c.staleWrite(t, old, oldTerm, staleSeq+1)
			}

			for _, n := range c.nodes {
				if n.running() {
					c.stop(t, n)
				}
			}
			c.checkHistory(t, leader.cli)
		})
	}
}

// revoke ends the lease of old's term behind its back, as the cluster
// does when it has not heard from a leader for the lease's TTL.
func (c *cluster) revoke(t *testing.T, old *node) {
	t.Helper()
	_, epoch, _ := old.r.Leader()
	tm, ok := c.hist.tenure(epoch)
	if !ok {
		t.Fatalf("replica %d leads at epoch %d, but no term began at that epoch", old.i, epoch)
	}
	other := c.nodes[(old.i+1)%len(c.nodes)]
	if _, err := other.cli.Revoke(t.Context(), tm.lease); err != nil {
		t.Fatalf("revoking the lease of epoch %d: %v", epoch, err)
	}
}

// mendAndFollow heals the old leader's partition and waits until it
// follows the leader the majority elected meanwhile.
func mendAndFollow(t *testing.T, c *cluster, old, leader *node, tm tenure) {
	t.Helper()
	c.etcd.Mend(old.i)
	waitFor(t, "the old leader following the new one", 20*time.Second, func() bool {
		addr, epoch, self := old.r.Leader()
		return !self && addr == leader.addr && epoch == tm.epoch
	})
	// Following includes standing again: a campaign of a new session,
	// ready to take over when the leader goes.
	waitFor(t, "the old leader campaigning again", 20*time.Second, func() bool {
		resp, err := leader.cli.Get(t.Context(), electionPrefix, clientv3.WithPrefix())
		if err != nil {
			return false
		}
		for _, kv := range resp.Kvs {
			if string(kv.Value) == old.addr && kv.CreateRevision > tm.epoch {
				return true
			}
		}
		return false
	})
	if _, epoch, self := leader.r.Leader(); !self || epoch != tm.epoch {
		t.Errorf("after the partition healed, the leader of epoch %d no longer leads (epoch %d, leading %t)", tm.epoch, epoch, self)
	}
}

// TestStaleTermWritesNothing opens a store with a term that is over, as
// a deposed leader still holding it would, and checks that every kind of
// write is refused with ErrFenced and changes nothing.
func TestStaleTermWritesNothing(t *testing.T) {
	c := newCluster(t, 10*time.Second)
	old := c.start(t, 0)
	_, oldTerm := c.waitLeader(t, 0, 20*time.Second)
	c.start(t, 1)
	c.start(t, 2)
	c.waitAcked(t, oldTerm.epoch, 5)
	// Each case changes its own job of the old term, so that one write
	// let through does not make the next case fail.
	existing := func(seq int64) string { return recordID(oldTerm.epoch, seq) }

	c.stop(t, old)
	leader, newTerm := c.waitLeader(t, oldTerm.epoch, 20*time.Second)
	c.waitAcked(t, newTerm.epoch, 5)

	ctx := t.Context()
	stale, err := store.OpenEtcd(ctx, old.cli, store.EtcdOptions{Fence: &store.Fence{Key: oldTerm.key, Term: oldTerm.epoch}})
	if err != nil {
		// A store may check its fence when opened; it must say why.
		if !errors.Is(err, store.ErrFenced) {
			t.Fatalf("opening a store fenced by the term that is over: %v", err)
		}
		return
	}
	defer stale.Close()
	current, err := store.OpenEtcd(ctx, leader.cli, store.EtcdOptions{Fence: &store.Fence{Key: newTerm.key, Term: newTerm.epoch}})
	if err != nil {
		t.Fatal(err)
	}
	defer current.Close()
	reader, err := store.OpenEtcd(ctx, leader.cli, store.EtcdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()

	// unchanged checks that a job written in the old term is as it was.
	unchanged := func(id string) func(t *testing.T) {
		return func(t *testing.T) {
			t.Helper()
			j, err := reader.GetJob(ctx, id)
			if err != nil {
				t.Fatalf("job %s of the old term: %v", id, err)
			}
			if got := j.Status.GetState(); got != batonv1.JobState_JOB_STATE_RUNNING || j.StopRequestedBy != "" {
				t.Errorf("job %s of the old term changed: state %s, stop requested by %q", id, got, j.StopRequestedBy)
			}
		}
	}
	tests := []struct {
		name  string
		write func(st store.Store) error
		check func(t *testing.T)
	}{
		{
			name: "create a job",
			write: func(st store.Store) error {
				return st.CreateJob(ctx, newRecord(recordID(oldTerm.epoch, staleSeq), old.i))
			},
			check: func(t *testing.T) {
				if _, err := reader.GetJob(ctx, recordID(oldTerm.epoch, staleSeq)); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("the refused job: %v, want %v", err, store.ErrNotFound)
				}
			},
		},
		{
			name: "register a worker",
			write: func(st store.Store) error {
				return st.UpsertWorker(ctx, store.Worker{ID: "stale-worker", Name: "stale-worker", State: batonv1.WorkerState_WORKER_STATE_READY})
			},
			check: func(t *testing.T) {
				if _, err := reader.GetWorker(ctx, "stale-worker"); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("the refused worker: %v, want %v", err, store.ErrNotFound)
				}
			},
		},
		{
			name: "end a job",
			write: func(st store.Store) error {
				return st.UpdateJobStatus(ctx, existing(1), &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_SUCCEEDED})
			},
			check: unchanged(existing(1)),
		},
		{
			name:  "stop a job",
			write: func(st store.Store) error { return st.RequestStop(ctx, existing(2), "stale-leader") },
			check: unchanged(existing(2)),
		},
		{
			name:  "delete a job",
			write: func(st store.Store) error { return st.DeleteJob(ctx, existing(3)) },
			check: unchanged(existing(3)),
		},
		{
			name: "mark a worker's jobs lost",
			write: func(st store.Store) error {
				_, err := st.MarkWorkerJobsLost(ctx, "w1", "stale leader", time.Now())
				return err
			},
			// Last: it would change every job of the old term.
			check: unchanged(existing(4)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.write(stale); !errors.Is(err, store.ErrFenced) {
				t.Errorf("through a store of epoch %d, after epoch %d began: %v, want %v", oldTerm.epoch, newTerm.epoch, err, store.ErrFenced)
			}
			tt.check(t)
		})
	}

	// The fence refuses the old term, not every fenced write: the same
	// write as the current term lands.
	id := recordID(newTerm.epoch, staleSeq)
	w := write{node: leader.i, epoch: newTerm.epoch, seq: staleSeq, id: id, err: current.CreateJob(ctx, newRecord(id, leader.i))}
	c.hist.record(w)
	if w.err != nil {
		t.Errorf("a write of the current epoch %d: %v", newTerm.epoch, w.err)
	}

	for _, n := range c.nodes {
		if n.running() {
			c.stop(t, n)
		}
	}
	c.checkHistory(t, leader.cli)
}
