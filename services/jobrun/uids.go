package jobrun

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultUIDLeaseDir is where per-job uids are leased unless
// Options.UIDLeaseDir says otherwise. It is in /run so that a reboot, which
// ends every job, also ends every lease.
const DefaultUIDLeaseDir = "/run/baton/uids"

// uidPool leases per-job uids from a range, host-wide.
//
// A lease is a file named after the uid in the lease directory, holding the
// data directory of the Runner that took it and the job's ID. Every Runner
// on the host, in any process, takes leases in the same directory, under an
// flock(2) on its .lock file, so no two jobs ever hold the same uid. A lease
// outlives the worker process: it is given back only once none of the job's
// processes is left, by the Runner that took it or, after a crash, by the
// next Runner of the same data directory (see Runner.recoverUIDs). Uids and
// gids of the host's own accounts (/etc/passwd, /etc/group) are never
// leased, since a job would get that account's files.
//
// Its methods are safe for concurrent use.
type uidPool struct {
	dir     string
	dataDir string // the Runner's, recorded in its leases
	rng     UIDRange
	host    map[uint32]bool // ids of host accounts in rng, never leased
	lock    *os.File

	mu   sync.Mutex // serialises this Runner's use of lock; guards next
	next uint32     // where the next search starts: freed uids wait their turn
}

// leaseFile is the content of a lease.
type leaseFile struct {
	DataDir string `json:"data_dir"`
	JobID   string `json:"job_id"`
}

func openUIDPool(dir, dataDir string, rng UIDRange) (*uidPool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("jobrun: cannot create the uid lease directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("jobrun: cannot open the uid lease lock: %w", err)
	}
	p := &uidPool{dir: dir, dataDir: dataDir, rng: rng, lock: lock, host: map[uint32]bool{}}
	for _, file := range []string{"/etc/passwd", "/etc/group"} {
		for _, id := range accountIDs(file) {
			if rng.contains(id) {
				p.host[id] = true
			}
		}
	}
	// A random start spreads reuse across restarts: a uid freed just
	// before a restart is not the first one handed out after it.
	p.next = rng.First + uint32(rand.IntN(rng.Len()))
	return p, nil
}

// accountIDs returns the third field (uid or gid) of every entry of an
// /etc/passwd-style file.
func accountIDs(file string) []uint32 {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	var out []uint32
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 3 {
			continue
		}
		if id, err := strconv.ParseUint(f[2], 10, 32); err == nil {
			out = append(out, uint32(id))
		}
	}
	return out
}

func (p *uidPool) close() { _ = p.lock.Close() }

func (p *uidPool) path(uid uint32) string {
	return filepath.Join(p.dir, strconv.FormatUint(uint64(uid), 10))
}

// lockHost takes the host-wide lease lock and returns its release.
func (p *uidPool) lockHost() (unlock func()) {
	p.mu.Lock()
	for {
		err := unix.Flock(int(p.lock.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	return func() {
		_ = unix.Flock(int(p.lock.Fd()), unix.LOCK_UN)
		p.mu.Unlock()
	}
}

// uidLease is a uid leased to one job. release gives it back; call it only
// once none of the job's processes is left.
type uidLease struct {
	pool *uidPool
	uid  uint32
}

func (l *uidLease) release() error {
	err := os.Remove(l.pool.path(l.uid))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// acquire leases a free uid for job id. Uids are handed out in turn, so a
// freed uid is the last one to be handed out again. ErrNoUID means every
// uid of the range is leased.
func (p *uidPool) acquire(id string) (*uidLease, error) {
	content, err := json.Marshal(leaseFile{DataDir: p.dataDir, JobID: id})
	if err != nil {
		return nil, err
	}
	unlock := p.lockHost()
	defer unlock()
	if l, err := p.tryAcquire(content); l != nil || err != nil {
		return l, err
	}
	// Before refusing: a worker that died for good, with its data
	// directory, may have left leases that no process needs any more.
	if p.reclaimOrphansLocked(nil) > 0 {
		if l, err := p.tryAcquire(content); l != nil || err != nil {
			return l, err
		}
	}
	return nil, fmt.Errorf("%w: all %d job uids of this worker are in use; try again later", ErrNoUID, p.rng.Len())
}

// tryAcquire is acquire's search, with the host lock held. It returns no
// lease and no error when every uid is taken.
func (p *uidPool) tryAcquire(content []byte) (*uidLease, error) {
	n := uint64(p.rng.Len())
	start := uint64(p.next - p.rng.First)
	for i := range n {
		uid := p.rng.First + uint32((start+i)%n)
		if p.host[uid] {
			continue
		}
		// The lock already keeps other Runners out; O_EXCL also keeps out a
		// lease made by hand or by an older worker.
		f, err := os.OpenFile(p.path(uid), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		_, err = f.Write(content)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(p.path(uid))
			return nil, err
		}
		p.next = p.rng.First + uint32((start+i+1)%n)
		return &uidLease{pool: p, uid: uid}, nil
	}
	return nil, nil
}

// reclaimOrphans frees the leases of takers that cannot come back for them
// and that no process needs: their data directory is gone, or the lease is
// empty (its taker died while making it, before its job started).
func (p *uidPool) reclaimOrphans(log interface{ Info(string, ...any) }) {
	unlock := p.lockHost()
	defer unlock()
	p.reclaimOrphansLocked(log)
}

// reclaimOrphansLocked is reclaimOrphans with the host lock held, which
// keeps every taker out: a lease read now is complete or abandoned. It
// returns how many leases it freed.
func (p *uidPool) reclaimOrphansLocked(log interface{ Info(string, ...any) }) int {
	var procs map[uint32][]int
	n := 0
	for uid, l := range p.leases() {
		if l.ok {
			if _, err := os.Stat(l.DataDir); !errors.Is(err, fs.ErrNotExist) {
				continue
			}
		}
		if procs == nil {
			procs = uidProcesses(p.rng)
		}
		if len(procs[uid]) > 0 {
			continue
		}
		if err := os.Remove(p.path(uid)); err == nil {
			n++
			if log != nil {
				log.Info("freed the uid lease of a worker that is gone", "uid", uid)
			}
		}
	}
	return n
}

// leases lists the leases in the directory. A lease that cannot be parsed
// has ok false: its taker died between creating and writing it, before its
// job could start (both happen under the lock).
func (p *uidPool) leases() map[uint32]lease {
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return nil
	}
	out := map[uint32]lease{}
	for _, e := range entries {
		uid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil || !p.rng.contains(uint32(uid)) {
			continue
		}
		var l lease
		if b, err := os.ReadFile(filepath.Join(p.dir, e.Name())); err == nil {
			l.ok = json.Unmarshal(b, &l.leaseFile) == nil && l.DataDir != ""
		}
		out[uint32(uid)] = l
	}
	return out
}

type lease struct {
	leaseFile
	ok bool
}

// uidProcesses returns the pids of the live processes whose real,
// effective, saved or file-system uid is in rng, by uid. Zombies are left
// out: they hold nothing and can do nothing.
func uidProcesses(rng UIDRange) map[uint32][]int {
	out := map[uint32][]int{}
	d, err := os.Open("/proc")
	if err != nil {
		return out
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		if uid, ok := procUID(pid, rng); ok {
			out[uid] = append(out[uid], pid)
		}
	}
	return out
}

// procUID returns the first of a process's uids that lies in rng.
func procUID(pid int, rng UIDRange) (uint32, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	var uids []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "State:"); ok {
			if s := strings.TrimSpace(v); strings.HasPrefix(s, "Z") || strings.HasPrefix(s, "X") {
				return 0, false
			}
		}
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			uids = strings.Fields(v)
			break // State comes before Uid in proc_pid_status(5)
		}
	}
	for _, f := range uids {
		if id, err := strconv.ParseUint(f, 10, 32); err == nil && rng.contains(uint32(id)) {
			return uint32(id), true
		}
	}
	return 0, false
}

// killUID kills every process running under uid, which belongs to one job
// only (see uidPool), and waits up to within for them to be gone. It
// reports whether none is left. Each process is signalled through a pidfd
// taken before its uid is checked again, so a pid reused meanwhile by
// another process is never hit.
func killUID(uid uint32, within time.Duration) bool {
	one := UIDRange{First: uid, Last: uid}
	deadline := time.Now().Add(within)
	delay := 2 * time.Millisecond
	for {
		pids := uidProcesses(one)[uid]
		if len(pids) == 0 {
			return true
		}
		for _, pid := range pids {
			fd, err := unix.PidfdOpen(pid, 0)
			if errors.Is(err, unix.ENOSYS) {
				// No pidfds (before Linux 5.3): check and kill by pid, with
				// the short window for reuse that leaves.
				if got, ok := procUID(pid, one); ok && got == uid {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				continue
			}
			if err != nil {
				continue // gone
			}
			if got, ok := procUID(pid, one); ok && got == uid {
				_ = unix.PidfdSendSignal(fd, syscall.SIGKILL, nil, 0)
			}
			_ = unix.Close(fd)
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}
