package etcdmember_test

import (
	"context"
	"testing"
	"time"

	"github.com/baton-run/baton/services/etcdmember"
)

func TestThreeMembersAgreeAndSurviveOneCut(t *testing.T) {
	c := etcdmember.StartTestCluster(t, 3)
	cli, err := etcdmember.NewClient(c.Endpoints(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := t.Context()
	if _, err := cli.Put(ctx, "k", "v1"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	lead := c.RaftLeader()
	if lead < 0 {
		t.Fatal("no raft leader")
	}
	c.Cut(lead)
	// The majority elects a new raft leader among the two left.
	deadline := time.Now().Add(20 * time.Second)
	for {
		other := -1
		for i, m := range c.Members {
			if i != lead && m.Etcd().Server.Leader() == m.Etcd().Server.MemberID() {
				other = i
			}
		}
		if other >= 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the majority elected no leader after the cut")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Mend(lead)
}

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}
