package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// Writes that touch many jobs (MarkWorkerJobsLost, PruneJobs) run as
// several transactions of a few jobs each: a job's record and index keys
// are about a dozen operations, and etcd takes 128 per transaction by
// default.
const (
	lostBatch  = 8
	pruneEtcd  = 10
	groupBatch = 30
	// listBatch is the fewest index keys ListJobs reads per request.
	listBatch = 64
)

// CreateJob implements [Store].
func (e *Etcd) CreateJob(ctx context.Context, j Job) error {
	st := newJobStatus(&j)
	if j.ID == "" {
		return errors.New("create job: empty job id")
	}
	if (st.GetState() == batonv1.JobState_JOB_STATE_QUEUED) != (j.Queue != nil) {
		return fmt.Errorf("create job %s: a job has a place in the queue if and only if it is QUEUED", j.ID)
	}
	err := e.update(ctx, func(tx *etx) error { return e.insertJob(tx, j, st) })
	if err != nil && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("create job %s: %w", j.ID, err)
	}
	return err
}

// insertJob writes job j, whose status st newJobStatus made, with its
// script and its place in the queue. It fails with ErrConflict for a job
// id or idempotency key taken, and ErrNotFound for an unknown group.
func (e *Etcd) insertJob(tx *etx, j Job, st *batonv1.JobStatus) error {
	if _, ok, err := tx.get(e.jobKey(j.ID)); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("job %s: %w", j.ID, ErrConflict)
	}
	if j.IdempotencyKey != "" {
		if _, ok, err := tx.get(e.ixJobKey(j.Owner, j.IdempotencyKey)); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("job with idempotency key %q of owner %q: %w", j.IdempotencyKey, j.Owner, ErrConflict)
		}
	}
	if j.GroupID != "" {
		if _, ok, err := tx.get(e.groupKey(j.GroupID)); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("group %s of job %s: %w", j.GroupID, j.ID, ErrNotFound)
		}
	}
	n := &ejob{Job: j, HasScript: len(j.Script) > 0}
	n.Status = st
	n.Script = nil
	if st.GetState() == batonv1.JobState_JOB_STATE_QUEUED {
		q := *j.Queue
		n.Queue = &q
	} else {
		n.Queue = nil
	}
	if n.HasScript {
		tx.put(e.scriptKey(j.ID), j.Script)
	}
	return e.writeJob(tx, nil, n)
}

// GetJob implements [Store].
func (e *Etcd) GetJob(ctx context.Context, id string) (Job, error) {
	var out Job
	err := e.view(ctx, func(tx *etx) error {
		j, err := e.readJob(tx, id)
		if err != nil {
			return err
		}
		if j == nil {
			return fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		out = j.public()
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Job{}, fmt.Errorf("get job %s: %w", id, err)
	}
	return out, err
}

// GetJobByIdempotencyKey implements [Store].
func (e *Etcd) GetJobByIdempotencyKey(ctx context.Context, owner, key string) (Job, error) {
	if key == "" {
		return Job{}, fmt.Errorf("job with an empty idempotency key: %w", ErrNotFound)
	}
	var out Job
	err := e.view(ctx, func(tx *etx) error {
		id, ok, err := tx.get(e.ixJobKey(owner, key))
		if err != nil {
			return err
		}
		var j *ejob
		if ok {
			if j, err = e.readJob(tx, string(id)); err != nil {
				return err
			}
		}
		if j == nil {
			return fmt.Errorf("job with idempotency key %q of owner %q: %w", key, owner, ErrNotFound)
		}
		out = j.public()
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Job{}, fmt.Errorf("get job by idempotency key: %w", err)
	}
	return out, err
}

// UpdateJobStatus implements [Store].
func (e *Etcd) UpdateJobStatus(ctx context.Context, id string, st *batonv1.JobStatus) error {
	return e.updateJobStatus(ctx, id, "", st, schedulerUpdate(st))
}

// ApplyWorkerReport implements [Store].
func (e *Etcd) ApplyWorkerReport(ctx context.Context, workerID, id string, st *batonv1.JobStatus) error {
	return e.updateJobStatus(ctx, id, workerID, st, workerReport(workerID, id, st))
}

// updateJobStatus is SQLite.updateJobStatus for etcd: the same decisions
// (decideStatus), written as one transaction.
func (e *Etcd) updateJobStatus(ctx context.Context, id, worker string, st *batonv1.JobStatus, next nextFunc) error {
	fromWorker := worker != ""
	if st == nil {
		return fmt.Errorf("update job %s: nil status", id)
	}
	var ended *JobEnd
	err := e.update(ctx, func(tx *etx) error {
		ended = nil
		old, err := e.reportedJob(tx, id, worker)
		if err != nil {
			return err
		}
		upd, err := next(old.public())
		if upd == nil || err != nil {
			return err
		}
		c := decideStatus(old.public(), upd, fromWorker, time.Now())
		switch {
		case c.None:
			return nil
		case c.Retry != nil:
			var tail queueTail
			if err := e.writeRetry(tx, old, c.Retry, &tail); err != nil {
				return err
			}
			ended = c.Ended
			return nil
		}
		n := old.clone()
		n.Status = upd
		if c.ClearStop {
			n.StopRequestedBy = ""
		}
		if c.LeavesQueue {
			n.Queue = nil
		}
		if c.DropScript && n.HasScript {
			tx.del(e.scriptKey(n.ID))
			n.HasScript = false
		}
		if err := e.writeJob(tx, old, n); err != nil {
			return err
		}
		ended = c.Ended
		return nil
	})
	if err != nil {
		return lookupError(id, err)
	}
	if ended != nil {
		e.jobsEnded(*ended)
	}
	return nil
}

// reportedJob reads the job a status write names: by id, or for a
// worker's report (worker not empty), by the id its current attempt runs
// under. It fails with ErrNotFound, or ErrRetiredRun for an attempt of
// the worker's retried since.
func (e *Etcd) reportedJob(tx *etx, id, worker string) (*ejob, error) {
	if worker == "" {
		j, err := e.readJob(tx, id)
		if err == nil && j == nil {
			err = fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		return j, err
	}
	jobID, ok, err := tx.get(e.ixRun(id))
	if err != nil {
		return nil, err
	}
	if ok {
		j, err := e.readJob(tx, string(jobID))
		if err != nil || j != nil {
			return j, err
		}
	}
	j, err := e.readJob(tx, id)
	if err != nil {
		return nil, err
	}
	if j != nil && j.RunID == "" {
		return j, nil
	}
	v, ok, err := tx.get(e.ixRetired(id))
	if err != nil {
		return nil, err
	}
	if ok {
		if w, job, _ := cutNul(string(v)); w == worker {
			return nil, fmt.Errorf("run %s of job %s: %w", id, job, ErrRetiredRun)
		}
	}
	return nil, fmt.Errorf("job %s: %w", id, ErrNotFound)
}

func cutNul(s string) (string, string, bool) {
	for i := range len(s) {
		if s[i] == 0 {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// queueTail is what a retry's place in the queue is computed from: the
// highest round at each priority and the highest sequence number, read
// once per transaction and moved on by the places the transaction hands
// out itself.
type queueTail struct {
	read   bool
	seq    int64
	rounds map[int32]int64
}

// next returns the round and sequence number of a job queued now at
// priority: behind every job waiting, in the current round of its
// priority (1 when none waits at it).
func (q *queueTail) next(e *Etcd, tx *etx, priority int32) (round, seq int64, err error) {
	if !q.read {
		q.rounds = make(map[int32]int64)
		prefix := e.ixQueue()
		kvs, err := tx.scan(prefix, prefixEnd(prefix), 0, false, true)
		if err != nil {
			return 0, 0, err
		}
		for _, kv := range kvs {
			k := kv.key[len(prefix):]
			if len(k) < 8+2*sortIntLen {
				continue
			}
			inv, err1 := strconv.ParseUint(k[:8], 16, 32)
			r, err2 := strconv.ParseUint(k[8:8+sortIntLen], 16, 64)
			s, err3 := strconv.ParseUint(k[8+sortIntLen:8+2*sortIntLen], 16, 64)
			if err1 != nil || err2 != nil || err3 != nil {
				continue
			}
			p := int32(^uint32(inv) ^ (1 << 31))
			rr, ss := int64(r^(1<<63)), int64(s^(1<<63))
			if cur, ok := q.rounds[p]; !ok || rr > cur {
				q.rounds[p] = rr
			}
			q.seq = max(q.seq, ss)
		}
		q.read = true
	}
	round, ok := q.rounds[priority]
	if !ok {
		round = 1
		q.rounds[priority] = round
	}
	q.seq++
	return round, q.seq, nil
}

// writeRetry records status retry, made by retryOf, for job j: the job
// leaves its worker and waits in the queue, behind the jobs waiting now
// at its priority. It is retry.go's writeRetry for etcd.
func (e *Etcd) writeRetry(tx *etx, j *ejob, retry *batonv1.JobStatus, tail *queueTail) error {
	n := j.clone()
	n.WorkerID = retry.GetWorkerId()
	n.RunID = retry.GetRunId()
	n.Status = retry
	n.StopRequestedBy = ""
	run := runIDOf(j.public())
	known := false
	for _, r := range n.Retired {
		known = known || r.Run == run
	}
	if !known {
		n.Retired = append(n.Retired, retiredAttempt{Run: run, Worker: j.WorkerID})
	}
	priority := retry.GetSpec().GetPriority()
	round, seq, err := tail.next(e, tx, priority)
	if err != nil {
		return err
	}
	n.Queue = &QueuePlace{WorkerID: retry.GetWorkerId(), Priority: priority, Round: round, Seq: seq}
	return e.writeJob(tx, j, n)
}

// DeleteJob implements [Store].
func (e *Etcd) DeleteJob(ctx context.Context, id string) error {
	err := e.update(ctx, func(tx *etx) error {
		j, err := e.readJob(tx, id)
		if err != nil {
			return err
		}
		if j == nil {
			return fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		return e.writeJob(tx, j, nil)
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete job %s: %w", id, err)
	}
	return err
}

// ListJobs implements [Store]. It walks the index of the most selective
// filter set, newest first, and checks the other filters on the records.
func (e *Etcd) ListJobs(ctx context.Context, f JobFilter) ([]Job, string, error) {
	f, size, cur, fp, none, err := f.page()
	if err != nil || none {
		return nil, "", err
	}
	var prefix string
	switch {
	case f.GroupID != "":
		prefix = e.ixGroup(f.GroupID)
	case f.WorkerID != "":
		prefix = e.ixWorker(f.WorkerID)
	case f.Owner != "":
		prefix = e.ixOwner(f.Owner)
	case len(f.States) == 1:
		prefix = e.ixState(f.States[0])
	default:
		prefix = e.ixCreated()
	}
	match := func(j *ejob) bool {
		switch {
		case f.WorkerID != "" && j.WorkerID != f.WorkerID,
			f.Owner != "" && j.Owner != f.Owner,
			f.GroupID != "" && j.GroupID != f.GroupID:
			return false
		}
		if len(f.States) == 0 {
			return true
		}
		for _, s := range f.States {
			if j.Status.GetState() == s {
				return true
			}
		}
		return false
	}
	end := prefixEnd(prefix)
	if cur != nil {
		end = prefix + sortInt(cur.createdAt) + cur.jobID
	}
	var jobs []*ejob
	err = e.view(ctx, func(tx *etx) error {
		// One job more than the page tells whether another page follows.
		// The other filters may skip many keys: each request reads at
		// least listBatch of them, not one per job still missing.
		for len(jobs) <= size {
			want := int64(max(size+1-len(jobs), listBatch))
			kvs, err := tx.scan(prefix, end, want, true, true)
			if err != nil {
				return err
			}
			ids := make([]string, len(kvs))
			for i, kv := range kvs {
				ids[i] = orderedID(kv.key, len(prefix))
			}
			found, err := e.readJobs(tx, ids)
			if err != nil {
				return err
			}
			for _, j := range found {
				if match(j) {
					jobs = append(jobs, j)
				}
			}
			if int64(len(kvs)) < want {
				return nil
			}
			end = kvs[len(kvs)-1].key
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list jobs: %w", err)
	}
	if len(jobs) <= size {
		return publicJobs(jobs), "", nil
	}
	jobs = jobs[:size]
	last := jobs[size-1]
	return publicJobs(jobs), encodeCursor(cursor{createdAt: unixNano(last.CreatedAt), jobID: last.ID}, fp), nil
}

// JobsOnWorker implements [Store].
func (e *Etcd) JobsOnWorker(ctx context.Context, workerID string, nonTerminalOnly bool) ([]Job, error) {
	var jobs []*ejob
	err := e.view(ctx, func(tx *etx) error {
		var err error
		if nonTerminalOnly {
			jobs, err = e.activeJobs(tx, workerID, 0, true)
			return err
		}
		jobs, err = e.indexedJobs(tx, e.ixWorker(workerID), true)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("jobs on worker %s: %w", workerID, err)
	}
	return publicJobs(jobs), nil
}

// activeJobs reads up to limit (0: all) of the worker's jobs that have not
// ended and are not waiting in the queue for it, newest first when
// descending.
func (e *Etcd) activeJobs(tx *etx, workerID string, limit int, descending bool) ([]*ejob, error) {
	prefix := e.ixActive(workerID)
	kvs, err := tx.scan(prefix, prefixEnd(prefix), 0, descending, false)
	if err != nil {
		return nil, err
	}
	queued := strconv.Itoa(int(batonv1.JobState_JOB_STATE_QUEUED))
	var ids []string
	for _, kv := range kvs {
		// A job queued for the worker is not on it yet.
		if string(kv.value) == queued {
			continue
		}
		ids = append(ids, orderedID(kv.key, len(prefix)))
		if limit > 0 && len(ids) == limit+1 {
			break
		}
	}
	return e.readJobs(tx, ids)
}

// MarkWorkerJobsLost implements [Store]. It writes a few jobs per
// transaction: a worker may have had thousands.
func (e *Etcd) MarkWorkerJobsLost(ctx context.Context, workerID, reason string, at time.Time) (int, error) {
	if at.IsZero() {
		at = time.Now()
	}
	var all []JobEnd
	for {
		var (
			ends []JobEnd
			more bool
		)
		err := e.update(ctx, func(tx *etx) error {
			ends = ends[:0]
			jobs, err := e.activeJobs(tx, workerID, lostBatch, false)
			if err != nil {
				return err
			}
			more = len(jobs) > lostBatch
			if more {
				jobs = jobs[:lostBatch]
			}
			var tail queueTail
			for i, j := range jobs {
				// Jobs with large specs are written fewer at a time, so
				// that the transaction stays within etcd's request size.
				if i > 0 {
					b, err := encodeJob(j)
					if err != nil {
						return err
					}
					if tx.size()+len(b) > maxTxnBytes {
						more = true
						break
					}
				}
				st, retried := lostStatus(j.public(), reason, at)
				if retried {
					if err := e.writeRetry(tx, j, st, &tail); err != nil {
						return err
					}
					ends = append(ends, JobEnd{ID: j.ID, GroupID: j.GroupID, State: batonv1.JobState_JOB_STATE_LOST, Retried: true})
					continue
				}
				n := j.clone()
				n.Status = st
				n.Queue = nil
				if n.HasScript {
					tx.del(e.scriptKey(n.ID))
					n.HasScript = false
				}
				if err := e.writeJob(tx, j, n); err != nil {
					return err
				}
				ends = append(ends, JobEnd{ID: j.ID, GroupID: j.GroupID, State: st.GetState()})
			}
			return nil
		})
		if err != nil {
			return len(all), fmt.Errorf("mark jobs of worker %s lost: %w", workerID, err)
		}
		all = append(all, ends...)
		e.jobsEnded(ends...)
		if !more {
			return len(all), nil
		}
	}
}

// Stops waiting for delivery.

// RequestStop implements [Store].
func (e *Etcd) RequestStop(ctx context.Context, id, by string) error {
	err := e.update(ctx, func(tx *etx) error {
		j, err := e.readJob(tx, id)
		if err != nil {
			return err
		}
		if j == nil {
			return fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		st := j.Status.GetState()
		if isTerminal(st) && st != batonv1.JobState_JOB_STATE_LOST || j.StopRequestedBy == by {
			return nil
		}
		n := j.clone()
		n.StopRequestedBy = by
		return e.writeJob(tx, j, n)
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("request stop of job %s: %w", id, err)
	}
	return err
}

// ClearStop implements [Store].
func (e *Etcd) ClearStop(ctx context.Context, id string) error {
	err := e.update(ctx, func(tx *etx) error {
		j, err := e.readJob(tx, id)
		if err != nil || j == nil || j.StopRequestedBy == "" {
			return err
		}
		n := j.clone()
		n.StopRequestedBy = ""
		return e.writeJob(tx, j, n)
	})
	if err != nil {
		return fmt.Errorf("clear stop of job %s: %w", id, err)
	}
	return nil
}

// indexedJobs reads every job an index lists under prefix, in the
// index's order or, newestFirst, the other way.
func (e *Etcd) indexedJobs(tx *etx, prefix string, newestFirst bool) ([]*ejob, error) {
	kvs, err := tx.scan(prefix, prefixEnd(prefix), 0, newestFirst, true)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(kvs))
	for i, kv := range kvs {
		ids[i] = orderedID(kv.key, len(prefix))
	}
	return e.readJobs(tx, ids)
}

// PendingStops implements [Store].
func (e *Etcd) PendingStops(ctx context.Context, workerID string) ([]Job, error) {
	var jobs []*ejob
	err := e.view(ctx, func(tx *etx) error {
		var err error
		jobs, err = e.indexedJobs(tx, e.ixStop(workerID), false)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pending stops of worker %s: %w", workerID, err)
	}
	return publicJobs(jobs), nil
}

// Retention.

// PruneJobs implements [Store].
func (e *Etcd) PruneJobs(ctx context.Context, endedBefore time.Time) (int, error) {
	before := unixNano(endedBefore)
	total := 0
	for {
		n, more := 0, false
		err := e.update(ctx, func(tx *etx) error {
			n, more = 0, false
			prefix := e.ixEnded()
			kvs, err := tx.scan(prefix, prefix+sortInt(before), pruneEtcd, false, true)
			if err != nil {
				return err
			}
			ids := make([]string, len(kvs))
			for i, kv := range kvs {
				ids[i] = kv.key[len(prefix)+sortIntLen:]
			}
			jobs, err := e.readJobs(tx, ids)
			if err != nil {
				return err
			}
			for _, j := range jobs {
				// A job retried many times has an index key per attempt:
				// stop before the transaction outgrows etcd's limit.
				if n > 0 && len(tx.writes)+len(e.jobIndex(j))+2 > maxTxnOps {
					more = true
					break
				}
				if err := e.writeJob(tx, j, nil); err != nil {
					return err
				}
				n++
			}
			more = more || len(kvs) == pruneEtcd
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("prune jobs: %w", err)
		}
		total += n
		if !more {
			break
		}
	}
	// Only groups created before the cut-off: a group created just now may
	// not have its jobs yet.
	prefix := e.ixGroupCreated()
	start, end := prefix, prefix+sortInt(before)
	for {
		var last string
		err := e.update(ctx, func(tx *etx) error {
			kvs, err := tx.scan(start, end, groupBatch, false, true)
			if err != nil || len(kvs) == 0 {
				last = ""
				return err
			}
			last = kvs[len(kvs)-1].key
			for _, kv := range kvs {
				id := kv.key[len(prefix)+sortIntLen:]
				if n, err := tx.count(e.ixGroup(id), prefixEnd(e.ixGroup(id))); err != nil {
					return err
				} else if n > 0 {
					continue
				}
				g, err := e.readGroup(tx, id)
				if errors.Is(err, ErrNotFound) {
					tx.del(kv.key)
					continue
				}
				if err != nil {
					return err
				}
				tx.del(kv.key)
				tx.del(e.groupKey(id))
				if g.IdempotencyKey != "" {
					tx.del(e.ixGroupKey(g.Owner, g.IdempotencyKey))
				}
			}
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("prune groups: %w", err)
		}
		if last == "" {
			return total, nil
		}
		start = last + "\x00"
	}
}
