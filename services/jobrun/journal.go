package jobrun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// The journal is the Runner's one record of its jobs: DataDir/journal, an
// append-only sequence of frames
//
//	0:4  payload length (uint32 LE, 1 to maxRecord)
//	4:8  CRC-32C of the payload (uint32 LE)
//	8:   payload (see jobRecord.marshal)
//
// The last record of a job says what is known of it. A frame that does not
// check out is skipped, and a frame that runs past the end of the file is a
// torn tail (a crash in the middle of an append): both are logged and
// dropped when the journal is next rewritten. Start records are not synced
// (a crash of the machine ends the job anyway, and it is then reported LOST
// or, without any record, not at all); an end record is synced before the
// end is reported, by one fdatasync(2) for every end appended since the last
// one (see waitDurable).
const (
	journalFile = "journal"
	// journalTemp is the journal being rewritten. Until it is renamed over
	// the journal it is ignored, so a crash mid-rewrite leaves the old one.
	journalTemp = "journal.tmp"
	frameHead   = 8
	// maxRecord bounds one payload; a larger length can only be damage.
	maxRecord = 16 << 20
	// compactMin is the journal size below which it is never rewritten:
	// the dead records in it cost less than the rewrite.
	compactMin = 64 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendFrame appends one framed payload to b.
func appendFrame(b, payload []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(payload, castagnoli))
	return append(b, payload...)
}

func frameSize(payload string) int64 { return frameHead + int64(len(payload)) }

// scanJournal calls fn with the payload of every frame of b that checks
// out, in order. It returns the length of the prefix of b made of whole
// frames, and how many frames in it were skipped because their checksum
// failed. Bytes after that prefix are a torn tail.
func scanJournal(b []byte, fn func(payload []byte)) (whole int64, skipped int) {
	off := 0
	for len(b)-off >= frameHead {
		n := binary.LittleEndian.Uint32(b[off:])
		sum := binary.LittleEndian.Uint32(b[off+4:])
		if n == 0 || n > maxRecord || int64(n) > int64(len(b)-off-frameHead) {
			break
		}
		p := b[off+frameHead : off+frameHead+int(n)]
		if crc32.Checksum(p, castagnoli) == sum {
			fn(p)
		} else {
			skipped++
		}
		off += frameHead + int(n)
	}
	return int64(off), skipped
}

// journal appends records and makes them durable in groups. Its methods are
// safe for concurrent use.
type journal struct {
	dir  string
	path string

	// mu serialises appends and rewrites and guards everything below, and
	// also every job's last record (job.rec), so that a rewrite sees each
	// job's last record and no append is lost to it.
	mu   sync.Mutex
	f    *os.File
	size int64
	buf  []byte
	// Group sync: a sync numbered n covers every append that completed
	// before it began. started counts syncs begun, done the highest one
	// finished; synced is closed and replaced when one finishes.
	started, done uint64
	syncing       bool
	synced        chan struct{}
	// broken is set when a write or a sync failed: what the file holds is
	// then unknown (fsync(2) errors are not sticky, so a later sync that
	// succeeds proves nothing), and nothing is durable again until the
	// journal is rewritten from the Runner's records (rewriteLocked).
	broken bool

	// crashAt, if set, is called at each step of a rewrite; an error
	// stops the rewrite there as a crash would (a test hook).
	crashAt func(step string) error
}

// openJournal reads DataDir's journal, creating it if needed. It returns
// the last record of every job that has one and is not dropped, as
// payloads of their own (not sharing the file's buffer), and whether the
// file holds anything that should be rewritten away: skipped frames or a
// torn tail. Damage is logged, never an error.
func openJournal(dir string, log logger) (*journal, map[string]string, bool, error) {
	jl := &journal{dir: dir, path: filepath.Join(dir, journalFile), synced: make(chan struct{})}
	// A rewrite that did not reach its rename.
	if err := os.Remove(filepath.Join(dir, journalTemp)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, false, fmt.Errorf("jobrun: cannot remove an unfinished journal rewrite: %w", err)
	}
	b, err := os.ReadFile(jl.path)
	created := errors.Is(err, fs.ErrNotExist)
	if err != nil && !created {
		return nil, nil, false, fmt.Errorf("jobrun: cannot read the journal: %w", err)
	}
	last := map[string]string{}
	bad := 0
	whole, skipped := scanJournal(b, func(p []byte) {
		s := string(p)
		rec, err := unmarshalRecord(s)
		if err != nil {
			bad++
			return
		}
		// A map keeps the key of its first insert: delete first, so the
		// key is the new payload's ID and the old payload can be freed.
		delete(last, rec.st.ID)
		if rec.kind != kindDrop {
			last[recordID(s)] = s
		}
	})
	damaged := skipped > 0 || whole < int64(len(b)) || bad > 0
	if damaged {
		log.Error("the job journal is damaged; ignoring what cannot be read",
			"skipped_records", skipped+bad, "torn_bytes", int64(len(b))-whole)
	}
	jl.f, err = os.OpenFile(jl.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, false, fmt.Errorf("jobrun: cannot open the journal: %w", err)
	}
	jl.size = int64(len(b))
	if created {
		// The new file's name must survive a machine crash as much as the
		// records that will be synced into it.
		if err := syncDir(dir); err != nil {
			_ = jl.f.Close()
			return nil, nil, false, fmt.Errorf("jobrun: cannot sync the data directory: %w", err)
		}
	}
	return jl, last, damaged, nil
}

// logger is the part of slog.Logger the journal uses.
type logger interface {
	Error(msg string, args ...any)
}

// errBroken is waitDurable's answer while the journal is broken.
var errBroken = errors.New("an earlier write or sync of the job journal failed; it must be rewritten")

// append appends payloads as one write(2) and returns the ticket that
// waitDurable takes to make them durable. set, if not nil, runs under the
// journal lock, whether the write succeeded or not, to record the payloads
// as their jobs' last: they are what the Runner knows, and a rewrite after
// a failed write must include them.
func (jl *journal) append(payloads [][]byte, set func()) (uint64, error) {
	for _, p := range payloads {
		if len(p) > maxRecord {
			return 0, fmt.Errorf("a job record of %d bytes exceeds the journal's limit of %d", len(p), maxRecord)
		}
	}
	jl.mu.Lock()
	defer jl.mu.Unlock()
	jl.buf = jl.buf[:0]
	for _, p := range payloads {
		jl.buf = appendFrame(jl.buf, p)
	}
	if len(jl.buf) > 1<<20 {
		// Do not keep a big batch's buffer for the small appends after it.
		defer func() { jl.buf = nil }()
	}
	if set != nil {
		defer set()
	}
	n, err := jl.f.Write(jl.buf)
	if err != nil {
		// A partial frame would be a torn tail to the next reader, and
		// everything appended after it lost behind it: cut it off, or, if
		// that fails too, write the journal anew before trusting it again.
		if n > 0 && jl.f.Truncate(jl.size) != nil {
			jl.broken = true
		}
		return 0, err
	}
	jl.size += int64(n)
	return jl.started + 1, nil
}

// waitDurable returns once the appends that returned ticket are on stable
// storage. One caller at a time runs fdatasync(2), for everyone whose
// appends completed before it began; the others wait for it, and the first
// of them whose appends it does not cover runs the next one. So a burst of
// job ends costs one sync, not one each.
func (jl *journal) waitDurable(ticket uint64) error {
	jl.mu.Lock()
	defer jl.mu.Unlock()
	for jl.done < ticket {
		if jl.broken {
			return errBroken
		}
		if jl.syncing {
			ch := jl.synced
			jl.mu.Unlock()
			<-ch
			jl.mu.Lock()
			continue
		}
		jl.syncing = true
		jl.started++
		n, f := jl.started, jl.f
		jl.mu.Unlock()
		err := fdatasync(f)
		jl.mu.Lock()
		jl.syncing = false
		close(jl.synced)
		jl.synced = make(chan struct{})
		if err != nil && jl.done < n {
			// Unless a rewrite made it all durable meanwhile (closing the
			// file under this sync), the pages may be lost: every waiter
			// is told, until a rewrite.
			jl.broken = true
			return err
		}
		jl.done = max(jl.done, n)
	}
	return nil
}

// rewrite replaces the journal with one holding only live, the last record
// of every job still kept, as a crash-safe sequence: a temporary file,
// fsync, rename over the journal, fsync of the directory. A crash at any
// point leaves either the old or the new journal whole. Call it with jl.mu
// held.
func (jl *journal) rewriteLocked(live []string) error {
	tmp := filepath.Join(jl.dir, journalTemp)
	step := func(name string) error {
		if jl.crashAt != nil {
			return jl.crashAt(name)
		}
		return nil
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	var size int64
	err = func() error {
		var buf []byte
		for i, p := range live {
			buf = appendFrame(buf, []byte(p))
			if len(buf) >= 1<<20 || i == len(live)-1 {
				if _, err := f.Write(buf); err != nil {
					return err
				}
				size += int64(len(buf))
				buf = buf[:0]
			}
		}
		if err := step("written"); err != nil {
			return err
		}
		if err := fdatasync(f); err != nil {
			return err
		}
		if err := step("synced"); err != nil {
			return err
		}
		return os.Rename(tmp, jl.path)
	}()
	if err != nil {
		_ = f.Close()
		if jl.crashAt == nil {
			_ = os.Remove(tmp)
		}
		return err
	}
	// Renamed: from here on the new file is the journal, whatever fails.
	if err := step("renamed"); err != nil {
		_ = f.Close()
		return err
	}
	_ = jl.f.Close()
	jl.f, jl.size = f, size
	// Until the directory is synced a machine crash may bring back the old
	// journal, without what was appended to it since its last sync.
	if err := syncDir(jl.dir); err != nil {
		return err
	}
	// Everything appended so far is in the new file, synced.
	jl.done = max(jl.done, jl.started)
	jl.broken = false
	return nil
}

// close closes the file; appends after it fail.
func (jl *journal) close() {
	jl.mu.Lock()
	defer jl.mu.Unlock()
	_ = jl.f.Close()
}

// fdatasync flushes f's data and the metadata needed to read it back (its
// size), which is all a journal needs: fdatasync(2).
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = unix.Fdatasync(int(fd))
			if !errors.Is(serr, unix.EINTR) {
				return
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
