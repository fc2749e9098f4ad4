package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An etcd write is an optimistic transaction: its reads all happen at one
// revision and are recorded with the ModRevision they saw (0 for a key
// that was absent), its writes are buffered, and the commit applies the
// writes only if every key read is unchanged, and, when the store is
// fenced, the fence key is still the one created at the store's term. A
// failed read check runs the transaction again from fresh reads; a failed
// fence fails it with ErrFenced. concurrency.STM is not used: its read
// check misses a key deleted since it was read.

const (
	// maxTxnAttempts bounds how often a transaction is run again after
	// another writer changed what it read.
	maxTxnAttempts = 16
	// opTimeout bounds each request to etcd, so that an unreachable
	// cluster fails a call with ErrUnavailable rather than hanging it.
	opTimeout = 5 * time.Second
	// maxTxnOps is etcd's default limit on the operations of one
	// transaction (--max-txn-ops): batched writes stay well within it.
	maxTxnOps = 128
	// maxTxnBytes bounds the values batched writes put in one
	// transaction, below etcd's default request limit
	// (--max-request-bytes, 1.5 MiB) and its client's (2 MiB).
	maxTxnBytes = 1 << 20
)

// errEtcdClosed fails the calls made after Close. A replica closes its
// store when it leaves office, maybe with calls still in flight: their
// callers should try again, at the new leader.
var errEtcdClosed = fmt.Errorf("%w: the store is closed", ErrUnavailable)

// etx is one run of an optimistic transaction. It is used by one
// goroutine.
type etx struct {
	e   *Etcd
	ctx context.Context
	// rev is the revision every read is made at; 0 until the first read.
	rev int64
	// reads maps each key read to its ModRevision then (0: absent).
	reads map[string]int64
	// ranges holds the [start, end) ranges read: no key in them may be
	// created or changed after rev.
	ranges [][2]string
	// writes maps each key written to its new value; nil deletes it.
	writes map[string]*string
}

// update runs fn in an optimistic transaction and commits what it wrote.
// fn may run several times; it must not keep tx, and its effects outside
// tx must be redone by each run. fn's error aborts the transaction
// (nothing is written) and is returned.
func (e *Etcd) update(ctx context.Context, fn func(tx *etx) error) error {
	if e.closed.Load() {
		return errEtcdClosed
	}
	for attempt := range maxTxnAttempts {
		tx := &etx{e: e, ctx: ctx, reads: make(map[string]int64), writes: make(map[string]*string)}
		if err := fn(tx); err != nil {
			return err
		}
		ok, err := tx.commit()
		if err != nil || ok {
			return err
		}
		// Another writer got there first: read again, after a pause that
		// keeps two writers from colliding in step.
		wait := time.Duration(rand.IntN(1<<min(attempt, 6))+1) * time.Millisecond
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	return fmt.Errorf("%w: other writers kept changing what the transaction read", ErrUnavailable)
}

// view runs fn over reads at one revision, and writes nothing.
func (e *Etcd) view(ctx context.Context, fn func(tx *etx) error) error {
	if e.closed.Load() {
		return errEtcdClosed
	}
	return fn(&etx{e: e, ctx: ctx, reads: make(map[string]int64), writes: make(map[string]*string)})
}

// get reads key, as the transaction's own writes left it.
func (tx *etx) get(key string) ([]byte, bool, error) {
	if v, ok := tx.writes[key]; ok {
		if v == nil {
			return nil, false, nil
		}
		return []byte(*v), true, nil
	}
	resp, err := tx.e.get(tx.ctx, key, tx.rev)
	if err != nil {
		return nil, false, err
	}
	if tx.rev == 0 {
		tx.rev = resp.Header.Revision
	}
	if len(resp.Kvs) == 0 {
		tx.reads[key] = 0
		return nil, false, nil
	}
	kv := resp.Kvs[0]
	tx.reads[key] = kv.ModRevision
	return kv.Value, true, nil
}

// getMany reads keys, as the transaction's own writes left them: the
// value of each, nil for one absent.
func (tx *etx) getMany(keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	var fetch []int
	for i, k := range keys {
		if v, ok := tx.writes[k]; ok {
			if v != nil {
				out[i] = []byte(*v)
			}
			continue
		}
		fetch = append(fetch, i)
	}
	for len(fetch) > 0 {
		n := min(len(fetch), maxTxnOps)
		part := fetch[:n]
		fetch = fetch[n:]
		if tx.rev == 0 {
			// The first read fixes the revision the rest are made at.
			if _, _, err := tx.get(keys[part[0]]); err != nil {
				return nil, err
			}
		}
		ops := make([]clientv3.Op, len(part))
		for j, i := range part {
			ops[j] = clientv3.OpGet(keys[i], clientv3.WithRev(tx.rev))
		}
		resp, err := tx.e.do(tx.ctx, clientv3.OpTxn(nil, ops, nil))
		if err != nil {
			return nil, err
		}
		for j, r := range resp.Txn().Responses {
			i := part[j]
			kvs := r.GetResponseRange().GetKvs()
			if len(kvs) == 0 {
				tx.reads[keys[i]] = 0
				continue
			}
			tx.reads[keys[i]] = kvs[0].ModRevision
			out[i] = kvs[0].Value
		}
	}
	return out, nil
}

// scan reads the keys in [start, end), ascending (or descending), at most
// limit of them (0: all). The transaction's own writes are not seen: a
// caller that both writes and scans a range accounts for its writes
// itself. A key created or changed in the range before the commit fails
// the commit's check; one deleted does not.
func (tx *etx) scan(start, end string, limit int64, descending, keysOnly bool) ([]kv, error) {
	opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(limit)}
	if descending {
		opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	}
	if keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if tx.rev != 0 {
		opts = append(opts, clientv3.WithRev(tx.rev))
	}
	resp, err := tx.e.do(tx.ctx, clientv3.OpGet(start, opts...))
	if err != nil {
		return nil, err
	}
	r := resp.Get()
	if tx.rev == 0 {
		tx.rev = r.Header.Revision
	}
	tx.ranges = append(tx.ranges, [2]string{start, end})
	out := make([]kv, len(r.Kvs))
	for i, k := range r.Kvs {
		out[i] = kv{key: string(k.Key), value: k.Value}
	}
	return out, nil
}

// count counts the keys in [start, end), checked like scan.
func (tx *etx) count(start, end string) (int64, error) {
	opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithCountOnly()}
	if tx.rev != 0 {
		opts = append(opts, clientv3.WithRev(tx.rev))
	}
	resp, err := tx.e.do(tx.ctx, clientv3.OpGet(start, opts...))
	if err != nil {
		return 0, err
	}
	r := resp.Get()
	if tx.rev == 0 {
		tx.rev = r.Header.Revision
	}
	tx.ranges = append(tx.ranges, [2]string{start, end})
	return r.Count, nil
}

func (tx *etx) put(key string, value []byte) {
	v := string(value)
	tx.writes[key] = &v
}

func (tx *etx) del(key string) { tx.writes[key] = nil }

// size is the bytes of the keys and values the transaction writes.
func (tx *etx) size() int {
	n := 0
	for k, v := range tx.writes {
		n += len(k)
		if v != nil {
			n += len(*v)
		}
	}
	return n
}

// commit applies the buffered writes if nothing read has changed since.
// It reports false, writing nothing, when something has. A fenced
// transaction that writes nothing is checked all the same: its caller
// acts on what it decided (a stop delivered to a worker) only while its
// term holds.
func (tx *etx) commit() (bool, error) {
	if len(tx.writes) == 0 && tx.e.fence == nil {
		return true, nil
	}
	cmps := make([]clientv3.Cmp, 0, len(tx.reads)+len(tx.ranges)+1)
	for k, rev := range tx.reads {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
	}
	for _, r := range tx.ranges {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(r[0]), "<", tx.rev+1).WithRange(r[1]))
	}
	f := tx.e.fence
	if f != nil {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Term))
	}
	keys := make([]string, 0, len(tx.writes))
	for k := range tx.writes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	ops := make([]clientv3.Op, 0, len(keys))
	for _, k := range keys {
		if v := tx.writes[k]; v != nil {
			ops = append(ops, clientv3.OpPut(k, *v))
		} else {
			ops = append(ops, clientv3.OpDelete(k))
		}
	}
	txn := clientv3.OpTxn(cmps, ops, nil)
	if f != nil {
		txn = clientv3.OpTxn(cmps, ops, []clientv3.Op{clientv3.OpGet(f.Key)})
	}
	resp, err := tx.e.do(tx.ctx, txn)
	if err != nil {
		return false, err
	}
	r := resp.Txn()
	if r.Succeeded {
		return true, nil
	}
	if f != nil {
		var created int64
		if rs := r.Responses; len(rs) == 1 && len(rs[0].GetResponseRange().GetKvs()) == 1 {
			created = rs[0].GetResponseRange().GetKvs()[0].CreateRevision
		}
		if created != f.Term {
			if f.Fenced != nil {
				f.Fenced()
			}
			return false, fmt.Errorf("this store's term is %d, and the fence key %q is at %d: %w", f.Term, f.Key, created, ErrFenced)
		}
	}
	return false, nil
}

// kv is one key read by a scan.
type kv struct {
	key   string
	value []byte
}

// get reads key at rev (0: the newest).
func (e *Etcd) get(ctx context.Context, key string, rev int64) (*clientv3.GetResponse, error) {
	var opts []clientv3.OpOption
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := e.do(ctx, clientv3.OpGet(key, opts...))
	if err != nil {
		return nil, err
	}
	return resp.Get(), nil
}

// do runs op with the store's request timeout.
func (e *Etcd) do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	if e.closed.Load() {
		return clientv3.OpResponse{}, errEtcdClosed
	}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := e.cli.Do(octx, op)
	if err != nil {
		return resp, etcdError(ctx, err)
	}
	return resp, nil
}

// etcdError marks err as ErrUnavailable when etcd failed for a reason of
// the moment (no leader, no quorum, a timeout, a full quota) rather than
// of the request. The caller's own cancellation stays what it is.
func etcdError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, rpctypes.ErrNoLeader),
		errors.Is(err, rpctypes.ErrTimeout),
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost),
		errors.Is(err, rpctypes.ErrLeaderChanged),
		errors.Is(err, rpctypes.ErrNoSpace),
		errors.Is(err, rpctypes.ErrTooManyRequests):
		return fmt.Errorf("%w: etcd: %v", ErrUnavailable, err)
	}
	if errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) {
		return fmt.Errorf("%w: etcd refused it for its limits (--max-txn-ops, --max-request-bytes): %w", ErrTooLarge, err)
	}
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
		return fmt.Errorf("%w: etcd: %v", ErrUnavailable, err)
	case codes.ResourceExhausted:
		// etcd's own (a full quota, too many requests) are above: this is
		// gRPC refusing a message larger than its limit, which no retry
		// makes smaller.
		return fmt.Errorf("%w: etcd refused a request above its size limit: %w", ErrTooLarge, err)
	}
	return fmt.Errorf("etcd: %w", err)
}
