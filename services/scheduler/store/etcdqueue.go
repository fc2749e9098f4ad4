package store

import (
	"context"
	"fmt"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// The queue in etcd is an index: one key per job with a place, ordered as
// the places are (priority, highest first, then round, then sequence
// number), pointing at the job's record, which holds the place itself.

// ListQueued implements [Store].
func (e *Etcd) ListQueued(ctx context.Context) ([]Job, error) {
	var jobs []*ejob
	err := e.view(ctx, func(tx *etx) error {
		prefix := e.ixQueue()
		kvs, err := tx.scan(prefix, prefixEnd(prefix), 0, false, true)
		if err != nil {
			return err
		}
		ids := make([]string, len(kvs))
		for i, kv := range kvs {
			ids[i] = kv.key[len(prefix)+8+2*sortIntLen:]
		}
		jobs, err = e.readJobs(tx, ids)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list queued jobs: %w", err)
	}
	out := make([]Job, 0, len(jobs))
	for _, j := range jobs {
		if j.Queue != nil {
			out = append(out, j.Job)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// GetQueuedJob implements [Store].
func (e *Etcd) GetQueuedJob(ctx context.Context, id string) (Job, error) {
	var out Job
	err := e.view(ctx, func(tx *etx) error {
		j, err := e.queuedJob(tx, id)
		if err == nil {
			out = j.Job
		}
		return err
	})
	if err != nil {
		return Job{}, queueError("get queued job "+id, err)
	}
	return out, nil
}

// queuedJob reads job id, which must have a place in the queue:
// ErrNotFound, or ErrConflict for a job without one.
func (e *Etcd) queuedJob(tx *etx, id string) (*ejob, error) {
	j, err := e.readJob(tx, id)
	if err != nil {
		return nil, err
	}
	if j == nil {
		return nil, fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	if j.Queue == nil {
		return nil, fmt.Errorf("job %s has no place in the queue: %w", id, ErrConflict)
	}
	return j, nil
}

// AssignJob implements [Store].
func (e *Etcd) AssignJob(ctx context.Context, id, workerID string) (Job, error) {
	var out Job
	err := e.update(ctx, func(tx *etx) error {
		j, err := e.queuedJob(tx, id)
		if err != nil {
			return err
		}
		if st := j.Status.GetState(); st != batonv1.JobState_JOB_STATE_QUEUED {
			return fmt.Errorf("job %s is %s, not queued: %w", id, st, ErrConflict)
		}
		if pinned := j.Queue.WorkerID; pinned != "" && pinned != workerID {
			return fmt.Errorf("job %s is queued for worker %q, not %q: %w", id, pinned, workerID, ErrConflict)
		}
		n := j.clone()
		n.WorkerID = workerID
		n.Status.WorkerId = workerID
		n.Status.State = batonv1.JobState_JOB_STATE_PENDING
		n.Status.Reason = ""
		if err := e.writeJob(tx, j, n); err != nil {
			return err
		}
		out = n.clone().Job
		if n.HasScript {
			script, ok, err := tx.get(e.scriptKey(id))
			if err != nil {
				return err
			}
			if ok {
				out.Script = script
			}
		}
		return nil
	})
	if err != nil {
		return Job{}, queueError("assign job "+id, err)
	}
	return out, nil
}

// RequeueJob implements [Store].
func (e *Etcd) RequeueJob(ctx context.Context, id string) (Job, error) {
	var out Job
	err := e.update(ctx, func(tx *etx) error {
		j, err := e.queuedJob(tx, id)
		if err != nil {
			return err
		}
		if st := j.Status.GetState(); st != batonv1.JobState_JOB_STATE_PENDING {
			return fmt.Errorf("job %s is %s, not being started: %w", id, st, ErrConflict)
		}
		n := j.clone()
		n.WorkerID = j.Queue.WorkerID
		n.Status.WorkerId = j.Queue.WorkerID
		n.Status.State = batonv1.JobState_JOB_STATE_QUEUED
		if err := e.writeJob(tx, j, n); err != nil {
			return err
		}
		out = n.clone().Job
		return nil
	})
	if err != nil {
		return Job{}, queueError("requeue job "+id, err)
	}
	return out, nil
}

// JobScript implements [Store].
func (e *Etcd) JobScript(ctx context.Context, id string) ([]byte, error) {
	var out []byte
	err := e.view(ctx, func(tx *etx) error {
		script, ok, err := tx.get(e.scriptKey(id))
		if ok {
			out = script
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("script of job %s: %w", id, err)
	}
	return out, nil
}
