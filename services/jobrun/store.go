package jobrun

import (
	"encoding/binary"
	"errors"
	"maps"
	"math"
	"slices"
	"syscall"
	"time"
)

const (
	stdoutFile = "stdout"
	stderrFile = "stderr"
	indexFile  = "index"
	// homesDirName is DataDir's directory of job home directories, apart
	// from DataDir/jobs: with jobs under other uids it is the one place
	// they may enter (see Options.JobUIDs).
	homesDirName = "home"
)

// recordKind says what a journal record tells about its job.
type recordKind byte

const (
	// kindStart: the job was accepted (state PENDING, just before its
	// process is spawned) or runs (state RUNNING, with pid and start time).
	// A job whose last record is a start record was cut short by the
	// worker's end: the next Runner reports it LOST.
	kindStart recordKind = 1
	// kindEnd: the job's final state. Only an end record is ever reported.
	kindEnd recordKind = 2
	// kindDrop: the job is forgotten (expired, or it never started).
	kindDrop recordKind = 3
)

// jobRecord is what the journal keeps of a job: its Status and what a
// restarted worker needs to kill what the job left behind.
type jobRecord struct {
	kind       recordKind
	st         Status
	startTicks uint64
	cgroupV2   string
	cgroupV1   []string
	// indexRecords is the number of records in the job's index file, so
	// that a finished job's output can be served without reading it first.
	indexRecords int64
	// otherBoot names the boot that PID and startTicks belong to if it is
	// not this one: "" for this boot (every record this process builds, and
	// every stored one with this boot's id), another boot's id, or
	// bootUnknown for a record stored without one. See bootID for why.
	otherBoot string
}

// bootUnknown is the otherBoot of a record stored before records held a
// boot id: its pid and start time may be from any boot.
const bootUnknown = "unknown"

// Record payload layout. The fixed head lets the janitor read an end time
// without decoding the rest:
//
//	0     kind
//	1:9   ended_at, unix nanoseconds (int64 LE; 0 = none)
//	9     id, then every other field (see marshal), as uvarints, varints
//	      and uvarint-length-prefixed strings
//
// A field added later goes at the end and is optional: a record written
// before it ends where it would start. The boot id is the first such field;
// the usage (source, CPU user and system nanoseconds, peak bytes) the second,
// written only once measured, after a boot id of "unknown" if the boot is.
const recordHead = 9

// marshal encodes the record's payload, appending to b.
func (rec *jobRecord) marshal(b []byte) []byte {
	st := &rec.st
	b = append(b, byte(rec.kind))
	b = binary.LittleEndian.AppendUint64(b, uint64(unixNano(st.EndedAt)))
	b = appendString(b, st.ID)
	if rec.kind == kindDrop {
		return b
	}
	b = append(b, byte(st.State))
	b = binary.AppendVarint(b, unixNano(st.CreatedAt))
	b = binary.AppendVarint(b, unixNano(st.StartedAt))
	b = binary.AppendVarint(b, int64(st.PID))
	b = binary.AppendUvarint(b, rec.startTicks)
	b = binary.AppendVarint(b, int64(st.ExitCode))
	b = binary.AppendVarint(b, int64(st.Signal))
	b = appendString(b, st.Reason)
	b = appendString(b, st.StoppedBy)
	b = binary.AppendVarint(b, st.StdoutBytes)
	b = binary.AppendVarint(b, st.StderrBytes)
	b = binary.AppendVarint(b, rec.indexRecords)
	b = appendString(b, st.Cgroup)
	b = appendString(b, rec.cgroupV2)
	b = appendStrings(b, rec.cgroupV1)
	b = appendString(b, st.RunAs)
	sp := &st.Spec
	b = appendString(b, sp.Command)
	b = appendString(b, sp.Path)
	b = appendStrings(b, sp.Args)
	b = appendMap(b, sp.Env)
	b = appendString(b, sp.Dir)
	b = binary.AppendVarint(b, int64(sp.Timeout))
	b = binary.AppendVarint(b, sp.OutputLimit)
	b = binary.AppendVarint(b, sp.MemoryLimit)
	b = binary.AppendUvarint(b, math.Float64bits(sp.CPULimit))
	b = appendString(b, sp.Owner)
	b = appendMap(b, sp.Labels)
	b = appendString(b, sp.GroupID)
	// The boot PID and startTicks belong to; left out if unknown and
	// nothing follows, never written empty.
	ext := rec.appendTagged(nil)
	if boot := rec.storedBoot(); boot != "" || len(ext) > 0 {
		if boot == "" {
			boot = bootUnknown // reads back as unknown
		}
		b = appendString(b, boot)
	}
	return append(b, ext...)
}

// Fields after the boot id are tagged: a tag, then the field's encoding
// as a length-prefixed string. A record holds only the fields that are
// set, and a reader skips the tags it does not know.
const (
	// tagScript: a script sent with the job, its name, size and SHA-256.
	tagScript = 1
	// tagUsage: what the job cost (see Usage): source, CPU user and
	// system time, peak memory.
	tagUsage = 2
)

// appendTagged appends the record's tagged fields.
func (rec *jobRecord) appendTagged(b []byte) []byte {
	if sp := &rec.st.Spec; sp.ScriptName != "" {
		var v []byte
		v = appendString(v, sp.ScriptName)
		v = binary.AppendVarint(v, sp.ScriptSize)
		v = appendString(v, sp.ScriptSHA256)
		b = binary.AppendUvarint(b, tagScript)
		b = appendString(b, string(v))
	}
	if use := &rec.st.Usage; use.Source != "" {
		var v []byte
		v = appendString(v, use.Source)
		v = binary.AppendVarint(v, int64(use.CPUUser))
		v = binary.AppendVarint(v, int64(use.CPUSystem))
		v = binary.AppendVarint(v, use.PeakMemory)
		b = binary.AppendUvarint(b, tagUsage)
		b = appendString(b, string(v))
	}
	return b
}

// readTagged decodes the tagged fields that end a record.
func (rec *jobRecord) readTagged(d *decoder) {
	for len(d.s) != 0 && !d.bad {
		tag := d.uvarint()
		v := decoder{s: d.string()}
		switch tag {
		case tagScript:
			sp := &rec.st.Spec
			sp.ScriptName = v.string()
			sp.ScriptSize = v.varint()
			sp.ScriptSHA256 = v.string()
			if v.bad || sp.ScriptName == "" || sp.ScriptSize <= 0 {
				d.bad = true
			}
		case tagUsage:
			use := &rec.st.Usage
			use.Source = v.string()
			use.CPUUser, use.CPUSystem = time.Duration(v.varint()), time.Duration(v.varint())
			use.PeakMemory = v.varint()
			if v.bad || !validUsageSource(use.Source) || use.CPUUser < 0 || use.CPUSystem < 0 || use.PeakMemory < 0 {
				d.bad = true
			}
		}
	}
}

// storedBoot is the boot id marshal writes: this boot's for a record of
// this boot, "" if the boot is unknown.
func (rec *jobRecord) storedBoot() string {
	switch rec.otherBoot {
	case "":
		return bootID()
	case bootUnknown:
		return ""
	}
	return rec.otherBoot
}

var errBadRecord = errors.New("malformed journal record")

// unmarshalRecord decodes a payload. It never panics and never allocates
// more than the payload's size, whatever the bytes.
func unmarshalRecord(p string) (jobRecord, error) {
	var rec jobRecord
	d := decoder{s: p}
	rec.kind = recordKind(d.byte())
	rec.st.EndedAt = fromUnixNano(int64(d.fixed64()))
	rec.st.ID = d.string()
	if rec.kind == kindDrop {
		if d.bad || validateID(rec.st.ID) != nil {
			return rec, errBadRecord
		}
		return rec, nil
	}
	st := &rec.st
	st.State = State(d.byte())
	st.CreatedAt = fromUnixNano(d.varint())
	st.StartedAt = fromUnixNano(d.varint())
	st.PID = int(d.varint())
	rec.startTicks = d.uvarint()
	st.ExitCode = int(d.varint())
	st.Signal = syscall.Signal(d.varint())
	st.Reason = d.string()
	st.StoppedBy = d.string()
	st.StdoutBytes = d.varint()
	st.StderrBytes = d.varint()
	rec.indexRecords = d.varint()
	st.Cgroup = d.string()
	rec.cgroupV2 = d.string()
	rec.cgroupV1 = d.strings()
	st.RunAs = d.string()
	sp := &st.Spec
	sp.Command = d.string()
	sp.Path = d.string()
	sp.Args = d.strings()
	sp.Env = d.stringMap()
	sp.Dir = d.string()
	sp.Timeout = time.Duration(d.varint())
	sp.OutputLimit = d.varint()
	sp.MemoryLimit = d.varint()
	sp.CPULimit = math.Float64frombits(d.uvarint())
	if math.IsNaN(sp.CPULimit) || math.IsInf(sp.CPULimit, 0) || sp.CPULimit < 0 {
		d.bad = true // a spec with such a limit is refused before it is recorded
	}
	sp.Owner = d.string()
	sp.Labels = d.stringMap()
	sp.GroupID = d.string()
	rec.otherBoot = bootUnknown // a record written before boot ids ends here
	if len(d.s) != 0 {
		switch boot := d.string(); boot {
		case "":
			d.bad = true // never written empty
		case bootID():
			rec.otherBoot = ""
		default:
			rec.otherBoot = boot
		}
		rec.readTagged(&d)
	}
	if st.Usage.Source != "" {
		st.Usage.Wall = wallTime(st, st.EndedAt)
	}
	switch {
	case d.bad, len(d.s) != 0, rec.kind != kindStart && rec.kind != kindEnd,
		validateID(st.ID) != nil, st.State < 0 || int(st.State) >= len(stateNames),
		(rec.kind == kindEnd) != st.State.Terminal(),
		st.StdoutBytes < 0 || st.StderrBytes < 0 || rec.indexRecords < 0:
		return jobRecord{}, errBadRecord
	}
	return rec, nil
}

// recordEndedAt reads the end time of an encoded record without decoding it.
func recordEndedAt(p string) time.Time {
	if len(p) < recordHead {
		return time.Time{}
	}
	d := decoder{s: p[1:recordHead]}
	return fromUnixNano(int64(d.fixed64()))
}

// recordID returns the ID of an encoded record, sharing p's memory, so that
// a finished job's map key costs nothing beyond its record.
func recordID(p string) string {
	d := decoder{s: p[min(len(p), recordHead):]}
	n := d.uvarint()
	if d.bad || n > uint64(len(d.s)) {
		return ""
	}
	return d.s[:n]
}

// unixNano encodes a time; the zero time is 0.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

// appendMap writes the pairs in key order, so equal specs encode equally.
func appendMap(b []byte, m map[string]string) []byte {
	b = binary.AppendUvarint(b, uint64(len(m)))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		b = appendString(b, k)
		b = appendString(b, m[k])
	}
	return b
}

// decoder reads a payload. After the first error every read returns a zero
// value and bad stays set.
type decoder struct {
	s   string
	bad bool
}

func (d *decoder) byte() byte {
	if len(d.s) < 1 {
		d.bad = true
		return 0
	}
	c := d.s[0]
	d.s = d.s[1:]
	return c
}

func (d *decoder) fixed64() uint64 {
	if len(d.s) < 8 {
		d.bad, d.s = true, ""
		return 0
	}
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(d.s[i])
	}
	d.s = d.s[8:]
	return v
}

func (d *decoder) uvarint() uint64 {
	var v uint64
	for i := 0; i < binary.MaxVarintLen64; i++ {
		if i >= len(d.s) {
			break
		}
		c := d.s[i]
		if c < 0x80 {
			if i == binary.MaxVarintLen64-1 && c > 1 {
				break
			}
			d.s = d.s[i+1:]
			return v | uint64(c)<<(7*i)
		}
		v |= uint64(c&0x7f) << (7 * i)
	}
	d.bad, d.s = true, ""
	return 0
}

func (d *decoder) varint() int64 {
	u := d.uvarint()
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if n > uint64(len(d.s)) {
		d.bad, d.s = true, ""
		return ""
	}
	s := d.s[:n]
	d.s = d.s[n:]
	return s
}

// count reads a number of items, each at least one byte long: a count the
// rest of the payload cannot hold is malformed, which bounds allocations.
func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.s)) {
		d.bad, d.s = true, ""
		return 0
	}
	return int(n)
}

func (d *decoder) strings() []string {
	n := d.count()
	if n == 0 {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = d.string()
	}
	return out
}

func (d *decoder) stringMap() map[string]string {
	n := d.count()
	if n == 0 {
		return nil
	}
	out := make(map[string]string, n)
	for range n {
		k := d.string()
		out[k] = d.string()
	}
	return out
}
