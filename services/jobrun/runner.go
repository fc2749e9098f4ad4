package jobrun

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Runner starts, supervises and stops jobs, and serves their output. Create
// one with New and release it with Close. All methods are safe for
// concurrent use.
type Runner struct {
	opts       Options
	log        *slog.Logger
	scriptsDir string // absolute, symlinks resolved
	jobsDir    string
	homesDir   string // the jobs' home directories, see homesDirName
	sparesDir  string // ready-made job directories, see spareDirs
	tag        string // names this DataDir's cgroup directories
	allowed    map[string]string
	cg         cgroupHost
	id         identity // whose uid jobs run under
	uids       *uidPool // per-job uids; nil unless id.mode is runPerJob
	selfUID    int      // the worker's, owner of everything but running jobs' homes
	selfGID    int

	mu     sync.Mutex // guards jobs, active, closed, held
	jobs   map[string]*job
	active int
	closed bool
	held   []heldUID // uids of ended jobs whose processes outlived SIGKILL

	// onUIDRelease, if set before the first Start, is called just before
	// a per-job uid is given back (a test hook).
	onUIDRelease func(uid uint32)

	spareMu        sync.Mutex // guards spares, sparesBuilding, sparesClosed
	spares         []string   // ready-made job directories, see spareDirs
	sparesBuilding int
	sparesClosed   bool

	crashed     atomic.Bool // test hook: behave as if the worker died
	stopJanitor chan struct{}
	janitorDone chan struct{}
	closeOnce   sync.Once
}

// job is one job. Fields above mu are set before the job is shared and never
// change; started and done are closed exactly once.
type job struct {
	id       string
	dir      string
	home     string // its home and default working directory
	spec     Spec
	started  chan struct{} // closed when spawn finished; startErr says how
	recorded chan struct{} // closed after the waiter wrote the running record
	done     chan struct{} // closed after the final state is recorded
	copied   [2]chan struct{}

	startErr error     // written before close(started)
	lease    *uidLease // its per-job uid; spawn sets it, then the waiter owns it
	out      *outputLog

	mu         sync.Mutex
	st         Status
	nrec       int64         // published index records
	complete   bool          // no more output will be published
	notify     chan struct{} // closed and replaced on every publish
	exited     bool          // leader exited: never signal pid or pgid again
	pgid       int
	startTicks uint64
	cg         *jobCgroup
	stopping   bool
	stopState  State
	stopReason string
	grace      *time.Timer
	deadline   *time.Timer
}

func (j *job) snapshotLocked() Status {
	st := j.st
	st.Spec = cloneSpec(st.Spec)
	return st
}

func (j *job) snapshot() Status {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.snapshotLocked()
}

// publish makes n index records visible to followers and wakes them.
func (j *job) publish(n, outN, errN int64) {
	j.mu.Lock()
	j.nrec = n
	j.st.StdoutBytes, j.st.StderrBytes = outN, errN
	close(j.notify)
	j.notify = make(chan struct{})
	j.mu.Unlock()
}

// New creates a Runner: it validates opts, resolves the allow-listed
// commands, detects the host's cgroup support, loads the jobs recorded in
// DataDir (jobs that were running become LOST and their leftover processes
// are killed) and starts the retention janitor.
func New(opts Options) (*Runner, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	dataDir, err := filepath.Abs(opts.DataDir)
	if err != nil {
		return nil, fmt.Errorf("jobrun: invalid data directory: %w", err)
	}
	scripts, err := filepath.Abs(opts.ScriptsDir)
	if err == nil {
		scripts, err = filepath.EvalSymlinks(scripts)
	}
	if err != nil {
		return nil, fmt.Errorf("jobrun: invalid scripts directory: %w", err)
	}
	if fi, err := os.Stat(scripts); err != nil || !fi.IsDir() {
		return nil, errors.New("jobrun: the scripts directory is not a directory")
	}
	id, err := chooseIdentity(os.Geteuid(), os.Getegid(), opts.JobUIDs, opts.JobUser)
	if err != nil {
		return nil, fmt.Errorf("jobrun: %w", err)
	}
	jobsDir := filepath.Join(dataDir, "jobs")
	homesDir := filepath.Join(dataDir, homesDirName)
	if err := makeDataDirs(dataDir, jobsDir, homesDir, &id); err != nil {
		return nil, err
	}
	if err := checkReachable(&id, homesDir, scripts); err != nil {
		return nil, err
	}
	names, explicit := opts.AllowedCommands, opts.AllowedCommands != nil
	if !explicit {
		names = defaultCommands
	}
	r := &Runner{
		opts:        opts,
		log:         opts.Logger,
		scriptsDir:  scripts,
		jobsDir:     jobsDir,
		homesDir:    homesDir,
		id:          id,
		selfUID:     os.Geteuid(),
		selfGID:     os.Getegid(),
		sparesDir:   filepath.Join(dataDir, "spares"),
		tag:         dataDirTag(dataDir),
		allowed:     resolveAllowed(names, explicit, opts.Logger),
		jobs:        make(map[string]*job),
		stopJanitor: make(chan struct{}),
		janitorDone: make(chan struct{}),
	}
	if id.mode == runPerJob {
		if r.uids, err = openUIDPool(opts.UIDLeaseDir, dataDir, id.uids); err != nil {
			return nil, err
		}
		if c := opts.Capacity; c == 0 || c > id.uids.Len() {
			r.log.Warn("the capacity allows more jobs than there are job uids; starts beyond them are refused", "job_uids", id.uids.String(), "capacity", c)
		}
	}
	r.logIdentity()
	r.cg = detectCgroups(opts.CgroupParent, dataDir, r.log)
	r.load()
	r.cg.sweep(r.log)
	if r.uids != nil {
		r.recoverUIDs()
	}
	r.openSpares()
	go r.janitor()
	return r, nil
}

// Start starts a job. It is idempotent on id: if a job with this id exists
// and its Spec equals spec, Start returns it with created false, whatever its
// state; a different Spec yields ErrConflict. Everything is validated before
// a process is spawned; on any error no process runs and nothing is left on
// disk. The process outlives ctx, which only bounds waiting for a concurrent
// Start of the same id. Safe for concurrent use.
func (r *Runner) Start(ctx context.Context, id string, spec Spec) (st Status, created bool, err error) {
	if err := validateID(id); err != nil {
		return Status{}, false, err
	}
	spec = cloneSpec(spec)
	var p *plan
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return Status{}, false, fmt.Errorf("%w: the worker is shutting down", ErrClosed)
		}
		if j := r.jobs[id]; j != nil {
			r.mu.Unlock()
			if !specEqual(&j.spec, &spec) {
				return Status{}, false, fmt.Errorf("%w: job %q exists with a different spec", ErrConflict, id)
			}
			select {
			case <-j.started:
			case <-ctx.Done():
				return Status{}, false, ctx.Err()
			}
			if j.startErr != nil {
				continue // that attempt failed and is gone; make our own
			}
			return j.snapshot(), false, nil
		}
		if p == nil {
			r.mu.Unlock()
			if err := r.checkSpec(&spec); err != nil {
				return Status{}, false, err
			}
			if p, err = r.resolve(&spec); err != nil {
				return Status{}, false, err
			}
			continue
		}
		if c := r.opts.Capacity; c > 0 && r.active >= c {
			r.mu.Unlock()
			return Status{}, false, fmt.Errorf("%w: %d jobs are running; try again later", ErrCapacity, c)
		}
		j := &job{
			id:       id,
			dir:      filepath.Join(r.jobsDir, id),
			home:     filepath.Join(r.homesDir, id),
			spec:     spec,
			started:  make(chan struct{}),
			recorded: make(chan struct{}),
			done:     make(chan struct{}),
			copied:   [2]chan struct{}{make(chan struct{}), make(chan struct{})},
			notify:   make(chan struct{}),
			st: Status{
				ID: id, Spec: spec, State: StatePending, ExitCode: -1, CreatedAt: time.Now(),
			},
		}
		r.jobs[id] = j
		r.active++
		r.mu.Unlock()
		return r.spawn(j, p)
	}
}

// lookup returns the job with this id, or ErrNotFound.
func (r *Runner) lookup(id string) (*job, error) {
	r.mu.Lock()
	j := r.jobs[id]
	r.mu.Unlock()
	if j == nil {
		return nil, fmt.Errorf("%w: no job with ID %q", ErrNotFound, id)
	}
	return j, nil
}

// startedJob returns a job whose start attempt has finished successfully.
func (r *Runner) startedJob(ctx context.Context, id string) (*job, error) {
	j, err := r.lookup(id)
	if err != nil {
		return nil, err
	}
	select {
	case <-j.started:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if j.startErr != nil {
		return nil, fmt.Errorf("%w: no job with ID %q", ErrNotFound, id)
	}
	return j, nil
}

// Stop stops a job: SIGTERM to its process group, then, after StopGrace,
// SIGKILL and cgroup.kill. It waits until the job ended or ctx is done; ctx
// bounds only the wait, never the stop sequence. Stopping a finished job
// sends nothing and returns its final status. Concurrent and repeated Stops
// share one sequence; by is recorded from the first. Safe for concurrent use.
func (r *Runner) Stop(ctx context.Context, id, by string) (Status, error) {
	j, err := r.startedJob(ctx, id)
	if err != nil {
		return Status{}, err
	}
	reason := "stopped on request"
	if by != "" {
		reason = "stopped by " + by
	}
	r.beginStop(j, StateStopped, by, reason)
	select {
	case <-j.done:
		return j.snapshot(), nil
	case <-ctx.Done():
		return j.snapshot(), ctx.Err()
	}
}

// Status returns a snapshot of the job, or ErrNotFound. Safe for concurrent
// use.
func (r *Runner) Status(id string) (Status, error) {
	j, err := r.lookup(id)
	if err != nil {
		return Status{}, err
	}
	return j.snapshot(), nil
}

// List returns a snapshot of every job known to the Runner, newest first
// (by CreatedAt, then by ID). Safe for concurrent use.
func (r *Runner) List() []Status {
	r.mu.Lock()
	jobs := slices.Collect(maps.Values(r.jobs))
	r.mu.Unlock()
	out := make([]Status, 0, len(jobs))
	for _, j := range jobs {
		out = append(out, j.snapshot())
	}
	slices.SortFunc(out, func(a, b Status) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

// Running returns the number of jobs that are starting or running, the
// number Capacity limits. Safe for concurrent use.
func (r *Runner) Running() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.active
}

// Close refuses new jobs, stops every running job (SIGTERM, then SIGKILL
// after StopGrace), waits for them and stops the retention janitor. If ctx
// ends first, the remaining jobs are killed at once and Close returns
// ctx.Err() after they are reaped. Close is idempotent and safe for
// concurrent use.
func (r *Runner) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	jobs := slices.Collect(maps.Values(r.jobs))
	r.mu.Unlock()
	r.closeOnce.Do(func() { close(r.stopJanitor) })

	var err error
	for _, j := range jobs {
		select {
		case <-j.started:
			r.beginStop(j, StateStopped, "", "stopped because the worker shut down")
		case <-ctx.Done():
		}
	}
	for _, j := range jobs {
		select {
		case <-j.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			break
		}
	}
	if err != nil {
		for _, j := range jobs {
			select {
			case <-j.started:
				r.hardKill(j)
			default:
			}
		}
		bound := time.NewTimer(2 * copierDrainTimeout)
		defer bound.Stop()
		for _, j := range jobs {
			select {
			case <-j.done:
			case <-bound.C:
				r.log.Error("jobs still running after Close", "job_id", j.id)
			}
		}
	}
	<-r.janitorDone
	r.removeSpares()
	if err == nil {
		r.cg.removeParents()
	}
	if r.uids != nil {
		// Leases still held stay on disk: the next Runner of this data
		// directory gives them back (see recoverUIDs).
		r.uids.close()
	}
	return err
}

// simulateCrash makes the Runner behave as if the worker process died after
// its running jobs were recorded: it stops the janitor and refuses new jobs,
// and its waiters reap their processes but record nothing more. Tests use it
// to hand a DataDir to a second Runner.
func (r *Runner) simulateCrash() {
	r.mu.Lock()
	r.closed = true
	jobs := slices.Collect(maps.Values(r.jobs))
	r.mu.Unlock()
	for _, j := range jobs {
		<-j.started
		if j.startErr == nil {
			<-j.recorded
		}
	}
	r.crashed.Store(true)
	r.closeOnce.Do(func() { close(r.stopJanitor) })
	<-r.janitorDone
	if r.uids != nil {
		r.uids.close() // its leases stay, as a dead worker's do
	}
}

func (r *Runner) notifyChange(st Status) {
	if r.opts.OnChange != nil && !r.crashed.Load() {
		r.opts.OnChange(st)
	}
}

// janitor deletes finished jobs after Retention. It is the Runner's only
// goroutine apart from those of running jobs.
func (r *Runner) janitor() {
	defer close(r.janitorDone)
	every := min(max(r.opts.Retention/10, 10*time.Millisecond), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-r.stopJanitor:
			return
		case now := <-t.C:
			r.expire(now)
			r.retryHeldUIDs()
		}
	}
}

// expire deletes the jobs that ended more than Retention before now.
func (r *Runner) expire(now time.Time) {
	r.mu.Lock()
	var old []*job
	for _, j := range r.jobs {
		j.mu.Lock()
		if j.st.State.Terminal() && now.Sub(j.st.EndedAt) >= r.opts.Retention {
			old = append(old, j)
		}
		j.mu.Unlock()
	}
	r.mu.Unlock()
	for _, j := range old {
		select {
		case <-j.done:
		default:
			continue // still being recorded
		}
		// Move the directories aside first, while the ID is still taken, so
		// a new job with the same ID never shares them with the deletion.
		homeTomb := filepath.Join(r.homesDir, "."+j.id+"-"+randomHex())
		if err := os.Rename(j.home, homeTomb); err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.log.Error("cannot delete an expired job", "job_id", j.id, "error", err)
			continue
		}
		tomb := filepath.Join(r.jobsDir, "."+j.id+"-"+randomHex())
		if err := os.Rename(j.dir, tomb); err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.log.Error("cannot delete an expired job", "job_id", j.id, "error", err)
			continue
		}
		r.mu.Lock()
		if r.jobs[j.id] == j {
			delete(r.jobs, j.id)
		}
		r.mu.Unlock()
		// The worker removes whatever the job left in its home, whatever
		// its modes: root is not bound by them, and a job cannot make a
		// file immutable or mount over it without capabilities.
		for _, dir := range []string{tomb, homeTomb} {
			if err := os.RemoveAll(dir); err != nil {
				r.log.Error("cannot delete an expired job", "job_id", j.id, "error", err)
			}
		}
		r.log.Debug("expired job deleted", "job_id", j.id)
	}
}

func randomHex() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// load reads every job directory. It never fails: an unreadable record
// becomes a LOST job that says why.
func (r *Runner) load() {
	entries, err := os.ReadDir(r.jobsDir)
	if err != nil {
		r.log.Error("cannot read the jobs directory", "error", err)
		return
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			_ = os.RemoveAll(filepath.Join(r.jobsDir, name)) // an interrupted deletion
			continue
		}
		if !e.IsDir() || validateID(name) != nil {
			r.log.Warn("ignoring an unexpected entry in the jobs directory", "name", name)
			continue
		}
		j := r.loadJob(name)
		r.jobs[name] = j
	}
	r.loadHomes()
}

// loadHomes deletes the home directories no known job has (remains of an
// interrupted deletion or start) and gives the others back to the worker:
// jobs that ran when the worker died are over, and their uids may go to
// other jobs.
func (r *Runner) loadHomes() {
	entries, err := os.ReadDir(r.homesDir)
	if err != nil {
		r.log.Error("cannot read the home directories", "error", err)
		return
	}
	for _, e := range entries {
		dir := filepath.Join(r.homesDir, e.Name())
		if j := r.jobs[e.Name()]; j != nil {
			r.disownHome(dir)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			r.log.Error("cannot delete a leftover home directory", "name", e.Name(), "error", err)
		}
	}
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func (r *Runner) loadJob(id string) *job {
	dir := filepath.Join(r.jobsDir, id)
	j := &job{
		id: id, dir: dir, started: closedChan(), recorded: closedChan(), done: closedChan(),
		notify: make(chan struct{}), complete: true,
	}
	rec, err := readRecord(dir)
	var st Status
	if err == nil {
		st, err = rec.status()
		if err == nil && rec.ID != id {
			err = errors.New("it belongs to another job")
		}
	}
	if err != nil {
		when := time.Now()
		if fi, serr := os.Stat(dir); serr == nil {
			when = fi.ModTime()
		}
		st = Status{
			ID: id, State: StateLost, ExitCode: -1, CreatedAt: when, EndedAt: when,
			Reason: "state file unreadable: " + describeLoadError(err),
		}
		r.log.Error("job state file unreadable", "job_id", id, "error", err)
	} else if !st.State.Terminal() {
		r.killLeftovers(&rec)
		st.State, st.Reason, st.ExitCode, st.EndedAt = StateLost, "worker restarted", -1, time.Now()
		if err := writeRecord(dir, toRecord(st, rec.StartTicks, nil), true); err != nil {
			r.log.Error("cannot record a lost job", "job_id", id, "error", err)
		}
		r.log.Warn("job lost in a worker restart", "job_id", id)
	}
	j.spec = cloneSpec(st.Spec)
	n, outN, errN, err := scanIndex(filepath.Join(dir, indexFile))
	if err == nil {
		j.nrec = n
		st.StdoutBytes, st.StderrBytes = outN, errN
	}
	j.st = st
	return j
}

func describeLoadError(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "job.json is missing"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "job.json is truncated"
	case errors.Is(err, errEmptyRecord):
		return "job.json is empty"
	}
	return unwrapPathError(err).Error()
}

// scanIndex returns the number of complete records of an index file and the
// stream sizes they cover. A torn last record (a crash mid-write) is ignored.
func scanIndex(path string) (n, outN, errN int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, 0, err
	}
	n = fi.Size() / indexRecordSize
	if n == 0 {
		return 0, 0, 0, nil
	}
	var b [indexRecordSize]byte
	if _, err := f.ReadAt(b[:], (n-1)*indexRecordSize); err != nil {
		return 0, 0, 0, err
	}
	last := decodeRecord(b[:])
	outN, errN = int64(last.stdoutBefore), int64(last.stderrBefore)
	if last.stream == StreamStderr {
		errN += int64(last.length)
	} else {
		outN += int64(last.length)
	}
	return n, outN, errN, nil
}

// killLeftovers kills what a job of an earlier worker run left behind. A
// cgroup is killed whole; without one the process group is signalled only
// if its leader is provably the same process (same start time), because the
// recorded pid may since belong to someone else.
func (r *Runner) killLeftovers(rec *record) {
	ours := func(dir string) bool {
		parent := filepath.Dir(dir)
		return filepath.Base(dir) == rec.ID && (filepath.Base(parent) == r.tag || parent == r.cg.v2Parent)
	}
	for _, dir := range append([]string{rec.CgroupV2}, rec.CgroupV1...) {
		if dir != "" && ours(dir) {
			killCgroupDir(dir)
			removeCgroupDir(dir)
		}
	}
	if rec.PID > 1 && rec.StartTicks != 0 {
		if ticks, err := procStartTicks(rec.PID); err == nil && ticks == rec.StartTicks {
			if err := signalGroup(rec.PID, syscall.SIGKILL); err != nil {
				r.log.Warn("cannot kill a leftover job", "job_id", rec.ID, "error", err)
			}
		}
	}
}
