package replica_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baton-run/baton/services/etcdmember"
	"github.com/baton-run/baton/services/replica"
	"github.com/baton-run/baton/services/scheduler/store"
)

// term is a Term that works until its context ends.
type term struct{ ended chan struct{} }

func (t *term) Handler() http.Handler { return http.NotFoundHandler() }
func (t *term) Run(ctx context.Context) error {
	<-ctx.Done()
	close(t.ended)
	return nil
}
func (t *term) SetNotServing() {}

// led is one term as Lead saw it begin.
type led struct {
	st    store.Store
	epoch int64
	term  *term
}

// startReplica runs a replica on a one-member cluster until the test
// ends, and returns the cluster's client and the terms it begins, in order.
func startReplica(t *testing.T) (*clientv3.Client, func() led) {
	t.Helper()
	c := etcdmember.StartTestCluster(t, 1)
	cli, err := etcdmember.NewClient(c.Endpoints(), nil)
	if err != nil {
		t.Fatal(err)
	}
	terms := make(chan led, 4)
	r, err := replica.New(replica.Options{
		Client:  cli,
		Address: "127.0.0.1:7070",
		Lead: func(ctx context.Context, st store.Store, epoch int64) (replica.Term, prometheus.Gatherer, error) {
			tm := &term{ended: make(chan struct{})}
			terms <- led{st, epoch, tm}
			return tm, nil, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, r, func() { cli.Close() })
	return cli, func() led {
		t.Helper()
		select {
		case l := <-terms:
			return l
		case <-time.After(30 * time.Second):
			t.Fatal("no term began")
			return led{}
		}
	}
}

// ended waits for the end of l's term.
func ended(t *testing.T, l led, why string) {
	t.Helper()
	select {
	case <-l.term.ended:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not end the term", why)
	}
}

// TestFencedWriteEndsTheTerm: a write the store refuses for a stale term
// makes the replica leave office at once, and campaign again, rather than
// lead on with a store that refuses every write.
func TestFencedWriteEndsTheTerm(t *testing.T) {
	cli, next := startReplica(t)
	first := next()
	// The leader key goes while the session lives on: only the store's
	// fence can tell the replica that its term is over.
	if _, err := cli.Delete(t.Context(), replica.DefaultPrefix+"leader/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	if err := first.st.UpsertWorker(t.Context(), store.Worker{ID: "w1", Name: "alpha"}); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("a write of the first term after its key went = %v, want ErrFenced", err)
	}
	ended(t, first, "the fenced write")
	if second := next(); second.epoch <= first.epoch {
		t.Errorf("the next term's epoch is %d, want above %d", second.epoch, first.epoch)
	}
}

// TestLostSessionCampaignsAgain: a replica whose lease is gone (expired
// while etcd was out of reach) leaves office, and campaigns again with a
// new session: it does not stay a follower for good.
func TestLostSessionCampaignsAgain(t *testing.T) {
	cli, next := startReplica(t)
	first := next()
	resp, err := cli.Get(t.Context(), replica.DefaultPrefix+"leader/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the leader key: %v, %v", resp, err)
	}
	if _, err := cli.Revoke(t.Context(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	ended(t, first, "the lost session")
	if second := next(); second.epoch <= first.epoch {
		t.Errorf("the next term's epoch is %d, want above %d", second.epoch, first.epoch)
	}
}
