package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
)

// importBytes bounds the values one Import transaction writes, below
// etcd's default request limit (--max-request-bytes, 1.5 MiB); a single
// record larger than that (a job with a script near 1 MiB) goes alone.
const importBytes = 1 << 20

// Import writes recs, as [ExportSQLite] yields them, into the store, which
// must not hold any of them: it fails with ErrConflict for a worker,
// group, job or schedule whose id, idempotency key or name is taken, and
// ErrNotFound for a job whose group is neither stored nor earlier in
// recs. It writes as few transactions as etcd's limits allow, each whole
// or not at all; when one fails, those before it stay written.
func (e *Etcd) Import(ctx context.Context, recs []Record) error {
	for len(recs) > 0 {
		n, reads, writes, size := 0, 0, 0, 0
		for n < len(recs) {
			r, w, b := e.importCost(recs[n])
			// One compare is the fence's.
			if n > 0 && (reads+r+1 > maxTxnOps || writes+w > maxTxnOps || size+b > importBytes) {
				break
			}
			reads, writes, size = reads+r, writes+w, size+b
			n++
		}
		batch := recs[:n]
		err := e.update(ctx, func(tx *etx) error {
			for _, r := range batch {
				if err := e.importRecord(tx, r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
				return err
			}
			return fmt.Errorf("import: %w", err)
		}
		recs = recs[n:]
	}
	return nil
}

// importCost is an upper bound of the keys importRecord reads and writes
// for r, and of the bytes it writes.
func (e *Etcd) importCost(r Record) (reads, writes, size int) {
	switch {
	case r.Worker != nil:
		return 1, 1, 256
	case r.Group != nil:
		return 2, 3, 256
	case r.Job != nil:
		j := e.importedJob(r.Job)
		return 3, len(e.jobIndex(j)) + 2, proto.Size(j.Status) + len(r.Job.Script) + 1024
	case r.Schedule != nil:
		return 2, 3, proto.Size(r.Schedule.Definition) + 256*(len(r.Schedule.Fires)+1)
	}
	return 0, 0, 0
}

// importRecord writes r in tx.
func (e *Etcd) importRecord(tx *etx, r Record) error {
	switch {
	case r.Worker != nil:
		w := *r.Worker
		if w.ID == "" {
			return errors.New("import worker: empty worker id")
		}
		if err := absent(tx, e.workerKey(w.ID), "worker "+w.ID); err != nil {
			return err
		}
		b, err := encodeWorker(w)
		if err != nil {
			return fmt.Errorf("import worker %s: %w", w.ID, err)
		}
		tx.put(e.workerKey(w.ID), b)
		return nil
	case r.Group != nil:
		if r.Group.ID == "" {
			return errors.New("import group: empty group id")
		}
		return e.insertGroup(tx, *r.Group)
	case r.Job != nil:
		return e.importJob(tx, r.Job)
	case r.Schedule != nil:
		return e.importSchedule(tx, r.Schedule)
	}
	return errors.New("import: empty record")
}

// importedJob is the job of jr as the store keeps it.
func (e *Etcd) importedJob(jr *JobRecord) *ejob {
	j := &ejob{Job: jr.Job, RunID: jr.RunID, HasScript: len(jr.Script) > 0}
	j.Status = proto.CloneOf(jr.Status)
	j.Script = nil
	if q := jr.Queue; q != nil {
		place := *q
		j.Queue = &place
	}
	for _, r := range jr.Retired {
		j.Retired = append(j.Retired, retiredAttempt{Run: r.RunID, Worker: r.WorkerID})
	}
	return j
}

// importJob writes the job of jr with its indexes, script and place in
// the queue, as the store's own writes would have left them.
func (e *Etcd) importJob(tx *etx, jr *JobRecord) error {
	if jr.ID == "" || jr.Status == nil {
		return errors.New("import job: empty job id or status")
	}
	if jr.Queue != nil && !inQueue(jr.Status.GetState()) {
		return fmt.Errorf("import job %s: a %s job has no place in the queue", jr.ID, StateWord(jr.Status.GetState()))
	}
	if err := absent(tx, e.jobKey(jr.ID), "job "+jr.ID); err != nil {
		return err
	}
	if jr.IdempotencyKey != "" {
		if err := absent(tx, e.ixJobKey(jr.Owner, jr.IdempotencyKey), fmt.Sprintf("job with idempotency key %q of owner %q", jr.IdempotencyKey, jr.Owner)); err != nil {
			return err
		}
	}
	if jr.GroupID != "" {
		if _, ok, err := tx.get(e.groupKey(jr.GroupID)); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("group %s of job %s: %w", jr.GroupID, jr.ID, ErrNotFound)
		}
	}
	j := e.importedJob(jr)
	if j.HasScript {
		tx.put(e.scriptKey(j.ID), jr.Script)
	}
	return e.writeJob(tx, nil, j)
}

// importSchedule writes a schedule with its counters, cursor and fires.
func (e *Etcd) importSchedule(tx *etx, sr *ScheduleRecord) error {
	sc := sr.Schedule
	if sc.ID == "" || sc.Owner == "" || sc.Name == "" {
		return errors.New("import schedule: empty id, owner or name")
	}
	what := fmt.Sprintf("schedule %q of %s", sc.Name, sc.Owner)
	for _, k := range []string{e.scheduleKey(sc.Owner, sc.Name), e.scheduleIDKey(sc.ID)} {
		if err := absent(tx, k, what); err != nil {
			return err
		}
	}
	b, err := encodeSchedule(sc)
	if err != nil {
		return fmt.Errorf("import %s: %w", what, err)
	}
	tx.put(e.scheduleKey(sc.Owner, sc.Name), b)
	tx.put(e.scheduleIDKey(sc.ID), []byte(e.scheduleKey(sc.Owner, sc.Name)))
	if len(sr.Fires) > 0 {
		fires := make([]fireRec, len(sr.Fires))
		for i, f := range sr.Fires {
			fires[i] = fireRec{Time: unixNano(f.Time), Manual: f.Manual, Outcome: int32(f.Outcome), Job: f.JobID, Group: f.GroupID, Reason: f.Reason}
		}
		fb, err := json.Marshal(fires)
		if err != nil {
			return fmt.Errorf("import %s: %w", what, err)
		}
		tx.put(e.firesKey(sc.ID), fb)
	}
	return nil
}

// absent fails with ErrConflict when key exists.
func absent(tx *etx, key, what string) error {
	if _, ok, err := tx.get(key); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("%s: %w", what, ErrConflict)
	}
	return nil
}

// CountRecords counts what the store holds, by kind, at one revision.
func (e *Etcd) CountRecords(ctx context.Context) (RecordCounts, error) {
	var c RecordCounts
	kinds := map[string]*int{
		e.p + "workers/":    &c.Workers,
		e.p + "groups/":     &c.Groups,
		e.p + "jobs/":       &c.Jobs,
		e.schedulesPrefix(): &c.Schedules,
	}
	err := e.view(ctx, func(tx *etx) error {
		for prefix, n := range kinds {
			count, err := tx.count(prefix, prefixEnd(prefix))
			if err != nil {
				return err
			}
			*n = int(count)
		}
		// A schedule's fires are one list.
		prefix := e.p + "fires/"
		kvs, err := tx.scan(prefix, prefixEnd(prefix), 0, false, false)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			var fires []fireRec
			if err := json.Unmarshal(kv.value, &fires); err != nil {
				return fmt.Errorf("decode fires: %w", err)
			}
			c.Fires += len(fires)
		}
		return nil
	})
	if err != nil {
		return RecordCounts{}, fmt.Errorf("count records: %w", err)
	}
	return c, nil
}
