package jobrun

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fullRecord is a record with every field set.
func fullRecord(id string, kind recordKind) jobRecord {
	now := time.Unix(1_700_000_000, 123456789)
	rec := jobRecord{
		kind: kind,
		st: Status{
			ID: id,
			Spec: Spec{
				Command: "sh", Path: "a/b.sh", Args: []string{"-x", "", "a\nb"},
				Env: map[string]string{"A": "1", "B": ""}, Dir: "sub", Timeout: time.Minute,
				OutputLimit: 1 << 20, MemoryLimit: 64 << 20, CPULimit: 0.5, Owner: "user/alice",
				Labels: map[string]string{"team": "x"}, GroupID: "g1",
				ScriptName: "deploy.sh", ScriptSize: 1234, ScriptSHA256: strings.Repeat("ab", 32),
			},
			State: StateRunning, PID: 4242, ExitCode: -1, CreatedAt: now, StartedAt: now.Add(time.Millisecond),
			StdoutBytes: 10, StderrBytes: 3, Cgroup: "v2", RunAs: "uid 61190 (per job)",
		},
		startTicks: 987654, cgroupV2: "/sys/fs/cgroup/baton-0/" + id, cgroupV1: []string{"/sys/fs/cgroup/cpu/baton-0/" + id},
		indexRecords: 2,
	}
	if kind == kindEnd {
		rec.st.State, rec.st.ExitCode, rec.st.Signal = StateStopped, -1, syscall.SIGTERM
		rec.st.Reason, rec.st.StoppedBy, rec.st.EndedAt = "stopped by bob", "bob", now.Add(time.Second)
	}
	return rec
}

func sameRecord(a, b jobRecord) bool {
	norm := func(r jobRecord) jobRecord {
		for _, t := range []*time.Time{&r.st.CreatedAt, &r.st.StartedAt, &r.st.EndedAt} {
			*t = fromUnixNano(unixNano(*t))
		}
		return r
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

func TestRecordRoundTrip(t *testing.T) {
	t.Parallel()
	for _, rec := range []jobRecord{
		fullRecord("start-1", kindStart),
		fullRecord("end-1", kindEnd),
		{kind: kindStart, st: Status{ID: "bare", State: StatePending, ExitCode: -1}},
		{kind: kindDrop, st: Status{ID: "gone"}},
		// A script's description after a record of an unknown boot.
		{kind: kindStart, st: Status{ID: "noboot", State: StatePending, ExitCode: -1, Spec: Spec{ScriptName: "s", ScriptSize: 1, ScriptSHA256: "00"}}, otherBoot: bootUnknown},
	} {
		p := string(rec.marshal(nil))
		got, err := unmarshalRecord(p)
		if err != nil {
			t.Fatalf("%s: %v", rec.st.ID, err)
		}
		if !sameRecord(got, rec) {
			t.Errorf("%s: round trip\n got %+v\nwant %+v", rec.st.ID, got, rec)
		}
		if recordID(p) != rec.st.ID || !recordEndedAt(p).Equal(rec.st.EndedAt) {
			t.Errorf("%s: head reads id %q, ended %v", rec.st.ID, recordID(p), recordEndedAt(p))
		}
	}
}

// journalOf frames the records as a journal file would hold them.
func journalOf(recs ...jobRecord) []byte {
	var b []byte
	for _, rec := range recs {
		b = appendFrame(b, rec.marshal(nil))
	}
	return b
}

// TestJournalDamage loads journals with a corrupted record and with a torn
// tail: what cannot be read is skipped and logged, every other record is
// kept, and the journal is rewritten so that later appends are not lost
// behind the damage.
func TestJournalDamage(t *testing.T) {
	t.Parallel()
	aEnd := fullRecord("a", kindEnd)
	bStart, bEnd := fullRecord("b", kindStart), fullRecord("b", kindEnd)
	cEnd := fullRecord("c", kindEnd)
	whole := journalOf(aEnd, bStart, bEnd, cEnd)
	bEndAt := len(journalOf(aEnd, bStart))
	corrupt := bytes.Clone(whole)
	corrupt[bEndAt+frameHead+5] ^= 0x40 // a payload byte of b's end record
	tests := []struct {
		name    string
		journal []byte
		want    map[string]State
	}{
		// b falls back to its start record: cut short, so LOST.
		{"corrupt record", corrupt, map[string]State{"a": StateStopped, "b": StateLost, "c": StateStopped}},
		{"torn tail", whole[:len(whole)-7], map[string]State{"a": StateStopped, "b": StateStopped}},
		{"torn header", append(bytes.Clone(whole), 0x10, 0, 0), map[string]State{"a": StateStopped, "b": StateStopped, "c": StateStopped}},
		{"zeroed tail", append(bytes.Clone(whole), make([]byte, 100)...), map[string]State{"a": StateStopped, "b": StateStopped, "c": StateStopped}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := t.TempDir()
			if err := os.WriteFile(filepath.Join(data, journalFile), tc.journal, 0o600); err != nil {
				t.Fatal(err)
			}
			var logs syncBuffer
			opts := func(o *Options) {
				o.DataDir, o.Retention = data, 100*365*24*time.Hour
				o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			}
			check := func(r *Runner) {
				t.Helper()
				got := map[string]State{}
				for _, st := range r.List() {
					got[st.ID] = st.State
				}
				delete(got, "later")
				if !maps.Equal(got, tc.want) {
					t.Errorf("jobs %v, want %v", got, tc.want)
				}
			}
			r, _ := newRunner(t, opts)
			check(r)
			if !strings.Contains(logs.String(), "the job journal is damaged") {
				t.Errorf("no log of the damage:\n%s", logs.String())
			}
			mustStart(t, r, "later", Spec{Command: "true"})
			waitDone(t, r, "later")
			r.simulateCrash()

			again, _ := newRunner(t, opts)
			check(again)
			if st, err := again.Status("later"); err != nil || st.State != StateSucceeded {
				t.Errorf("a job recorded after the damage: %v %v", st.State, err)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func (b *syncBuffer) lock() {
	if b.mu == nil {
		b.mu = make(chan struct{}, 1)
	}
	b.mu <- struct{}{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.lock()
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.lock()
	defer func() { <-b.mu }()
	return b.buf.String()
}

// TestJournalRewriteCrash stops a rewrite of the journal at each of its
// steps, as a crash would, and reopens the journal: it is always either
// the old one or the new one, whole.
func TestJournalRewriteCrash(t *testing.T) {
	t.Parallel()
	oldRecs := []jobRecord{fullRecord("a", kindStart), fullRecord("a", kindEnd), fullRecord("b", kindEnd), fullRecord("c", kindEnd)}
	oldSet := []string{"a", "b", "c"}
	// The rewrite keeps a and b: c expired.
	var live []string
	for _, id := range []string{"a", "b"} {
		rec := fullRecord(id, kindEnd)
		live = append(live, string(rec.marshal(nil)))
	}
	newSet := []string{"a", "b"}
	crash := errors.New("crash")
	for _, tc := range []struct {
		step string
		want []string
	}{
		{"written", oldSet},
		{"synced", oldSet},
		{"renamed", newSet},
		{"", newSet}, // no crash
	} {
		t.Run("at "+tc.step, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, journalFile), journalOf(oldRecs...), 0o600); err != nil {
				t.Fatal(err)
			}
			jl, _, _, err := openJournal(dir, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			jl.crashAt = func(step string) error {
				if step == tc.step {
					return crash
				}
				return nil
			}
			jl.mu.Lock()
			err = jl.rewriteLocked(live)
			jl.mu.Unlock()
			if (tc.step != "") != errors.Is(err, crash) {
				t.Fatalf("rewrite: %v", err)
			}
			jl.close()

			var logs syncBuffer
			again, last, damaged, err := openJournal(dir, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer again.close()
			if got := slices.Sorted(maps.Keys(last)); !slices.Equal(got, tc.want) || damaged {
				t.Errorf("after a crash at %q: jobs %v (damaged %v), want %v\n%s", tc.step, got, damaged, tc.want, logs.String())
			}
			if _, err := os.Stat(filepath.Join(dir, journalTemp)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the unfinished rewrite is still there: %v", err)
			}
		})
	}
}

// TestJournalCompaction runs jobs past their retention until the journal
// is rewritten: it stays bounded and keeps every job still retained.
func TestJournalCompaction(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, func(o *Options) { o.Retention = time.Hour })
	var ended time.Time
	for i := 0; r.jl.size < compactMin+compactMin/2; i++ {
		id := "c-" + itoa(int64(i))
		mustStart(t, r, id, Spec{Command: "true", Labels: map[string]string{"pad": strings.Repeat("x", 500)}})
		ended = waitDone(t, r, id).EndedAt
	}
	mustStart(t, r, "kept", Spec{Command: "sh", Args: []string{"-c", "echo kept"}})
	waitDone(t, r, "kept")
	r.expire(ended.Add(time.Hour)) // every job but "kept"
	if r.jl.size >= compactMin {
		t.Errorf("journal of %d bytes after the expiry of all but one job", r.jl.size)
	}
	fi, err := os.Stat(r.jl.path)
	if err != nil || fi.Size() != r.jl.size {
		t.Errorf("journal file: %v, %v; want %d bytes", fi.Size(), err, r.jl.size)
	}
	mustStart(t, r, "after", Spec{Command: "true"})
	waitDone(t, r, "after")
	r.simulateCrash()
	again, _ := newRunner(t, func(o *Options) { o.DataDir = filepath.Dir(r.jobsDir) })
	var ids []string
	for _, st := range again.List() {
		ids = append(ids, st.ID)
	}
	if slices.Sort(ids); !slices.Equal(ids, []string{"after", "kept"}) {
		t.Errorf("jobs after the rewrite and a restart: %v", ids)
	}
	if got := string(readOutput(t, again, "kept", OutputRequest{})); got != "kept\n" {
		t.Errorf("output of a kept job: %q", got)
	}
}

// FuzzJournal feeds arbitrary bytes to the journal's reader: it never
// panics, passes on only frames that check out, and every record it
// decodes encodes back to one that decodes the same.
func FuzzJournal(f *testing.F) {
	f.Add(journalOf(fullRecord("a", kindStart), fullRecord("a", kindEnd), jobRecord{kind: kindDrop, st: Status{ID: "a"}}))
	f.Add(journalOf(fullRecord("b", kindEnd))[:20])
	f.Add([]byte{})
	f.Add(make([]byte, 64))
	f.Add(appendFrame(nil, []byte{2, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}))
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		whole, _ := scanJournal(b, func(p []byte) {
			n++
			rec, err := unmarshalRecord(string(p))
			if err != nil {
				return
			}
			again, err := unmarshalRecord(string(rec.marshal(nil)))
			if err != nil || !sameRecord(again, rec) {
				t.Fatalf("record %+v re-encodes to %+v (%v)", rec, again, err)
			}
		})
		if whole < 0 || whole > int64(len(b)) {
			t.Fatalf("whole prefix %d of %d bytes", whole, len(b))
		}
		m := 0
		scanJournal(b[:whole], func([]byte) { m++ })
		if m != n {
			t.Fatalf("the whole prefix holds %d frames, the input %d", m, n)
		}
	})
}

// FuzzRecord feeds arbitrary payloads to the record decoder, which the
// checksum of FuzzJournal's frames keeps random bytes from reaching.
func FuzzRecord(f *testing.F) {
	for _, rec := range []jobRecord{fullRecord("a", kindStart), fullRecord("a", kindEnd), {kind: kindDrop, st: Status{ID: "a"}}} {
		f.Add(rec.marshal(nil))
	}
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, p []byte) {
		rec, err := unmarshalRecord(string(p))
		_ = recordID(string(p))
		_ = recordEndedAt(string(p))
		if err != nil {
			return
		}
		again, err := unmarshalRecord(string(rec.marshal(nil)))
		if err != nil || !sameRecord(again, rec) {
			t.Fatalf("record %+v re-encodes to %+v (%v)", rec, again, err)
		}
	})
}

// TestJournalShortWriteIsCutOff: a write the disk could take only part of
// (ENOSPC on a full file system) leaves no partial frame behind, so the
// records appended once there is room again are read back.
func TestJournalShortWriteIsCutOff(t *testing.T) {
	t.Parallel()
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=64k"); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (%v): a short write cannot be made here", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) })
	jl, _, _, err := openJournal(mnt, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a := fullRecord("a", kindEnd)
	if _, err := jl.append([][]byte{a.marshal(nil)}, nil); err != nil {
		t.Fatal(err)
	}
	// Fill the file system up to a few bytes.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(make([]byte, 512)); err != nil {
			break
		}
	}
	f.Close()
	big := fullRecord("b", kindEnd)
	big.st.Reason = strings.Repeat("x", 8<<10)
	if _, err := jl.append([][]byte{big.marshal(nil)}, nil); err == nil {
		t.Fatal("an append to a full file system succeeded")
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	c := fullRecord("c", kindEnd)
	ticket, err := jl.append([][]byte{c.marshal(nil)}, nil)
	if err == nil {
		err = jl.waitDurable(ticket)
	}
	if err != nil {
		t.Fatalf("append once there is room again: %v", err)
	}
	jl.close()
	again, last, damaged, err := openJournal(mnt, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer again.close()
	if got := slices.Sorted(maps.Keys(last)); !slices.Equal(got, []string{"a", "c"}) || damaged {
		t.Errorf("after a short write: jobs %v (damaged %v), want a and c", got, damaged)
	}
}

// TestJournalFailedSyncIsSticky: once a sync failed, no waiter is told its
// records are durable until the journal was rewritten, even though the
// next fdatasync(2) would succeed (its error is not kept by the kernel).
func TestJournalFailedSyncIsSticky(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	jl, _, _, err := openJournal(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer jl.close()
	a := fullRecord("a", kindEnd)
	first, err := jl.append([][]byte{a.marshal(nil)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A sync of the file fails: here by syncing a closed descriptor in
	// its place, as the sync leader would find an I/O error.
	jl.mu.Lock()
	real := jl.f
	closed, err := os.Open(filepath.Join(dir, journalFile))
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	jl.f = closed
	jl.mu.Unlock()
	if err := jl.waitDurable(first); err == nil {
		t.Fatal("a failed sync was reported durable")
	}
	jl.mu.Lock()
	jl.f = real
	jl.mu.Unlock()
	b := fullRecord("b", kindEnd)
	second, err := jl.append([][]byte{b.marshal(nil)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, ticket := range []uint64{first, second} {
		if err := jl.waitDurable(ticket); !errors.Is(err, errBroken) {
			t.Errorf("ticket %d after a failed sync: %v, want errBroken", ticket, err)
		}
	}
	jl.mu.Lock()
	err = jl.rewriteLocked([]string{string(a.marshal(nil)), string(b.marshal(nil))})
	jl.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	for _, ticket := range []uint64{first, second} {
		if err := jl.waitDurable(ticket); err != nil {
			t.Errorf("ticket %d after the rewrite: %v", ticket, err)
		}
	}
}
