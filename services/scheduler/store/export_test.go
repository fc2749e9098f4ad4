package store

import (
	"context"
	"errors"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Commits returns how many transactions the writer has committed.
func (s *SQLite) Commits() int64 { return s.commits.Load() }

// OnQueued makes the store call fn after each write is queued.
func (s *SQLite) OnQueued(fn func()) {
	s.queue.mu.Lock()
	defer s.queue.mu.Unlock()
	s.queue.onPush = fn
}

// WriteFunc runs fn as one write; exec runs a statement in the write's
// transaction.
func (s *SQLite) WriteFunc(ctx context.Context, fn func(exec func(query string, args ...any) error) error) error {
	return s.write(ctx, func(w *writer) error {
		return fn(func(query string, args ...any) error {
			_, err := w.exec(query, args...)
			return err
		})
	})
}

// Checkpoint copies the whole WAL into the database file and empties it.
func (s *SQLite) Checkpoint(ctx context.Context) error {
	var busy, frames, copied int
	if err := s.ckptConn.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &frames, &copied); err != nil {
		return err
	}
	if busy != 0 {
		return errors.New("checkpoint: the WAL is in use")
	}
	return nil
}

// ScriptsKept counts the scripts the store keeps for queued jobs.
func (s *SQLite) ScriptsKept(ctx context.Context) (int, error) {
	row, err := s.queryRow(ctx, `SELECT COUNT(*) FROM scripts`)
	if err != nil {
		return 0, err
	}
	var n int
	err = row.Scan(&n)
	return n, err
}

// ScriptsKept counts the scripts the store keeps for queued jobs.
func (e *Etcd) ScriptsKept(ctx context.Context) (int, error) {
	resp, err := e.cli.Get(ctx, e.p+"scripts/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return int(resp.Count), nil
}
