package jobrun

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Index file format: one fixed 32-byte little-endian record per copier write,
// in the order the writes were stored, so the index is the true interleaving
// of both streams:
//
//	0:8   time, unix nanoseconds (int64)
//	8:16  stdout bytes stored before this write (uint64)
//	16:24 stderr bytes stored before this write (uint64)
//	24:28 length (uint32)
//	28    stream (1 stdout, 2 stderr)
//	29:32 zero
const (
	indexRecordSize = 32
	copyBufferSize  = 32 << 10
	indexBatch      = 128
)

type indexRecord struct {
	time         int64
	stdoutBefore uint64
	stderrBefore uint64
	length       uint32
	stream       Stream
}

func (r *indexRecord) encode(b []byte) {
	_ = b[indexRecordSize-1]
	binary.LittleEndian.PutUint64(b[0:], uint64(r.time))
	binary.LittleEndian.PutUint64(b[8:], r.stdoutBefore)
	binary.LittleEndian.PutUint64(b[16:], r.stderrBefore)
	binary.LittleEndian.PutUint32(b[24:], r.length)
	b[28] = byte(r.stream)
	b[29], b[30], b[31] = 0, 0, 0
}

func decodeRecord(b []byte) indexRecord {
	_ = b[indexRecordSize-1]
	return indexRecord{
		time:         int64(binary.LittleEndian.Uint64(b[0:])),
		stdoutBefore: binary.LittleEndian.Uint64(b[8:]),
		stderrBefore: binary.LittleEndian.Uint64(b[16:]),
		length:       binary.LittleEndian.Uint32(b[24:]),
		stream:       Stream(b[28]),
	}
}

// outputLog is the write side of a job's output. The copiers of both streams
// append through it; mu serialises appends so that index order is the order
// in which writes were stored. The job's directory and files are made on
// the first write to them: a job that prints nothing costs no file at all.
type outputLog struct {
	mu         sync.Mutex
	dir        string
	dirMade    bool
	stdout     *os.File
	stderr     *os.File
	index      *os.File
	limit      int64
	stored     int64
	outN, errN uint64
	nrec       int64
	discarding bool
	limitHit   bool
	resumed    bool // adopted: its files are appended to, not made anew
	writeErr   error
	rec        [indexRecordSize]byte
}

// appendResult tells the copier what the append did.
type appendResult int

const (
	appended appendResult = iota
	dropped
	limitReached // first append that would have exceeded the limit
	writeFailed  // first failed write
)

// append stores one read of a copier and publishes it to followers. The
// publish happens under the job lock, inside the append lock, so the
// published count never covers a record that is not fully written.
func (l *outputLog) append(j *job, stream Stream, p []byte, now time.Time) appendResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.discarding {
		return dropped
	}
	if l.stored+int64(len(p))+indexRecordSize > l.limit {
		l.discarding, l.limitHit = true, true
		return limitReached
	}
	rec := indexRecord{time: now.UnixNano(), stdoutBefore: l.outN, stderrBefore: l.errN, length: uint32(len(p)), stream: stream}
	f, name := &l.stdout, stdoutFile
	if stream == StreamStderr {
		f, name = &l.stderr, stderrFile
	}
	// A failed write may leave stray bytes at the end of the stream file; no
	// index record covers them, so readers never see them.
	if err := l.open(f, name); err != nil {
		l.discarding, l.writeErr = true, err
		return writeFailed
	}
	if _, err := (*f).Write(p); err != nil {
		l.discarding, l.writeErr = true, err
		return writeFailed
	}
	rec.encode(l.rec[:])
	if err := l.open(&l.index, indexFile); err != nil {
		l.discarding, l.writeErr = true, err
		return writeFailed
	}
	if _, err := l.index.Write(l.rec[:]); err != nil {
		l.discarding, l.writeErr = true, err
		return writeFailed
	}
	l.stored += int64(len(p)) + indexRecordSize
	if stream == StreamStderr {
		l.errN += uint64(len(p))
	} else {
		l.outN += uint64(len(p))
	}
	l.nrec++
	j.publish(l.nrec, int64(l.outN), int64(l.errN))
	return appended
}

func (l *outputLog) writeError() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writeErr
}

// limitWasHit reports whether the output limit was reached.
func (l *outputLog) limitWasHit() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limitHit
}

// close closes the files. Appends after it are dropped.
func (l *outputLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.close0()
}

// close0 is close with l.mu held.
func (l *outputLog) close0() {
	l.discarding = true
	for _, f := range []*os.File{l.stdout, l.stderr, l.index} {
		if f != nil {
			_ = f.Close()
		}
	}
}

// open opens one of the job's files for writing unless it is open, making
// the job's directory first if needed. Called with l.mu held.
func (l *outputLog) open(f **os.File, name string) error {
	if *f != nil {
		return nil
	}
	if !l.dirMade {
		err := os.Mkdir(l.dir, 0o700)
		if errors.Is(err, fs.ErrExist) {
			// Not a known job's (its ID is ours now): the remains of a
			// failed cleanup. Start afresh.
			if err = os.RemoveAll(l.dir); err == nil {
				err = os.Mkdir(l.dir, 0o700)
			}
		}
		if err != nil {
			return err
		}
		l.dirMade = true
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if l.resumed {
		// Adopted from an earlier process image: the file holds what was
		// stored before, exactly (a failed write stops all storing).
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	h, err := os.OpenFile(filepath.Join(l.dir, name), flags, 0o600)
	if err != nil {
		return err
	}
	*f = h
	return nil
}

// OutputRequest selects what Runner.Output sends. The zero value reads both
// streams from the start without following. It is a plain value, safe to
// copy and share.
type OutputRequest struct {
	// Offset is where to start, in the coordinates of the selected view:
	// bytes of both streams in the order they were written, or bytes of the
	// one selected stream.
	Offset int64
	// Follow keeps the call open until the job ends and all its output was
	// sent.
	Follow bool
	// Streams selects StreamStdout, StreamStderr or both (0 or both bits).
	Streams Stream
}

// Chunk is a piece of output passed to the Output callback. Its Data is
// owned by the Runner and reused after the callback returns; a Chunk must
// not be shared beyond the callback without copying Data.
type Chunk struct {
	Stream Stream
	// Data is valid only during the callback; copy it to keep it.
	Data []byte
	// Offset is the view offset of Data[0].
	Offset int64
	// Time is when the worker read the bytes from the job.
	Time time.Time
}

// viewSpan returns where a record lies in a view: its start offset and the
// number of its bytes that belong to the view.
func viewSpan(v Stream, r *indexRecord) (start, n int64) {
	switch v {
	case StreamStdout:
		start = int64(r.stdoutBefore)
	case StreamStderr:
		start = int64(r.stderrBefore)
	default:
		return int64(r.stdoutBefore + r.stderrBefore), int64(r.length)
	}
	if r.stream == v {
		n = int64(r.length)
	}
	return start, n
}

// recordReader reads index records from a file.
type recordReader interface {
	ReadAt(p []byte, off int64) (int, error)
}

// seekRecord returns the first record among [0, n) whose bytes in view v
// reach past off, or n if none does. The end of each record's span is
// non-decreasing along the index, so a binary search finds it with O(log n)
// reads.
func seekRecord(idx recordReader, n int64, v Stream, off int64) (int64, error) {
	var buf [indexRecordSize]byte
	lo, hi := int64(0), n
	for lo < hi {
		mid := lo + (hi-lo)/2
		if _, err := idx.ReadAt(buf[:], mid*indexRecordSize); err != nil {
			return 0, err
		}
		r := decodeRecord(buf[:])
		start, l := viewSpan(v, &r)
		if start+l > off {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}

// Output sends the job's output to fn, one chunk at a time, starting at
// req.Offset. Without Follow it returns after sending what exists; with
// Follow it returns once the job ended and everything was sent, with the
// final Status. It returns fn's error if fn fails and ctx.Err() if ctx ends
// first. Output reads from the job's files, so any number of callers can
// follow one job, each at its own pace, without slowing the job. Safe for
// concurrent use.
func (r *Runner) Output(ctx context.Context, id string, req OutputRequest, fn func(Chunk) error) (Status, error) {
	view, err := outputView(req)
	if err != nil {
		return Status{}, err
	}
	e, err := r.startedJob(ctx, id)
	if err != nil {
		return Status{}, err
	}
	f := follower{job: e.j, id: id, dir: filepath.Join(r.jobsDir, id), view: view, off: req.Offset, fn: fn}
	defer f.close()
	if e.j == nil {
		// Over: the record says how much there is.
		rec, err := unmarshalRecord(e.rec)
		if err != nil {
			return e.status(), fmt.Errorf("%w: the output of job %q is no longer available", ErrNotFound, id)
		}
		return rec.st, f.send(ctx, rec.indexRecords)
	}
	if err := f.run(ctx, req.Follow); err != nil {
		return e.j.snapshot(), err
	}
	return e.j.snapshot(), nil
}

// follower is the state of one Output call: its own cursor, file handles
// and one bounded buffer.
type follower struct {
	job    *job // nil for a job that is over (see entry)
	id     string
	dir    string
	view   Stream
	off    int64 // view offset of the next byte to send
	cursor int64 // next index record to look at
	seeked bool
	fn     func(Chunk) error

	index, stdout, stderr *os.File
	recs                  []byte
	buf                   []byte
	pend                  run
}

// maxChunk bounds one Chunk, and so the memory a follower holds.
const maxChunk = 256 << 10

// run is a stretch of one stream's file waiting to be sent as one chunk.
type run struct {
	stream   Stream
	pos, off int64 // position in the stream's file, offset in the view
	n        int64
	time     int64 // capture time of its first byte, unix nanoseconds
}

func (f *follower) close() {
	for _, h := range []*os.File{f.index, f.stdout, f.stderr} {
		if h != nil {
			_ = h.Close()
		}
	}
}

func (f *follower) open(name string) (*os.File, error) {
	h, err := os.Open(filepath.Join(f.dir, name))
	if err != nil {
		return nil, fmt.Errorf("%w: the output of job %q is no longer available", ErrNotFound, f.id)
	}
	return h, nil
}

func (f *follower) run(ctx context.Context, follow bool) error {
	j := f.job
	for {
		// The count and the notify channel are taken under one lock: a
		// publish after this point closes exactly this channel, so no wake-up
		// is lost.
		j.mu.Lock()
		n, complete, notify := j.nrec, j.complete, j.notify
		j.mu.Unlock()

		if err := f.send(ctx, n); err != nil {
			return err
		}
		if !follow || complete {
			return nil
		}
		select {
		case <-notify:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// send sends records [f.cursor, n).
func (f *follower) send(ctx context.Context, n int64) error {
	if f.cursor >= n {
		return nil
	}
	var err error
	if f.index == nil {
		if f.index, err = f.open(indexFile); err != nil {
			return err
		}
		f.recs = make([]byte, indexBatch*indexRecordSize)
	}
	if !f.seeked {
		if f.cursor, err = seekRecord(f.index, n, f.view, f.off); err != nil {
			return f.readErr(err)
		}
		f.seeked = f.cursor < n
	}
	for f.cursor < n {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch := min(n-f.cursor, indexBatch)
		b := f.recs[:batch*indexRecordSize]
		if _, err := f.index.ReadAt(b, f.cursor*indexRecordSize); err != nil {
			return f.readErr(err)
		}
		for i := range batch {
			rec := decodeRecord(b[i*indexRecordSize:])
			if err := f.sendRecord(&rec); err != nil {
				return err
			}
			f.cursor++
		}
	}
	return f.flush()
}

// sendRecord adds a record's bytes (those at or after the cursor) to the
// pending run, sending the run first when the record cannot extend it.
// Consecutive records of one stream are contiguous in its file, so a burst
// of small pipe reads goes out as one chunk instead of one message each.
func (f *follower) sendRecord(rec *indexRecord) error {
	start, n := viewSpan(f.view, rec)
	if n == 0 || start+n <= f.off {
		return nil
	}
	// A seek may land mid-record: skip what is before the cursor.
	skip := max(f.off-start, 0)
	pos := int64(rec.stdoutBefore)
	if rec.stream == StreamStderr {
		pos = int64(rec.stderrBefore)
	}
	pos, start, n = pos+skip, start+skip, n-skip
	p := &f.pend
	if p.n > 0 && (p.stream != rec.stream || p.pos+p.n != pos || p.off+p.n != start || p.n+n > maxChunk) {
		if err := f.flush(); err != nil {
			return err
		}
	}
	if p.n == 0 {
		*p = run{stream: rec.stream, pos: pos, off: start, time: rec.time}
	}
	p.n += n
	f.off = start + n
	return nil
}

// flush sends the pending run, in pieces of at most maxChunk bytes.
func (f *follower) flush() error {
	p := f.pend
	f.pend.n = 0
	if p.n == 0 {
		return nil
	}
	h, name := &f.stdout, stdoutFile
	if p.stream == StreamStderr {
		h, name = &f.stderr, stderrFile
	}
	if *h == nil {
		var err error
		if *h, err = f.open(name); err != nil {
			return err
		}
	}
	if f.buf == nil {
		f.buf = make([]byte, maxChunk)
	}
	t := time.Unix(0, p.time)
	for done := int64(0); done < p.n; {
		m := min(p.n-done, int64(len(f.buf)))
		if _, err := (*h).ReadAt(f.buf[:m], p.pos+done); err != nil {
			return f.readErr(err)
		}
		if err := f.fn(Chunk{Stream: p.stream, Data: f.buf[:m], Offset: p.off + done, Time: t}); err != nil {
			return err
		}
		done += m
	}
	return nil
}

func (f *follower) readErr(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("the output of job %q is truncated on disk", f.id)
	}
	return fmt.Errorf("reading the output of job %q failed: %w", f.id, unwrapPathError(err))
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
