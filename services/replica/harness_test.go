package replica_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/etcdmember"
	"github.com/baton-run/baton/services/replica"
	"github.com/baton-run/baton/services/scheduler/store"
)

// electionPrefix is where the replicas' election keys live under the
// default prefix.
const electionPrefix = replica.DefaultPrefix + "leader/"

// cluster is three replicas, each with its own member of a three-member
// etcd cluster and a client that reaches that member alone, as replicas
// in the embedded mode run.
type cluster struct {
	etcd  *etcdmember.Cluster
	nodes []*node
	hist  *history
}

// node is one replica and the client of its member.
type node struct {
	i    int
	addr string
	cli  *clientv3.Client
	r    *replica.Replica
	// stop ends Run; done is closed when it has returned. Both are nil
	// until start.
	stop context.CancelFunc
	done chan struct{}
}

// newCluster starts the etcd members and prepares a replica on each,
// with leases of ttl; start runs them.
func newCluster(t *testing.T, ttl time.Duration) *cluster {
	t.Helper()
	c := &cluster{etcd: etcdmember.StartTestCluster(t, 3), hist: &history{}}
	for i, m := range c.etcd.Members {
		cli, err := m.Client(nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cli.Close() })
		n := &node{i: i, addr: fmt.Sprintf("replica%d.test:7443", i), cli: cli}
		n.r, err = replica.New(replica.Options{
			Client:     cli,
			Address:    n.addr,
			SessionTTL: ttl,
			Lead:       c.lead(n),
			Logger:     slog.New(slog.NewTextHandler(t.Output(), nil)).With("replica", i),
		})
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, n)
	}
	return c
}

// lead starts a term of n that writes continuously.
func (c *cluster) lead(n *node) replica.Lead {
	return func(ctx context.Context, st store.Store, epoch int64) (replica.Term, prometheus.Gatherer, error) {
		key, lease, err := leaderKey(ctx, n.cli, epoch)
		if err != nil {
			return nil, nil, err
		}
		c.hist.begin(tenure{node: n.i, epoch: epoch, key: key, lease: lease, began: time.Now()})
		return &writingTerm{hist: c.hist, node: n.i, epoch: epoch, st: st}, nil, nil
	}
}

// leaderKey is the election key whose creation made epoch, and the lease
// that holds it.
func leaderKey(ctx context.Context, cli *clientv3.Client, epoch int64) (string, clientv3.LeaseID, error) {
	resp, err := cli.Get(ctx, electionPrefix, clientv3.WithPrefix())
	if err != nil {
		return "", 0, err
	}
	for _, kv := range resp.Kvs {
		if kv.CreateRevision == epoch {
			return string(kv.Key), clientv3.LeaseID(kv.Lease), nil
		}
	}
	return "", 0, fmt.Errorf("no election key was created at revision %d: the term is already over", epoch)
}

// start runs replica i until the test ends or stop.
func (c *cluster) start(t *testing.T, i int) *node {
	t.Helper()
	n := c.nodes[i]
	ctx, cancel := context.WithCancel(context.Background())
	n.stop, n.done = cancel, make(chan struct{})
	go func() {
		defer close(n.done)
		_ = n.r.Run(ctx)
	}()
	t.Cleanup(func() { c.stop(t, n) })
	return n
}

// stop ends replica n's Run and waits for it: a leader resigns.
func (c *cluster) stop(t *testing.T, n *node) {
	t.Helper()
	n.stop()
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		t.Errorf("replica %d: Run did not return 10s after its context ended", n.i)
	}
}

// running reports whether n's Run has started and not returned.
func (n *node) running() bool {
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// crash ends replica n as the death of its process would: its member
// stops with no leadership handed over and its client goes, so that it
// can neither resign nor renew its lease, then Run is ended.
func (c *cluster) crash(t *testing.T, n *node) {
	t.Helper()
	m := c.etcd.Members[n.i]
	m.Etcd().Server.HardStop()
	_ = n.cli.Close()
	c.stop(t, n)
	// Closing a stopped member frees its listeners; it may wait for a
	// leadership transfer that cannot happen, so it runs beside the test.
	c.etcd.Members[n.i] = nil
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		m.Close()
	}()
	t.Cleanup(func() { <-closed })
}

// placeRaftLeader makes member i raft's leader (want) or one of its
// followers (!want), moving raft's leadership if needed.
func (c *cluster) placeRaftLeader(t *testing.T, i int, want bool) {
	t.Helper()
	var lead int
	waitFor(t, "a raft leader", 10*time.Second, func() bool {
		lead = c.etcd.RaftLeader()
		return lead >= 0
	})
	if (lead == i) == want {
		return
	}
	target := i
	if !want {
		target = (i + 1) % len(c.etcd.Members)
	}
	from := c.etcd.Members[lead].Etcd().Server
	to := c.etcd.Members[target].Etcd().Server
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := from.MoveLeader(ctx, uint64(from.MemberID()), uint64(to.MemberID())); err != nil {
		t.Fatalf("moving raft's leadership from member %d to %d: %v", lead, target, err)
	}
	waitFor(t, fmt.Sprintf("member %d leading raft", target), 10*time.Second, func() bool {
		return c.etcd.RaftLeader() == target
	})
}

// waitLeader waits until a running replica leads with an epoch above
// after, and returns it with its term.
func (c *cluster) waitLeader(t *testing.T, after int64, within time.Duration) (*node, tenure) {
	t.Helper()
	var got *node
	var epoch int64
	waitFor(t, fmt.Sprintf("a leader with an epoch above %d", after), within, func() bool {
		for _, n := range c.nodes {
			if !n.running() {
				continue
			}
			if _, e, self := n.r.Leader(); self && e > after {
				got, epoch = n, e
				return true
			}
		}
		return false
	})
	tm, ok := c.hist.tenure(epoch)
	if !ok {
		t.Fatalf("replica %d leads at epoch %d, but no term began at that epoch", got.i, epoch)
	}
	return got, tm
}

// outOfOffice sends the time n is first seen not leading, polled from
// now on.
func outOfOffice(t *testing.T, n *node) <-chan time.Time {
	out := make(chan time.Time, 1)
	go func() {
		for {
			if _, _, self := n.r.Leader(); !self {
				out <- time.Now()
				return
			}
			select {
			case <-t.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return out
}

// waitAcked waits until n writes of epoch have been acknowledged.
func (c *cluster) waitAcked(t *testing.T, epoch int64, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d acknowledged writes of epoch %d", n, epoch), 20*time.Second, func() bool {
		return c.hist.acked(epoch) >= n
	})
}

// staleWrite writes record seq as the term old through a store fenced by
// it, opened now on via's member, and fails the test unless the store
// refuses it.
func (c *cluster) staleWrite(t *testing.T, via *node, old tenure, seq int64) {
	t.Helper()
	w := write{node: via.i, epoch: old.epoch, seq: seq, id: recordID(old.epoch, seq)}
	st, err := store.OpenEtcd(t.Context(), via.cli, store.EtcdOptions{Fence: &store.Fence{Key: old.key, Term: old.epoch}})
	if err == nil {
		w.err = st.CreateJob(t.Context(), newRecord(w.id, via.i))
		st.Close()
	} else {
		w.err = err
	}
	c.hist.record(w)
	if !errors.Is(w.err, store.ErrFenced) {
		t.Errorf("a write of epoch %d through replica %d's member after a newer term began: %v, want %v", old.epoch, via.i, w.err, store.ErrFenced)
	}
}

// staleSeq numbers the first write made as a term that is over.
const staleSeq = 1_000_000

// writingTerm writes one record after another through its fenced store
// until its term ends, and records each write's outcome.
// The replica's store tells it of a refused write itself: the term does
// not.
type writingTerm struct {
	hist  *history
	node  int
	epoch int64
	st    store.Store
}

func (w *writingTerm) Handler() http.Handler {
	_, h := batonv1connect.NewSchedulerServiceHandler(leaderService{})
	return h
}

func (w *writingTerm) SetNotServing() {}

func (w *writingTerm) Run(ctx context.Context) error {
	for seq := int64(1); ; seq++ {
		id := recordID(w.epoch, seq)
		err := w.st.CreateJob(ctx, newRecord(id, w.node))
		w.hist.record(write{node: w.node, epoch: w.epoch, seq: seq, id: id, err: err})
		// A short pause keeps the history small enough to read back
		// whole; a longer one after a failure keeps a term that cannot
		// write from spinning.
		pause := 2 * time.Millisecond
		if err != nil {
			pause = 20 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pause):
		}
	}
}

// leaderService is the API of a term: enough to tell it from a follower.
type leaderService struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
}

func (leaderService) ListWorkers(context.Context, *connect.Request[batonv1.ListWorkersRequest]) (*connect.Response[batonv1.ListWorkersResponse], error) {
	return connect.NewResponse(&batonv1.ListWorkersResponse{}), nil
}

// recordID names the seq-th write of epoch; recordPattern finds the name
// in a key or value of the store, whatever its layout.
func recordID(epoch, seq int64) string { return fmt.Sprintf("fault-e%d-s%d", epoch, seq) }

var recordPattern = regexp.MustCompile(`fault-e([0-9]+)-s([0-9]+)`)

// newRecord is the job written as record id by replica node.
func newRecord(id string, node int) store.Job {
	return store.Job{
		ID:        id,
		WorkerID:  "w1",
		Owner:     fmt.Sprintf("replica%d", node),
		CreatedAt: time.Now(),
		Status:    &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING},
	}
}

// tenure is one replica's time in office, as its Lead saw it begin.
type tenure struct {
	node  int
	epoch int64
	key   string
	lease clientv3.LeaseID
	began time.Time
}

// write is one write of a term and its outcome: nil (acknowledged),
// ErrFenced (refused: it must not have landed), or another error (its
// fate unknown).
type write struct {
	node       int
	epoch, seq int64
	id         string
	err        error
}

// history records the terms and every write they made. It is safe for
// concurrent use.
type history struct {
	mu     sync.Mutex
	terms  []tenure
	writes []write
}

func (h *history) begin(tm tenure) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.terms = append(h.terms, tm)
}

func (h *history) record(w write) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.writes = append(h.writes, w)
}

func (h *history) tenure(epoch int64) (tenure, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, tm := range h.terms {
		if tm.epoch == epoch {
			return tm, true
		}
	}
	return tenure{}, false
}

func (h *history) acked(epoch int64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, w := range h.writes {
		if w.epoch == epoch && w.err == nil {
			n++
		}
	}
	return n
}

func (h *history) snapshot() ([]tenure, []write) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.terms), slices.Clone(h.writes)
}

// landing is where a record is in etcd's history: the revision that
// created its first key and the last that changed any of them.
type landing struct {
	epoch         int64
	created, last int64
}

// checkHistory reads back everything under the store's prefix through
// cli and checks the recorded writes against it: every acknowledged
// write is there, no refused one is, and no record of an epoch landed
// after the first record of a newer epoch. It returns the records found.
func (c *cluster) checkHistory(t *testing.T, cli *clientv3.Client) map[string]landing {
	t.Helper()
	terms, writes := c.hist.snapshot()
	resp, err := cli.Get(t.Context(), replica.DefaultPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("reading back the store: %v", err)
	}
	landed := map[string]landing{}
	for _, kv := range resp.Kvs {
		m := recordPattern.FindSubmatch(kv.Key)
		if m == nil {
			m = recordPattern.FindSubmatch(kv.Value)
		}
		if m == nil {
			continue
		}
		id := string(m[0])
		l, ok := landed[id]
		if !ok {
			epoch, _ := strconv.ParseInt(string(m[1]), 10, 64)
			l = landing{epoch: epoch, created: kv.CreateRevision}
		}
		l.created = min(l.created, kv.CreateRevision)
		l.last = max(l.last, kv.ModRevision)
		landed[id] = l
	}

	var acked, refused, unknown int
	for _, w := range writes {
		l, ok := landed[w.id]
		switch {
		case w.err == nil:
			acked++
			if !ok {
				t.Errorf("write %s of replica %d was acknowledged but is not in the store", w.id, w.node)
			}
		case errors.Is(w.err, store.ErrFenced):
			refused++
			if ok {
				t.Errorf("write %s of replica %d was refused (%v) but landed at revision %d", w.id, w.node, w.err, l.created)
			}
		default:
			unknown++
		}
	}

	// The first revision of each epoch; every record of an older epoch
	// must have landed before it.
	first := map[int64]int64{}
	for _, l := range landed {
		if f, ok := first[l.epoch]; !ok || l.created < f {
			first[l.epoch] = l.created
		}
	}
	type late struct {
		id          string
		l           landing
		newer, from int64
	}
	var lates []late
	for id, l := range landed {
		if !slices.ContainsFunc(terms, func(tm tenure) bool { return tm.epoch == l.epoch }) {
			t.Errorf("record %s is of epoch %d, which no replica led", id, l.epoch)
		}
		for e, f := range first {
			if e > l.epoch && l.last > f {
				lates = append(lates, late{id: id, l: l, newer: e, from: f})
				break
			}
		}
	}
	slices.SortFunc(lates, func(a, b late) int { return cmp.Compare(a.l.last, b.l.last) })
	for i, x := range lates {
		if i == 5 {
			t.Errorf("... and %d more records of an epoch that was over", len(lates)-i)
			break
		}
		t.Errorf("record %s of epoch %d landed at revision %d, after the first record of the newer epoch %d (revision %d)", x.id, x.l.epoch, x.l.last, x.newer, x.from)
	}
	t.Logf("history: %d terms, %d writes (%d acknowledged, %d refused, %d failed otherwise), %d records in the store",
		len(terms), len(writes), acked, refused, unknown, len(landed))
	return landed
}

// waitFor polls cond until it holds, failing the test after within.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// runUntilCleanup runs r until the test ends; then, once Run has
// returned, it calls each of after.
func runUntilCleanup(t *testing.T, r *replica.Replica, after ...func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		for _, f := range after {
			f()
		}
	})
}
