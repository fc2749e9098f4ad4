package jobrun

import (
	"context"
	"fmt"
	"path/filepath"
)

// OutputReader reads a job's output from the files of a data directory,
// as Output does, for a process other than the one running the job: a
// worker whose keeper runs its jobs reads their output itself, and the
// keeper only says how far it is written (Runner.Written). Not safe for
// concurrent use.
type OutputReader struct {
	f follower
}

// NewOutputReader reads job id's output under dataDir as req selects
// (req.Follow is the caller's business), passing it to fn.
func NewOutputReader(dataDir, id string, req OutputRequest, fn func(Chunk) error) (*OutputReader, error) {
	if err := validateID(id); err != nil {
		return nil, err
	}
	view, err := outputView(req)
	if err != nil {
		return nil, err
	}
	return &OutputReader{f: follower{id: id, dir: filepath.Join(dataDir, "jobs", id), view: view, off: req.Offset, fn: fn}}, nil
}

// Send passes what the job's first n index records hold and was not sent
// yet.
func (o *OutputReader) Send(ctx context.Context, n int64) error { return o.f.send(ctx, n) }

// Close releases the files.
func (o *OutputReader) Close() { o.f.close() }

// outputView checks req and returns the view it selects.
func outputView(req OutputRequest) (Stream, error) {
	if req.Offset < 0 {
		return 0, fmt.Errorf("%w: the output offset must not be negative", ErrInvalidSpec)
	}
	view := req.Streams
	if view == 0 {
		view = streamBoth
	}
	if view&^streamBoth != 0 {
		return 0, fmt.Errorf("%w: unknown output stream selection %d", ErrInvalidSpec, int(req.Streams))
	}
	return view, nil
}

// Written calls fn with the number of index records the job's output has
// written, now if there are any and, when following, each time it grows,
// until the job's output is complete; it returns the job's status then
// (its final status when following). What the records hold is in the
// job's files, for an OutputReader. A job that writes nothing costs no
// call. Safe for concurrent use.
func (r *Runner) Written(ctx context.Context, id string, follow bool, fn func(int64) error) (Status, error) {
	e, err := r.startedJob(ctx, id)
	if err != nil {
		return Status{}, err
	}
	if e.j == nil {
		rec, err := unmarshalRecord(e.rec)
		if err != nil {
			return e.status(), fmt.Errorf("%w: the output of job %q is no longer available", ErrNotFound, id)
		}
		if rec.indexRecords == 0 {
			return rec.st, nil
		}
		return rec.st, fn(rec.indexRecords)
	}
	j := e.j
	var last int64
	for {
		j.mu.Lock()
		n, complete, notify := j.nrec, j.complete, j.notify
		j.mu.Unlock()
		if n != last {
			if err := fn(n); err != nil {
				return j.snapshot(), err
			}
			last = n
		}
		if !follow || complete {
			return j.snapshot(), nil
		}
		select {
		case <-notify:
		case <-ctx.Done():
			return j.snapshot(), ctx.Err()
		}
	}
}
