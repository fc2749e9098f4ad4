package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"modernc.org/sqlite"
)

// Every write runs on one goroutine that owns the store's only writing
// connection. It takes all the operations queued by concurrent callers and
// runs them in one transaction, each inside its own savepoint, so that one
// commit (one WAL append, one round of locks) serves a whole batch, and a
// page that several of its operations change (the newest leaf of each
// index) is written once (https://sqlite.org/lang_savepoint.html).

// maxBatch caps the operations in one transaction, so that the first
// caller's wait and the sub-journal the savepoints keep in memory stay
// bounded however many callers queue.
const maxBatch = 128

// checkpointFrames is how many WAL frames the writer commits before it
// asks the checkpointer to copy them into the database file: SQLite's own
// default. A larger WAL saves few page writes, since the pages a
// checkpoint copies are mostly distinct, and lengthens readers' lookups.
const checkpointFrames = 1000

// writerPragmas apply to the writing side's connections. locking_mode
// stays NORMAL: EXCLUSIVE would keep the WAL index in the writer's private
// memory and shut out the read pool and an operator's sqlite3 shell.
var writerPragmas = []string{
	// Checkpoints run on their own connection (runCheckpoints), and the
	// writer copies only the few frames committed meanwhile
	// (checkpointTail), so that a batch never waits for a whole one.
	"wal_autocheckpoint(0)",
	// Savepoint sub-journals and large statements stay in memory: the
	// writer never writes a temporary file.
	"temp_store(MEMORY)",
	// The writer is the only connection that changes the file, so its
	// cache stays valid from one transaction to the next, and a larger one
	// saves rereading the index pages of a large store.
	"cache_size(-16384)",
}

// errClosed is returned by calls on a closed store.
var errClosed = errors.New("store is closed")

// States of a writeOp.
const (
	opQueued int32 = iota
	opStarted
	opAbandoned
)

// writeOp is one caller's write, queued for the writer.
type writeOp struct {
	fn func(w *writer) error
	// state moves once, from opQueued to opStarted (by the writer, just
	// before it runs fn) or to opAbandoned (by a caller whose ctx ended
	// first).
	state atomic.Int32
	// err and panicked are set before done is closed.
	err      error
	panicked any
	done     chan struct{}
}

// start claims op for running, unless its caller gave up.
func (op *writeOp) start() bool { return op.state.CompareAndSwap(opQueued, opStarted) }

func (op *writeOp) finish(err error) {
	op.err = err
	close(op.done)
}

// writeQueue holds the operations waiting for the writer. It is safe for
// concurrent use.
type writeQueue struct {
	mu     sync.Mutex
	ops    []*writeOp
	closed bool
	// idle is set while the writer waits on wake; push then closes wake
	// and replaces it.
	idle bool
	wake chan struct{}
	// onPush, when set, is called after each push (tests watch the queue
	// with it).
	onPush func()
}

func (q *writeQueue) push(op *writeOp) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return errClosed
	}
	q.ops = append(q.ops, op)
	if q.idle {
		q.idle = false
		close(q.wake)
		q.wake = make(chan struct{})
	}
	onPush := q.onPush
	q.mu.Unlock()
	if onPush != nil {
		onPush()
	}
	return nil
}

// take appends up to maxBatch queued operations to buf, waiting for one
// if none is queued. It returns false when the queue is closed and empty.
func (q *writeQueue) take(buf []*writeOp) ([]*writeOp, bool) {
	for {
		q.mu.Lock()
		if n := min(len(q.ops), maxBatch); n > 0 {
			buf = append(buf, q.ops[:n]...)
			left := copy(q.ops, q.ops[n:])
			clear(q.ops[left:])
			q.ops = q.ops[:left]
			q.mu.Unlock()
			return buf, true
		}
		if q.closed {
			q.mu.Unlock()
			return buf, false
		}
		q.idle = true
		wake := q.wake
		q.mu.Unlock()
		<-wake
	}
}

// close makes later pushes fail; what is queued is still taken.
func (q *writeQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	if q.idle {
		q.idle = false
		close(q.wake)
		q.wake = make(chan struct{})
	}
}

// write runs fn in one of the writer's transactions and returns once that
// transaction committed (nil) or fn's changes were rolled back (fn's
// error, or the one that undid the transaction). fn runs at most once, on
// the writer goroutine; it must not keep w, nor call the store.
//
// ctx bounds only the wait in the queue: a caller whose ctx ends before
// the writer starts fn gives up with ctx's error and fn never runs. Once
// fn has started, the caller waits for the outcome whatever ctx says, so
// that an error from write always means that nothing of fn was written,
// and nil that all of it was committed.
func (s *SQLite) write(ctx context.Context, fn func(w *writer) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	op := &writeOp{fn: fn, done: make(chan struct{})}
	if err := s.queue.push(op); err != nil {
		return err
	}
	select {
	case <-op.done:
	case <-ctx.Done():
		if op.state.CompareAndSwap(opQueued, opAbandoned) {
			return ctx.Err()
		}
		<-op.done
	}
	if op.panicked != nil {
		panic(op.panicked)
	}
	return unavailable(op.err)
}

// runWriter runs batches until the queue is closed and empty.
func (s *SQLite) runWriter() {
	defer close(s.writerDone)
	var batch []*writeOp
	for {
		var ok bool
		batch, ok = s.queue.take(batch[:0])
		if !ok {
			return
		}
		s.runBatch(batch)
		clear(batch)
		select {
		case <-s.ckptTail:
			s.checkpointTail()
		default:
		}
	}
}

// runBatch runs the operations of batch in one transaction, and finishes
// each of them once the transaction is over. A failed operation waits too:
// its verdict (a conflict, say) may rest on a write of another operation of
// the batch, which its caller must be able to read once told.
func (s *SQLite) runBatch(batch []*writeOp) {
	w := s.w
	// IMMEDIATE takes the write lock up front: a deferred transaction that
	// reads and then writes fails with SQLITE_BUSY, without waiting, when
	// another process committed in between
	// (https://sqlite.org/lang_transaction.html).
	if err := w.ctl(`BEGIN IMMEDIATE`); err != nil {
		for _, op := range batch {
			if op.start() {
				op.finish(err)
			}
		}
		return
	}
	// Under the write lock, the term read here stays the file's until
	// COMMIT: a store opened since has bumped it, and this one's writes
	// must not land after the newer one's.
	if err := s.checkTerm(); err != nil {
		_ = w.ctl(`ROLLBACK`)
		for _, op := range batch {
			if op.start() {
				op.finish(err)
			}
		}
		return
	}
	// A batch of one needs no savepoint: its transaction is its own.
	nested := len(batch) > 1
	var (
		ran     []*writeOp // each with its own outcome in err
		changed bool       // some operation of ran succeeded
	)
	for i, op := range batch {
		if !op.start() {
			continue
		}
		if nested {
			if err := w.ctl(`SAVEPOINT op`); err != nil {
				s.abort(ran, op, err, batch[i+1:])
				return
			}
		}
		err := w.call(op)
		switch {
		case err == nil && nested:
			if err := w.ctl(`RELEASE op`); err != nil {
				s.abort(ran, op, err, batch[i+1:])
				return
			}
		case err != nil && nested:
			// Errors such as SQLITE_FULL or SQLITE_IOERR may have rolled
			// back the whole transaction, and the savepoint with it
			// (https://sqlite.org/lang_transaction.html#response_to_errors_within_a_transaction).
			if w.ctl(`ROLLBACK TO op`) != nil || w.ctl(`RELEASE op`) != nil {
				s.abort(ran, op, err, batch[i+1:])
				return
			}
		}
		op.err = err
		changed = changed || err == nil
		ran = append(ran, op)
	}
	if !changed {
		_ = w.ctl(`ROLLBACK`)
		for _, op := range ran {
			op.finish(op.err)
		}
		return
	}
	if err := w.ctl(`COMMIT`); err != nil {
		// A failed COMMIT may leave the transaction open (a deferred
		// constraint) or may have rolled it back (disk full): make sure it
		// is gone either way. The failed operations' verdicts were reached
		// on writes that are now undone, so they fail with the rest.
		_ = w.ctl(`ROLLBACK`)
		err = notOwn("commit", err)
		for _, op := range ran {
			op.finish(err)
		}
		return
	}
	s.commits.Add(1)
	if w.jobsChanged {
		w.jobsChanged = false
		s.feed.committed()
	}
	for _, op := range ran {
		op.finish(op.err)
	}
	s.countFrames()
}

// checkTerm returns ErrFenced when the file's term is not the store's.
func (s *SQLite) checkTerm() error {
	row, err := s.w.queryRow(`SELECT term FROM term WHERE id = 1`)
	if err != nil {
		return err
	}
	var term int64
	if err := row.Scan(&term); err != nil {
		return err
	}
	if term != s.term {
		return fmt.Errorf("this store began term %d, and the file is at term %d: %w", s.term, term, ErrFenced)
	}
	return nil
}

// abort ends a transaction that op broke with err: op and the operations
// that ran before it fail, and the rest of the batch, not started yet, runs
// in a new transaction.
func (s *SQLite) abort(ran []*writeOp, op *writeOp, err error, rest []*writeOp) {
	_ = s.w.ctl(`ROLLBACK`)
	op.finish(err)
	undone := notOwn("rolled back with its batch", err)
	for _, r := range ran {
		r.finish(undone)
	}
	if len(rest) > 0 {
		s.runBatch(rest)
	}
}

// notOwn wraps err, the failure of a whole batch, for an operation whose
// own statements did not fail: its caller may see that the store is
// unavailable, but must not take err's SQLite code (a constraint, say) for
// the verdict on its own write.
func notOwn(what string, err error) error {
	if errors.Is(unavailable(err), ErrUnavailable) {
		return fmt.Errorf("%w: %s: %v", ErrUnavailable, what, err)
	}
	return fmt.Errorf("%s: %v", what, err)
}

// countFrames adds the WAL frames of the last commit to those since the
// last checkpoint, and asks for a checkpoint when they are enough.
func (s *SQLite) countFrames() {
	var n int
	_ = s.w.conn.Raw(func(dc any) error {
		if st, ok := dc.(sqlite.DBStatus); ok {
			n, _, _ = st.Status(sqlite.DBStatusCacheWrite, true)
		}
		return nil
	})
	s.w.frames += n
	if s.w.frames < checkpointFrames {
		return
	}
	s.w.frames = 0
	select {
	case s.ckpt <- struct{}{}:
	default:
	}
}

// runCheckpoints copies the WAL into the database file when the writer
// asks, until s.ckpt is closed, and then lets the writer finish the job.
func (s *SQLite) runCheckpoints() {
	defer close(s.ckptDone)
	for range s.ckpt {
		// PASSIVE waits for neither readers nor the writer: what it cannot
		// copy now, the next checkpoint copies. A failure leaves the frames
		// in the WAL for the next one too.
		var busy, frames, copied int
		_ = s.ckptConn.QueryRowContext(context.Background(), `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &frames, &copied)
		select {
		case s.ckptTail <- struct{}{}:
		default:
		}
	}
}

// checkpointTail copies the frames the writer committed while the
// checkpointer ran. SQLite starts the WAL over, rather than growing it,
// only at a write that finds every frame copied, which a checkpointer
// running beside a busy writer never sees; the tail is short, so the
// writer's queue waits for little more than two syncs.
func (s *SQLite) checkpointTail() {
	var busy, frames, copied int
	_ = s.w.conn.QueryRowContext(stmtCtx, `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &frames, &copied)
}

// writer is the writing connection and its prepared statements. Only the
// writer goroutine uses it; operations run their statements through it.
type writer struct {
	conn  *sql.Conn
	stmts map[string]*sql.Stmt
	// frames counts the WAL frames committed since the last checkpoint
	// request.
	frames int
	// rev is the last rev handed out (see nextRev).
	rev int64
	// jobsChanged is set when the transaction in progress may have
	// written a job, whose readers of the feed are woken at its commit.
	jobsChanged bool
}

// nextRev returns the rev of a job write: above every rev committed,
// since the writer is the file's only one (the fence sees to it), and
// above those of the writes before it in the batch, so that the feed's
// order is the order of the writes. A rev whose write is rolled back is
// never used again: the feed has gaps, but never goes back.
func (w *writer) nextRev() int64 {
	w.rev++
	w.jobsChanged = true
	return w.rev
}

// stmtCtx is the context of the writer's statements: never cancelled, so
// that an operation, once started, runs to its outcome.
var stmtCtx = context.Background()

// stmt returns the statement for query prepared on the writing
// connection, preparing it on first use. Every query text is a constant or
// built from constant fragments, so the cache stays small.
func (w *writer) stmt(query string) (*sql.Stmt, error) {
	if st, ok := w.stmts[query]; ok {
		return st, nil
	}
	st, err := w.conn.PrepareContext(stmtCtx, query)
	if err != nil {
		return nil, err
	}
	w.stmts[query] = st
	return st, nil
}

// ctl runs a transaction control statement.
func (w *writer) ctl(query string) error {
	_, err := w.exec(query)
	return err
}

func (w *writer) exec(query string, args ...any) (sql.Result, error) {
	st, err := w.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(stmtCtx, args...)
}

func (w *writer) queryRow(query string, args ...any) (*sql.Row, error) {
	st, err := w.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.QueryRowContext(stmtCtx, args...), nil
}

func (w *writer) query(query string, args ...any) (*sql.Rows, error) {
	st, err := w.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(stmtCtx, args...)
}

// call runs op's function. A panic is handed to op's caller, to be raised
// on its goroutine as it would have been without the writer.
func (w *writer) call(op *writeOp) (err error) {
	defer func() {
		if p := recover(); p != nil {
			op.panicked = p
			err = errors.New("the operation panicked")
		}
	}()
	return op.fn(w)
}

// close closes the prepared statements and the connection.
func (w *writer) close() error {
	var errs []error
	for _, st := range w.stmts {
		errs = append(errs, st.Close())
	}
	w.stmts = nil
	return errors.Join(append(errs, w.conn.Close())...)
}
