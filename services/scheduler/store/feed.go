package store

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// The SQLite change feed. Every job write sets the job's rev column to the
// writer's next rev (writer.nextRev), and a delete leaves a tombstone with
// its own; the changes after a position are then the jobs and tombstones
// with a higher rev, a job written several times since showing once, in
// its latest state. The single writer commits revs in increasing order,
// so a reader never sees a rev before all the lower ones committed.

const (
	// feedPage is how many changes one read of the feed returns.
	feedPage = 256
	// feedPoll is how often a waiting reader looks for changes when no
	// commit woke it: another process (an operator's sqlite3 shell, a
	// newer store on the same file) commits without this store knowing.
	feedPoll = 5 * time.Second
)

// lastRevQuery reads the highest rev committed: that of the latest job
// write, whether the job is still there, deleted (its tombstone), or its
// tombstone trimmed (compacted).
const lastRevQuery = `SELECT MAX(
	(SELECT COALESCE(MAX(rev), 0) FROM jobs),
	(SELECT COALESCE(MAX(rev), 0) FROM job_tombstones),
	(SELECT compacted FROM feed WHERE id = 1))`

// changesQuery reads the changes after ?1, oldest first: jobColumns, rev
// and whether the change is a delete (a tombstone, whose job columns are
// empty).
const changesQuery = `SELECT ` + jobColumns + `, rev, 0 FROM jobs WHERE rev > ?1
UNION ALL
SELECT job_id, '', '', NULL, NULL, 0, x'', NULL, rev, 1 FROM job_tombstones WHERE rev > ?1
ORDER BY rev LIMIT ?2`

// feedWake wakes the readers waiting for the next commit that wrote jobs.
type feedWake struct {
	mu sync.Mutex
	// ch is closed at that commit; nil while no reader waits.
	ch chan struct{}
}

// wait returns a channel closed at the next commit that writes jobs.
func (f *feedWake) wait() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ch == nil {
		f.ch = make(chan struct{})
	}
	return f.ch
}

// committed wakes the readers waiting.
func (f *feedWake) committed() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ch != nil {
		close(f.ch)
		f.ch = nil
	}
}

// JobsRev implements [Feed].
func (s *SQLite) JobsRev(ctx context.Context) (int64, error) {
	row, err := s.queryRow(ctx, lastRevQuery)
	if err != nil {
		return 0, fmt.Errorf("jobs rev: %w", unavailable(err))
	}
	var rev int64
	if err := row.Scan(&rev); err != nil {
		return 0, fmt.Errorf("jobs rev: %w", unavailable(err))
	}
	return rev, nil
}

// Changes implements [Feed]. The deletes are kept until a PruneJobs that
// prunes the jobs ended before some time also trims the deletes made
// before it: resuming from before the latest delete trimmed fails with
// ErrCompacted.
func (s *SQLite) Changes(ctx context.Context, after int64, fn func(Change) error) error {
	for {
		// Taken before the read, so that a commit after the read wakes
		// this reader.
		wake := s.feed.wait()
		changes, err := s.changesAfter(ctx, after)
		if err != nil {
			return err
		}
		for _, c := range changes {
			if err := fn(c); err != nil {
				return err
			}
			after = c.Rev
		}
		if len(changes) == feedPage {
			continue
		}
		t := time.NewTimer(feedPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// changesAfter reads up to feedPage changes after rev after, or fails
// with ErrCompacted when a delete after it was trimmed.
func (s *SQLite) changesAfter(ctx context.Context, after int64) ([]Change, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rows, err := s.query(ctx, changesQuery, after, feedPage)
	if err != nil {
		return nil, fmt.Errorf("read job changes: %w", unavailable(err))
	}
	defer rows.Close()
	var out []Change
	for rows.Next() {
		var (
			c       Change
			deleted bool
		)
		j, err := scanJob(rows, &c.Rev, &deleted)
		if err != nil {
			return nil, fmt.Errorf("read job changes: %w", unavailable(err))
		}
		c.JobID, c.Deleted = j.ID, deleted
		if !deleted {
			c.Job = j
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read job changes: %w", unavailable(err))
	}
	// Read after the changes: compacted only grows, so when it is not
	// past after now, the tombstones the read needed were all there.
	row, err := s.queryRow(ctx, `SELECT compacted FROM feed WHERE id = 1`)
	if err != nil {
		return nil, fmt.Errorf("read job changes: %w", unavailable(err))
	}
	var compacted int64
	if err := row.Scan(&compacted); err != nil {
		return nil, fmt.Errorf("read job changes: %w", unavailable(err))
	}
	if after < compacted {
		return nil, fmt.Errorf("job changes after %d: the deletes up to %d were trimmed: %w", after, compacted, ErrCompacted)
	}
	return out, nil
}

// addTombstone records the delete of job id, at time at, for the feed.
func addTombstone(tx *writer, id string, at time.Time) error {
	_, err := tx.exec(`INSERT INTO job_tombstones (rev, job_id, deleted_at) VALUES (?, ?, ?)`,
		tx.nextRev(), id, unixNano(at))
	return err
}

// trimTombstones forgets the deletes made before before, and raises the
// feed's compacted mark to the latest of them: a reader that resumes from
// before it may have missed one.
func trimTombstones(tx *writer, before int64) error {
	if _, err := tx.exec(`UPDATE feed SET compacted = MAX(compacted,
	COALESCE((SELECT MAX(rev) FROM job_tombstones WHERE deleted_at < ?), 0)) WHERE id = 1`, before); err != nil {
		return err
	}
	_, err := tx.exec(`DELETE FROM job_tombstones WHERE rev <= (SELECT compacted FROM feed WHERE id = 1)`)
	return err
}
