package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// DefaultEtcdPrefix is where [OpenEtcd] keeps the store's keys unless told
// otherwise.
const DefaultEtcdPrefix = "/baton/"

// etcdSchema is the layout version of the keys below; a store that finds
// a newer one refuses to open (ErrSchemaTooNew).
const etcdSchema = 1

// Fence is the term a writer holds: every write commits only while the key
// Key exists and was created at revision Term (the election's leader key
// and its creation revision). A writer whose term has passed writes
// nothing.
type Fence struct {
	Key  string
	Term int64
	// Fenced, if set, is called when a write was refused for a stale
	// term: its writer is no longer the leader, and should stop at once.
	Fenced func()
}

// EtcdOptions configure [OpenEtcd].
type EtcdOptions struct {
	// Prefix is put before every key of the store; DefaultEtcdPrefix when
	// empty.
	Prefix string
	// Fence, when set, makes every write fail with ErrFenced, writing
	// nothing, once the term it names has passed. Without it, writes are
	// not fenced (tools, tests).
	Fence *Fence
}

// Etcd is the [Store] kept in an etcd cluster: one key per worker, job,
// group and schedule, holding its record, and index keys written in the
// same transaction as the record they point to. It is safe for concurrent
// use. Writes are optimistic transactions (see etcdtx.go); reads are
// linearizable.
//
// The layout under the prefix, where <t> is a time and <n> a number as
// sortable hex, and <s> a string escaped so that it sorts and ends
// unambiguously (see sortStr):
//
//	workers/<id>                  worker record (JSON)
//	jobs/<id>                     job record (JSON, status as protobuf)
//	scripts/<id>                  script of a job, until the job ends
//	groups/<id>                   group record (JSON)
//	schedules/<s owner><name>     schedule record (JSON)
//	schedule-ids/<id>             key of the schedule with that id
//	fires/<schedule id>           the schedule's fires kept (JSON list)
//	ix/...                        indexes, see jobIndex and groupIndex
type Etcd struct {
	cli    *clientv3.Client
	p      string
	fence  *Fence
	closed atomic.Bool
	// onJobEnd is called after a write that ended a job; see ObserveJobEnds.
	onJobEnd atomic.Pointer[func(JobEnd)]
}

var (
	_ Store          = (*Etcd)(nil)
	_ JobEndObserver = (*Etcd)(nil)
)

// OpenEtcd opens the store kept in etcd through cli, which stays the
// caller's: Close does not close it. It fails with ErrSchemaTooNew when the
// keys were laid out by a newer scheduler, and with ErrUnavailable when
// etcd cannot be reached.
func OpenEtcd(ctx context.Context, cli *clientv3.Client, opts EtcdOptions) (*Etcd, error) {
	if cli == nil {
		return nil, errors.New("open etcd store: no client given")
	}
	e := &Etcd{cli: cli, p: opts.Prefix, fence: opts.Fence}
	if e.p == "" {
		e.p = DefaultEtcdPrefix
	}
	if f := opts.Fence; f != nil {
		if f.Key == "" || f.Term <= 0 {
			return nil, errors.New("open etcd store: a fence needs a key and a positive term")
		}
		// A copy, so that the caller cannot change the term afterwards;
		// Fenced comes along, or a stale leader would never hear of it.
		e.fence = &Fence{Key: f.Key, Term: f.Term, Fenced: f.Fenced}
	}
	err := e.update(ctx, func(tx *etx) error {
		v, ok, err := tx.get(e.p + "schema")
		if err != nil {
			return err
		}
		if !ok {
			tx.put(e.p+"schema", []byte(strconv.Itoa(etcdSchema)))
			return nil
		}
		n, err := strconv.Atoi(string(v))
		if err != nil {
			return fmt.Errorf("schema version %q: %w", v, err)
		}
		if n > etcdSchema {
			return fmt.Errorf("%w: the keys under %q are at schema version %d and this scheduler knows versions up to %d; run the newer scheduler", ErrSchemaTooNew, e.p, n, etcdSchema)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open etcd store: %w", err)
	}
	return e, nil
}

// Close makes later calls fail. It does not close the client.
func (e *Etcd) Close() error {
	e.closed.Store(true)
	return nil
}

// ObserveJobEnds implements [JobEndObserver].
func (e *Etcd) ObserveJobEnds(fn func(JobEnd)) {
	e.onJobEnd.Store(&fn)
}

// jobsEnded reports jobs that ended to the observer, if any. It is called
// after the transaction committed, with no lock held.
func (e *Etcd) jobsEnded(ends ...JobEnd) {
	if fn := e.onJobEnd.Load(); fn != nil && *fn != nil {
		for _, end := range ends {
			(*fn)(end)
		}
	}
}

// Key encodings.

// sortInt encodes n so that encodings sort as the numbers do.
func sortInt(n int64) string {
	return fmt.Sprintf("%016x", uint64(n)^(1<<63))
}

// sortIntLen is the length of sortInt's encodings.
const sortIntLen = 16

// sortStr encodes s so that it ends unambiguously inside a key and
// encodings sort as the strings do: 0x00 and 0x01 are escaped, and 0x00
// ends it.
func sortStr(s string) string {
	if !strings.ContainsAny(s, "\x00\x01") {
		return s + "\x00"
	}
	var b strings.Builder
	for i := range len(s) {
		switch c := s[i]; c {
		case 0:
			b.WriteString("\x01\x01")
		case 1:
			b.WriteString("\x01\x02")
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte(0)
	return b.String()
}

// prefixEnd is the end of the range of keys that start with prefix.
func prefixEnd(prefix string) string {
	return clientv3.GetPrefixRangeEnd(prefix)
}

func (e *Etcd) workerKey(id string) string { return e.p + "workers/" + id }
func (e *Etcd) jobKey(id string) string    { return e.p + "jobs/" + id }
func (e *Etcd) scriptKey(id string) string { return e.p + "scripts/" + id }
func (e *Etcd) groupKey(id string) string  { return e.p + "groups/" + id }

// Workers.

type workerRec struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Address     string            `json:"address"`
	State       int32             `json:"state"`
	Labels      map[string]string `json:"labels,omitempty"`
	Capacity    int32             `json:"capacity"`
	RunningJobs int32             `json:"running_jobs"`
	Heartbeat   int64             `json:"last_heartbeat"`
	Registered  int64             `json:"registered_at"`
}

// UpsertWorker implements [Store].
func (e *Etcd) UpsertWorker(ctx context.Context, w Worker) error {
	if w.ID == "" {
		return errors.New("upsert worker: empty worker id")
	}
	b, err := encodeWorker(w)
	if err != nil {
		return fmt.Errorf("upsert worker %s: %w", w.ID, err)
	}
	err = e.update(ctx, func(tx *etx) error {
		tx.put(e.workerKey(w.ID), b)
		return nil
	})
	if err != nil {
		return fmt.Errorf("upsert worker %s: %w", w.ID, err)
	}
	return nil
}

func encodeWorker(w Worker) ([]byte, error) {
	return json.Marshal(workerRec{ID: w.ID, Name: w.Name, Address: w.Address, State: int32(w.State), Labels: w.Labels,
		Capacity: w.Capacity, RunningJobs: w.RunningJobs, Heartbeat: unixNano(w.LastHeartbeat), Registered: unixNano(w.RegisteredAt)})
}

func decodeWorker(b []byte) (Worker, error) {
	var r workerRec
	if err := json.Unmarshal(b, &r); err != nil {
		return Worker{}, fmt.Errorf("decode worker: %w", err)
	}
	w := Worker{ID: r.ID, Name: r.Name, Address: r.Address, State: batonv1.WorkerState(r.State), Labels: r.Labels,
		Capacity: r.Capacity, RunningJobs: r.RunningJobs, LastHeartbeat: fromUnixNano(r.Heartbeat), RegisteredAt: fromUnixNano(r.Registered)}
	if len(w.Labels) == 0 {
		w.Labels = nil
	}
	return w, nil
}

// GetWorker implements [Store].
func (e *Etcd) GetWorker(ctx context.Context, id string) (Worker, error) {
	var w Worker
	err := e.view(ctx, func(tx *etx) error {
		b, ok, err := tx.get(e.workerKey(id))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("worker %s: %w", id, ErrNotFound)
		}
		w, err = decodeWorker(b)
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Worker{}, fmt.Errorf("get worker %s: %w", id, err)
	}
	return w, err
}

// DeleteWorker implements [Store].
func (e *Etcd) DeleteWorker(ctx context.Context, id string) error {
	err := e.update(ctx, func(tx *etx) error {
		_, ok, err := tx.get(e.workerKey(id))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("worker %s: %w", id, ErrNotFound)
		}
		tx.del(e.workerKey(id))
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete worker %s: %w", id, err)
	}
	return err
}

// ListWorkers implements [Store].
func (e *Etcd) ListWorkers(ctx context.Context) ([]Worker, error) {
	var ws []Worker
	err := e.view(ctx, func(tx *etx) error {
		prefix := e.p + "workers/"
		kvs, err := tx.scan(prefix, prefixEnd(prefix), 0, false, false)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			w, err := decodeWorker(kv.value)
			if err != nil {
				return err
			}
			ws = append(ws, w)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	slices.SortFunc(ws, func(a, b Worker) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return ws, nil
}

// Jobs as stored.

// ejob is a job as the etcd store keeps it: the Job, its place in the
// queue (Queue, with the worker it was queued for), and what only the
// store needs.
type ejob struct {
	Job
	// RunID is the id the current attempt runs under; empty: the job id.
	RunID string
	// Retired are the attempts retried since, and their workers.
	Retired []retiredAttempt
	// HasScript is set while scripts/<id> holds the job's script.
	HasScript bool
}

type retiredAttempt struct {
	Run    string `json:"run"`
	Worker string `json:"worker"`
}

type queueRec struct {
	Worker   string `json:"worker,omitempty"`
	Priority int32  `json:"priority"`
	Round    int64  `json:"round"`
	Seq      int64  `json:"seq"`
	Deadline int64  `json:"deadline,omitempty"`
}

type jobRec struct {
	ID        string           `json:"id"`
	Worker    string           `json:"worker,omitempty"`
	Owner     string           `json:"owner,omitempty"`
	Group     string           `json:"group,omitempty"`
	Key       string           `json:"key,omitempty"`
	Created   int64            `json:"created"`
	Status    []byte           `json:"status"`
	Stop      string           `json:"stop,omitempty"`
	RunID     string           `json:"run,omitempty"`
	Retired   []retiredAttempt `json:"retired,omitempty"`
	Queue     *queueRec        `json:"queue,omitempty"`
	HasScript bool             `json:"script,omitempty"`
}

func encodeJob(j *ejob) ([]byte, error) {
	st, err := proto.Marshal(j.Status)
	if err != nil {
		return nil, err
	}
	r := jobRec{ID: j.ID, Worker: j.WorkerID, Owner: j.Owner, Group: j.GroupID, Key: j.IdempotencyKey,
		Created: unixNano(j.CreatedAt), Status: st, Stop: j.StopRequestedBy, RunID: j.RunID, Retired: j.Retired, HasScript: j.HasScript}
	if q := j.Queue; q != nil {
		r.Queue = &queueRec{Worker: q.WorkerID, Priority: q.Priority, Round: q.Round, Seq: q.Seq, Deadline: unixNano(q.Deadline)}
	}
	return json.Marshal(r)
}

func decodeJob(b []byte) (*ejob, error) {
	var r jobRec
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode job: %w", err)
	}
	j := &ejob{
		Job: Job{ID: r.ID, WorkerID: r.Worker, Owner: r.Owner, GroupID: r.Group, IdempotencyKey: r.Key,
			CreatedAt: fromUnixNano(r.Created), Status: &batonv1.JobStatus{}, StopRequestedBy: r.Stop},
		RunID: r.RunID, Retired: r.Retired, HasScript: r.HasScript,
	}
	if err := proto.Unmarshal(r.Status, j.Status); err != nil {
		return nil, fmt.Errorf("job %s: decode status: %w", r.ID, err)
	}
	if q := r.Queue; q != nil {
		j.Queue = &QueuePlace{WorkerID: q.Worker, Priority: q.Priority, Round: q.Round, Seq: q.Seq, Deadline: fromUnixNano(q.Deadline)}
	}
	return j, nil
}

// clone returns a copy of j that shares nothing with it.
func (j *ejob) clone() *ejob {
	c := *j
	c.Status = proto.CloneOf(j.Status)
	c.Retired = slices.Clone(j.Retired)
	if j.Queue != nil {
		q := *j.Queue
		c.Queue = &q
	}
	return &c
}

// public is the job as reads return it: without its place in the queue.
func (j *ejob) public() Job {
	out := j.Job
	out.Queue = nil
	return out
}

// Index keys of a job. Each maps to a value: the job id for the unique
// ones, the job's state where a listing filters on it, else empty.
func (e *Etcd) ixCreated() string                 { return e.p + "ix/created/" }
func (e *Etcd) ixWorker(w string) string          { return e.p + "ix/worker/" + sortStr(w) }
func (e *Etcd) ixOwner(o string) string           { return e.p + "ix/owner/" + sortStr(o) }
func (e *Etcd) ixGroup(g string) string           { return e.p + "ix/group/" + sortStr(g) }
func (e *Etcd) ixState(s batonv1.JobState) string { return e.p + "ix/state/" + sortInt(int64(s)) }
func (e *Etcd) ixActive(w string) string          { return e.p + "ix/active/" + sortStr(w) }
func (e *Etcd) ixStop(w string) string            { return e.p + "ix/stop/" + sortStr(w) }
func (e *Etcd) ixEnded() string                   { return e.p + "ix/ended/" }
func (e *Etcd) ixQueue() string                   { return e.p + "ix/queue/" }
func (e *Etcd) ixJobKey(owner, key string) string {
	return e.p + "ix/job-key/" + sortStr(owner) + key
}
func (e *Etcd) ixRun(run string) string     { return e.p + "ix/run/" + run }
func (e *Etcd) ixRetired(run string) string { return e.p + "ix/retired/" + run }

// queuePrefix is the part of a queue index key before the job's round:
// higher priorities sort first.
func (e *Etcd) queuePrefix(priority int32) string {
	return e.ixQueue() + fmt.Sprintf("%08x", ^(uint32(priority)^(1<<31)))
}

// jobIndex is the set of index keys of j, with their values.
func (e *Etcd) jobIndex(j *ejob) map[string]string {
	if j == nil {
		return nil
	}
	state := j.Status.GetState()
	sv := strconv.Itoa(int(state))
	order := sortInt(unixNano(j.CreatedAt)) + j.ID
	ix := map[string]string{
		e.ixCreated() + order:          "",
		e.ixWorker(j.WorkerID) + order: "",
		e.ixOwner(j.Owner) + order:     "",
		e.ixState(state) + order:       "",
	}
	if j.GroupID != "" {
		ix[e.ixGroup(j.GroupID)+order] = sv
	}
	if end, ended := endedAtNano(j.Status); ended {
		ix[e.ixEnded()+sortInt(end)+j.ID] = ""
	} else {
		ix[e.ixActive(j.WorkerID)+order] = sv
	}
	if j.StopRequestedBy != "" {
		ix[e.ixStop(j.WorkerID)+order] = ""
	}
	if j.IdempotencyKey != "" {
		ix[e.ixJobKey(j.Owner, j.IdempotencyKey)] = j.ID
	}
	if q := j.Queue; q != nil {
		ix[e.queuePrefix(q.Priority)+sortInt(q.Round)+sortInt(q.Seq)+j.ID] = ""
	}
	if j.RunID != "" {
		ix[e.ixRun(j.RunID)] = j.ID
	}
	for _, r := range j.Retired {
		ix[e.ixRetired(r.Run)] = r.Worker + "\x00" + j.ID
	}
	return ix
}

// writeJob replaces job old (nil: none) with n (nil: delete it), and its
// index keys with n's.
func (e *Etcd) writeJob(tx *etx, old, n *ejob) error {
	oldIx, newIx := e.jobIndex(old), e.jobIndex(n)
	for k := range oldIx {
		if _, ok := newIx[k]; !ok {
			tx.del(k)
		}
	}
	for k, v := range newIx {
		if was, ok := oldIx[k]; !ok || was != v {
			tx.put(k, []byte(v))
		}
	}
	if n == nil {
		tx.del(e.jobKey(old.ID))
		if old.HasScript {
			tx.del(e.scriptKey(old.ID))
		}
		return nil
	}
	b, err := encodeJob(n)
	if err != nil {
		return err
	}
	tx.put(e.jobKey(n.ID), b)
	return nil
}

// readJob reads job id; nil when there is none.
func (e *Etcd) readJob(tx *etx, id string) (*ejob, error) {
	b, ok, err := tx.get(e.jobKey(id))
	if err != nil || !ok {
		return nil, err
	}
	return decodeJob(b)
}

// readJobs reads the jobs of ids, in order, skipping those gone.
func (e *Etcd) readJobs(tx *etx, ids []string) ([]*ejob, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = e.jobKey(id)
	}
	vals, err := tx.getMany(keys)
	if err != nil {
		return nil, err
	}
	out := make([]*ejob, 0, len(ids))
	for _, v := range vals {
		if v == nil {
			continue
		}
		j, err := decodeJob(v)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, nil
}

// publicJobs returns the jobs as reads return them.
func publicJobs(js []*ejob) []Job {
	if len(js) == 0 {
		return nil
	}
	out := make([]Job, len(js))
	for i, j := range js {
		out[i] = j.public()
	}
	return out
}

// orderedID is the job id at the end of an index key whose job part
// starts at offset: a creation time then the id.
func orderedID(key string, offset int) string {
	return key[offset+sortIntLen:]
}

// Groups.

type groupRec struct {
	ID      string `json:"id"`
	Owner   string `json:"owner,omitempty"`
	Key     string `json:"key,omitempty"`
	Created int64  `json:"created"`
}

func (e *Etcd) ixGroupKey(owner, key string) string {
	return e.p + "ix/group-key/" + sortStr(owner) + key
}
func (e *Etcd) ixGroupCreated() string { return e.p + "ix/group-created/" }

// insertGroup writes the new group g, or fails with ErrConflict.
func (e *Etcd) insertGroup(tx *etx, g Group) error {
	if g.CreatedAt.IsZero() {
		g.CreatedAt = time.Now()
	}
	if _, ok, err := tx.get(e.groupKey(g.ID)); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("group %s: %w", g.ID, ErrConflict)
	}
	if g.IdempotencyKey != "" {
		if _, ok, err := tx.get(e.ixGroupKey(g.Owner, g.IdempotencyKey)); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("group with idempotency key %q of owner %q: %w", g.IdempotencyKey, g.Owner, ErrConflict)
		}
		tx.put(e.ixGroupKey(g.Owner, g.IdempotencyKey), []byte(g.ID))
	}
	b, err := json.Marshal(groupRec{ID: g.ID, Owner: g.Owner, Key: g.IdempotencyKey, Created: unixNano(g.CreatedAt)})
	if err != nil {
		return err
	}
	tx.put(e.groupKey(g.ID), b)
	tx.put(e.ixGroupCreated()+sortInt(unixNano(g.CreatedAt))+g.ID, nil)
	return nil
}

// CreateGroup implements [Store].
func (e *Etcd) CreateGroup(ctx context.Context, g Group) error {
	if g.ID == "" {
		return errors.New("create group: empty group id")
	}
	if g.CreatedAt.IsZero() {
		g.CreatedAt = time.Now()
	}
	err := e.update(ctx, func(tx *etx) error { return e.insertGroup(tx, g) })
	if err != nil && !errors.Is(err, ErrConflict) {
		return fmt.Errorf("create group %s: %w", g.ID, err)
	}
	return err
}

// GetGroup implements [Store].
func (e *Etcd) GetGroup(ctx context.Context, id string) (Group, error) {
	var g Group
	err := e.view(ctx, func(tx *etx) error {
		var err error
		g, err = e.readGroup(tx, id)
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Group{}, fmt.Errorf("get group %s: %w", id, err)
	}
	return g, err
}

func (e *Etcd) readGroup(tx *etx, id string) (Group, error) {
	b, ok, err := tx.get(e.groupKey(id))
	if err != nil {
		return Group{}, err
	}
	if !ok {
		return Group{}, fmt.Errorf("group %s: %w", id, ErrNotFound)
	}
	var r groupRec
	if err := json.Unmarshal(b, &r); err != nil {
		return Group{}, fmt.Errorf("decode group: %w", err)
	}
	g := Group{ID: r.ID, Owner: r.Owner, IdempotencyKey: r.Key, CreatedAt: fromUnixNano(r.Created)}
	prefix := e.ixGroup(id)
	kvs, err := tx.scan(prefix, prefixEnd(prefix), 0, false, true)
	if err != nil {
		return Group{}, err
	}
	for _, kv := range kvs {
		g.JobIDs = append(g.JobIDs, orderedID(kv.key, len(prefix)))
	}
	return g, nil
}

// GetGroupByIdempotencyKey implements [Store].
func (e *Etcd) GetGroupByIdempotencyKey(ctx context.Context, owner, key string) (Group, error) {
	if key == "" {
		return Group{}, fmt.Errorf("group with an empty idempotency key: %w", ErrNotFound)
	}
	var g Group
	err := e.view(ctx, func(tx *etx) error {
		id, ok, err := tx.get(e.ixGroupKey(owner, key))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("group with idempotency key %q of owner %q: %w", key, owner, ErrNotFound)
		}
		g, err = e.readGroup(tx, string(id))
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Group{}, fmt.Errorf("get group by idempotency key: %w", err)
	}
	return g, err
}

// GroupProgress implements [Store].
func (e *Etcd) GroupProgress(ctx context.Context, id string) (GroupProgress, error) {
	var p GroupProgress
	err := e.view(ctx, func(tx *etx) error {
		if _, ok, err := tx.get(e.groupKey(id)); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("group %s: %w", id, ErrNotFound)
		}
		prefix := e.ixGroup(id)
		kvs, err := tx.scan(prefix, prefixEnd(prefix), 0, false, false)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			n, _ := strconv.Atoi(string(kv.value))
			switch st := batonv1.JobState(n); {
			case !isTerminal(st):
				p.Open++
			case st == batonv1.JobState_JOB_STATE_SUCCEEDED:
				p.Succeeded++
			default:
				p.Unsucceeded++
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return GroupProgress{}, fmt.Errorf("group %s progress: %w", id, err)
	}
	return p, err
}
