package etcdmember_test

import (
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baton-run/baton/services/etcdmember"
)

// TestClientSendsWhatMembersTake: the client sends a transaction as large
// as the members take (a fire's jobs with their scripts are one), rather
// than refusing at its own default of 2 MiB.
func TestClientSendsWhatMembersTake(t *testing.T) {
	t.Parallel()
	c := etcdmember.StartTestCluster(t, 1)
	cli, err := etcdmember.NewClient(c.Endpoints(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	value := strings.Repeat("x", 1<<20)
	var ops []clientv3.Op
	for _, k := range []string{"a", "b", "c"} {
		ops = append(ops, clientv3.OpPut(k, value))
	}
	if _, err := cli.Txn(t.Context()).Then(ops...).Commit(); err != nil {
		t.Fatalf("a 3 MiB transaction: %v", err)
	}
}
