package store

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The etcd change feed is a watch on the job records, jobs/<id>, and
// nothing else under the prefix: no index key, script or other record
// starts with "jobs/". A change's Rev is the etcd revision of its write,
// shared by the jobs one transaction wrote; etcd keeps every revision
// until the cluster compacts its history.

// jobsPrefix is the key prefix of the job records.
func (e *Etcd) jobsPrefix() string { return e.jobKey("") }

// JobsRev implements [Feed]: the cluster's current revision, read
// linearizably.
func (e *Etcd) JobsRev(ctx context.Context) (int64, error) {
	resp, err := e.get(ctx, e.p+"schema", 0)
	if err != nil {
		return 0, fmt.Errorf("jobs rev: %w", err)
	}
	return resp.Header.Revision, nil
}

// Changes implements [Feed]. It fails with ErrCompacted when the cluster
// compacted its history past after, and with ErrUnavailable when the watch
// is cut off (no leader, the client closed).
func (e *Etcd) Changes(ctx context.Context, after int64, fn func(Change) error) error {
	if e.closed.Load() {
		return errEtcdClosed
	}
	if after < 0 {
		after = 0
	}
	// Ending the watch's context releases it when fn fails; a watch that
	// requires a leader ends, rather than waits, when its member is cut
	// off from the cluster.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := e.cli.Watch(wctx, e.jobsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(after+1))
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("job changes after %d: etcd compacted its history up to %d: %w", after, resp.CompactRevision, ErrCompacted)
		}
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return fmt.Errorf("job changes after %d: %w: %v", after, ErrCompacted, err)
			}
			return fmt.Errorf("job changes after %d: %w", after, etcdError(ctx, err))
		}
		for _, ev := range resp.Events {
			c, err := e.change(ev)
			if err != nil {
				return fmt.Errorf("job changes after %d: %w", after, err)
			}
			if err := fn(c); err != nil {
				return err
			}
			after = c.Rev
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: job changes after %d: the watch ended", ErrUnavailable, after)
}

// change is the feed's change for ev, a write of a job record.
func (e *Etcd) change(ev *clientv3.Event) (Change, error) {
	kv := ev.Kv
	id := string(kv.Key[len(e.jobsPrefix()):])
	if ev.Type == clientv3.EventTypeDelete {
		return Change{Rev: kv.ModRevision, JobID: id, Deleted: true}, nil
	}
	j, err := decodeJob(kv.Value)
	if err != nil {
		return Change{}, err
	}
	return Change{Rev: kv.ModRevision, JobID: id, Job: j.public()}, nil
}
