package jobrun

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
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
	jobsDir    string // jobs' output, DataDir/jobs/<id>, made on a job's first byte
	homesDir   string // the jobs' home directories, see homesDirName
	tag        string // names this DataDir's cgroup directories
	allowed    map[string]string
	cg         cgroupHost
	id         identity // whose uid jobs run under
	uids       *uidPool // per-job uids; nil unless id.mode is runPerJob
	selfUID    int      // the worker's, owner of everything but running jobs' homes
	selfGID    int
	jl         *journal

	mu     sync.Mutex // guards jobs, active, closed, held
	jobs   map[string]entry
	active int
	closed bool
	held   []heldUID // uids of ended jobs whose processes outlived SIGKILL

	// onUIDRelease, if set before the first Start, is called just before
	// a per-job uid is given back (a test hook).
	onUIDRelease func(uid uint32)

	// exitMu orders Handoff against waiters: a waiter finishes a job
	// under its read lock, and once handingOff is set leaves exits alone.
	exitMu     sync.RWMutex
	handingOff bool
	adopted    map[string]*Handoff // Options.Adopt by job ID, until New ends

	crashed     atomic.Bool // test hook: behave as if the worker died
	stopJanitor chan struct{}
	janitorDone chan struct{}
	closeOnce   sync.Once
}

// entry is a job of Runner.jobs. While the job starts, runs and ends it is
// the job itself; once it is over only its end record is kept (rec, j nil),
// a few hundred bytes that Status, List and Output decode when asked, so
// that the jobs of a long retention cost little memory.
type entry struct {
	j   *job
	rec string
}

// job is one job. Fields above mu are set before the job is shared and never
// change; started and done are closed exactly once.
type job struct {
	id       string
	dir      string // its output, created on its first byte
	home     string // its home and default working directory
	spec     Spec
	started  chan struct{} // closed when spawn finished; startErr says how
	recorded chan struct{} // closed after the waiter wrote the running record
	done     chan struct{} // closed after the final state is durable and reported
	copied   [2]chan struct{}

	startErr error     // written before close(started)
	lease    *uidLease // its per-job uid; spawn sets it, then the waiter owns it
	out      *outputLog
	// rec is the job's last record in the journal, guarded by the
	// journal's lock: a rewrite of the journal copies it.
	rec string

	mu         sync.Mutex
	st         Status
	nrec       int64         // published index records
	complete   bool          // the final state is set; no more output will be published
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
	killAt     time.Time // when grace fires
	deadlineAt time.Time // when deadline fires

	// pipes are the read ends of stdout and stderr, read by the copiers;
	// kept[i] says the copier of pipes[i] returned for a Handoff and left
	// it open.
	pipes [2]*os.File
	kept  [2]bool
}

func (j *job) snapshotLocked() Status {
	st := j.st
	st.Spec = cloneSpec(st.Spec)
	if !st.State.Terminal() {
		st.Usage.Wall = wallTime(&st, time.Now())
	}
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

// status returns the entry's current Status.
func (e entry) status() Status {
	if e.j != nil {
		return e.j.snapshot()
	}
	rec, err := unmarshalRecord(e.rec)
	if err != nil {
		// Every kept record was made or checked by this Runner; this is
		// only a guard.
		return Status{ID: recordID(e.rec), State: StateLost, ExitCode: -1, Reason: "the worker's record of the job is unreadable"}
	}
	return rec.st
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
		tag:         dataDirTag(dataDir),
		allowed:     resolveAllowed(names, explicit, opts.Logger),
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
	jl, last, damaged, err := openJournal(dataDir, r.log)
	if err != nil {
		if r.uids != nil {
			r.uids.close()
		}
		return nil, err
	}
	r.jl = jl
	r.logIdentity()
	r.cg = detectCgroups(opts.CgroupParent, dataDir, r.log)
	r.adopted = make(map[string]*Handoff, len(opts.Adopt))
	for i := range opts.Adopt {
		r.adopted[opts.Adopt[i].Status.ID] = &opts.Adopt[i]
	}
	r.load(last, damaged)
	r.cg.sweep(r.log, r.adopted)
	if r.uids != nil {
		r.recoverUIDs()
	}
	// The jobs are looked up before any resumes: a resumed job that had
	// already exited ends at once and rewrites its entry in r.jobs.
	carried := make(map[*job]*Handoff, len(r.adopted))
	for id, h := range r.adopted {
		carried[r.jobs[id].j] = h
	}
	r.adopted = nil
	for j, h := range carried {
		r.resume(j, h)
		r.log.Info("job carried on from the previous image", "job_id", j.id, "pid", h.Status.PID)
	}
	// Ready-made job directories of workers before the journal.
	_ = os.RemoveAll(filepath.Join(dataDir, "spares"))
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
	script, err := takeScript(&spec)
	if err != nil {
		return Status{}, false, err
	}
	var p *plan
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return Status{}, false, fmt.Errorf("%w: the worker is shutting down", ErrClosed)
		}
		if e, ok := r.jobs[id]; ok {
			r.mu.Unlock()
			if e.j == nil {
				st := e.status()
				if !specEqual(&st.Spec, &spec) {
					return Status{}, false, fmt.Errorf("%w: job %q exists with a different spec", ErrConflict, id)
				}
				return st, false, nil
			}
			j := e.j
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
			p.script = script
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
		r.jobs[id] = entry{j: j}
		r.active++
		r.mu.Unlock()
		return r.spawn(j, p)
	}
}

// lookup returns the job with this id, or ErrNotFound.
func (r *Runner) lookup(id string) (entry, error) {
	r.mu.Lock()
	e, ok := r.jobs[id]
	r.mu.Unlock()
	if !ok {
		return entry{}, fmt.Errorf("%w: no job with ID %q", ErrNotFound, id)
	}
	return e, nil
}

// startedJob returns a job whose start attempt has finished successfully.
func (r *Runner) startedJob(ctx context.Context, id string) (entry, error) {
	e, err := r.lookup(id)
	if err != nil || e.j == nil {
		return e, err
	}
	select {
	case <-e.j.started:
	case <-ctx.Done():
		return entry{}, ctx.Err()
	}
	if e.j.startErr != nil {
		return entry{}, fmt.Errorf("%w: no job with ID %q", ErrNotFound, id)
	}
	return e, nil
}

// Stop stops a job: SIGTERM to its process group, then, after StopGrace,
// SIGKILL and cgroup.kill. It waits until the job ended or ctx is done; ctx
// bounds only the wait, never the stop sequence. Stopping a finished job
// sends nothing and returns its final status. Concurrent and repeated Stops
// share one sequence; by is recorded from the first. Safe for concurrent use.
func (r *Runner) Stop(ctx context.Context, id, by string) (Status, error) {
	e, err := r.startedJob(ctx, id)
	if err != nil {
		return Status{}, err
	}
	j := e.j
	if j == nil {
		return e.status(), nil
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

// Status returns a snapshot of the job, or ErrNotFound. For a running job
// whose cgroup measures CPU and memory, the snapshot's Usage is read from
// the cgroup now; otherwise it is the last one known. Safe for concurrent
// use.
func (r *Runner) Status(id string) (Status, error) {
	e, err := r.lookup(id)
	if err != nil {
		return Status{}, err
	}
	if e.j == nil {
		return e.status(), nil
	}
	return r.liveStatus(e.j), nil
}

// liveStatus is the job's snapshot with a fresh reading of its cgroup
// while it runs. The reading is done without the job's lock and kept only
// if the job has not ended meanwhile: its end's own reading is final.
func (r *Runner) liveStatus(j *job) Status {
	j.mu.Lock()
	st, cg := j.snapshotLocked(), j.cg
	j.mu.Unlock()
	if st.State != StateRunning {
		return st
	}
	use, ok := cg.usage()
	if !ok {
		return st
	}
	j.mu.Lock()
	if j.st.State == StateRunning {
		j.st.Usage = use
	}
	j.mu.Unlock()
	use.Wall = st.Usage.Wall
	st.Usage = use
	return st
}

// List returns a snapshot of every job known to the Runner, newest first
// (by CreatedAt, then by ID). Safe for concurrent use.
func (r *Runner) List() []Status {
	r.mu.Lock()
	entries := make([]entry, 0, len(r.jobs))
	for _, e := range r.jobs {
		entries = append(entries, e)
	}
	r.mu.Unlock()
	out := make([]Status, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.status())
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

// liveJobs returns the jobs that are not over yet.
func (r *Runner) liveJobs() []*job {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*job
	for _, e := range r.jobs {
		if e.j != nil {
			out = append(out, e.j)
		}
	}
	return out
}

// Close refuses new jobs, stops every running job (SIGTERM, then SIGKILL
// after StopGrace), waits for them and stops the retention janitor. If ctx
// ends first, the remaining jobs are killed at once and Close returns
// ctx.Err() after they are reaped. Close is idempotent and safe for
// concurrent use.
func (r *Runner) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	jobs := r.liveJobs()
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
	// A waiter that outlived the bounded wait above fails to record its
	// job's end, which the next Runner then reports LOST.
	r.jl.close()
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
	r.mu.Unlock()
	r.awaitRecorded()
	r.crashed.Store(true)
	r.closeOnce.Do(func() { close(r.stopJanitor) })
	<-r.janitorDone
	if r.uids != nil {
		r.uids.close() // its leases stay, as a dead worker's do
	}
}

// awaitRecorded waits until every live job's start attempt is over and a
// started job's running record is written.
func (r *Runner) awaitRecorded() {
	for _, j := range r.liveJobs() {
		<-j.started
		if j.startErr == nil {
			<-j.recorded
		}
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

// expire deletes the jobs that ended more than Retention before now, and
// rewrites the journal once their records dominate it.
func (r *Runner) expire(now time.Time) {
	var old []string
	r.mu.Lock()
	for id, e := range r.jobs {
		// A job in its *job form is not over yet (see wait).
		if e.j == nil && now.Sub(recordEndedAt(e.rec)) >= r.opts.Retention {
			old = append(old, id)
		}
	}
	r.mu.Unlock()
	if len(old) == 0 {
		return
	}
	var gone []string
	var tombs []string
	for _, id := range old {
		// Move the directories aside first, while the ID is still taken, so
		// a new job with the same ID never shares them with the deletion.
		ok := true
		for _, dir := range []string{r.homesDir, r.jobsDir} {
			tomb := filepath.Join(dir, "."+id+"-"+randomHex())
			err := os.Rename(filepath.Join(dir, id), tomb)
			switch {
			case err == nil:
				tombs = append(tombs, tomb)
			case !errors.Is(err, fs.ErrNotExist):
				r.log.Error("cannot delete an expired job", "job_id", id, "error", err)
				ok = false
			}
			if !ok {
				break
			}
		}
		if ok {
			gone = append(gone, id)
		}
	}
	r.forget(gone, nil)
	// The worker removes whatever the job left in its home, whatever
	// its modes: root is not bound by them, and a job cannot make a
	// file immutable or mount over it without capabilities.
	for _, dir := range tombs {
		if err := os.RemoveAll(dir); err != nil {
			r.log.Error("cannot delete an expired job", "name", filepath.Base(dir), "error", err)
		}
	}
	for _, id := range gone {
		r.log.Debug("expired job deleted", "job_id", id)
	}
	if err := r.compact(false); err != nil {
		r.log.Error("cannot rewrite the job journal", "error", err)
	}
}

// forget removes jobs from the Runner and appends their drop records, in
// one step under the journal lock, so that a rewrite of the journal sees
// either the jobs or their drops. then, if set, runs in the same step, with
// r.mu held. The drops are not synced: a job they fail to drop after a
// machine crash is dropped again (expired) or reported LOST (never started).
func (r *Runner) forget(ids []string, then func()) {
	if len(ids) == 0 && then == nil {
		return
	}
	payloads := make([][]byte, len(ids))
	for i, id := range ids {
		rec := jobRecord{kind: kindDrop, st: Status{ID: id}}
		payloads[i] = rec.marshal(nil)
	}
	remove := func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, id := range ids {
			delete(r.jobs, id)
		}
		if then != nil {
			then()
		}
	}
	if _, err := r.jl.append(payloads, remove); err != nil {
		r.log.Error("cannot record the deletion of jobs; they may come back after a restart", "error", err)
	}
}

// compact rewrites the journal with the last record of every kept job when
// dead records make up most of it, or always with force.
func (r *Runner) compact(force bool) error {
	r.jl.mu.Lock()
	defer r.jl.mu.Unlock()
	r.mu.Lock()
	live := make([]string, 0, len(r.jobs))
	var size int64
	for _, e := range r.jobs {
		rec := e.rec
		if e.j != nil {
			rec = e.j.rec // "" before its first record: appended after us
		}
		if rec != "" {
			live = append(live, rec)
			size += frameSize(rec)
		}
	}
	r.mu.Unlock()
	if !force && (r.jl.size < compactMin || r.jl.size <= 2*size) {
		return nil
	}
	return r.jl.rewriteLocked(live)
}

func randomHex() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// load makes the Runner's jobs of the journal's records: a job whose last
// record is a start record was cut short and becomes LOST, once what it
// left running is killed; a job that ended more than Retention ago is
// deleted. It also takes in the job.json records of workers before the
// journal, and deletes output directories no record names. It never fails:
// what cannot be read is logged, or becomes a LOST job that says why.
func (r *Runner) load(last map[string]string, damaged bool) {
	now := time.Now()
	verified := make(map[string]bool, len(r.adopted))
	var (
		appends [][]byte
		legacy  []string // job.json files taken into the journal
	)
	entries, err := os.ReadDir(r.jobsDir)
	if err != nil {
		r.log.Error("cannot read the jobs directory", "error", err)
	}
	for _, e := range entries {
		name := e.Name()
		dir := filepath.Join(r.jobsDir, name)
		if strings.HasPrefix(name, ".") {
			_ = os.RemoveAll(dir) // an interrupted deletion
			continue
		}
		if !e.IsDir() || validateID(name) != nil {
			r.log.Warn("ignoring an unexpected entry in the jobs directory", "name", name)
			continue
		}
		if _, ok := last[name]; ok {
			continue
		}
		rec, err := readLegacy(dir, name)
		if errors.Is(err, fs.ErrNotExist) {
			// Output of a job whose start record a machine crash took:
			// nobody can ask for it.
			_ = os.RemoveAll(dir)
			continue
		}
		if err != nil {
			r.log.Error("job state file unreadable", "job_id", name, "error", err)
		}
		if n, outN, errN, err := scanIndex(filepath.Join(dir, indexFile)); err == nil {
			rec.indexRecords, rec.st.StdoutBytes, rec.st.StderrBytes = n, outN, errN
		}
		// job.json holds no boot id: its pid may be of an earlier boot.
		rec.otherBoot = bootUnknown
		// Into the journal by the rewrite below; a running one is made
		// LOST first.
		legacy = append(legacy, filepath.Join(dir, legacyRecordFile))
		last[name] = string(rec.marshal(nil))
	}
	for _, id := range slices.Collect(maps.Keys(last)) {
		rec, err := unmarshalRecord(last[id])
		if err != nil {
			continue // checked by openJournal
		}
		if h := r.adopted[id]; h != nil {
			if rec.kind == kindStart && adoptable(h, &rec) {
				verified[id] = true
				continue // carried on (see adopt)
			}
			r.log.Warn("a job handed over is not the one recorded, or its process is gone; not adopting it", "job_id", id)
			r.drop(h)
		}
		switch {
		case rec.kind == kindStart:
			r.killLeftovers(&rec)
			n, outN, errN, _ := scanIndex(filepath.Join(r.jobsDir, id, indexFile))
			rec.kind, rec.indexRecords, rec.st.StdoutBytes, rec.st.StderrBytes = kindEnd, n, outN, errN
			rec.st.State, rec.st.Reason, rec.st.ExitCode, rec.st.EndedAt = StateLost, r.opts.LostReason, -1, now
			p := rec.marshal(nil)
			appends = append(appends, p)
			last[id] = string(p)
			r.log.Warn("job lost in a worker restart", "job_id", id)
		case now.Sub(rec.st.EndedAt) >= r.opts.Retention:
			// Its home goes with the other unknown ones (loadHomes).
			dropped := jobRecord{kind: kindDrop, st: Status{ID: id}}
			appends = append(appends, dropped.marshal(nil))
			delete(last, id)
			_ = os.RemoveAll(filepath.Join(r.jobsDir, id))
		}
	}
	r.jobs = make(map[string]entry, len(last))
	for _, p := range last {
		r.jobs[recordID(p)] = entry{rec: p}
	}
	for id, h := range r.adopted {
		if !verified[id] {
			r.log.Warn("a job handed over has no record; not adopting it", "job_id", id)
			r.drop(h)
			continue
		}
		r.jobs[id] = entry{j: r.adopt(h, last[id])}
		r.active++
	}
	switch {
	case damaged || len(legacy) > 0:
		// Rewritten rather than appended to: an append after damage would
		// be lost behind it, and job.json records are deleted only once
		// the journal holds them durably.
		if err := r.compact(true); err != nil {
			r.log.Error("cannot rewrite the job journal", "error", err)
			legacy = nil
		}
	case len(appends) > 0:
		ticket, err := r.jl.append(appends, nil)
		if err == nil {
			err = r.jl.waitDurable(ticket)
		}
		if err != nil {
			r.log.Error("cannot record the jobs lost in a worker restart", "error", err)
		}
		if err := r.compact(err != nil); err != nil {
			r.log.Error("cannot rewrite the job journal", "error", err)
		}
	}
	for _, file := range legacy {
		_ = os.Remove(file)
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
		if known, ok := r.jobs[e.Name()]; ok {
			if known.j == nil { // an adopted job still runs in its home
				r.disownHome(dir)
			}
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			r.log.Error("cannot delete a leftover home directory", "name", e.Name(), "error", err)
		}
	}
}

// killLeftovers kills what a job of an earlier worker run left behind. A
// cgroup is killed whole (its name is ours, and it does not outlive a
// reboot); without one the process group is signalled only if its leader
// is provably the same process (same boot and start time), because the
// recorded pid may since belong to someone else.
func (r *Runner) killLeftovers(rec *jobRecord) {
	id := rec.st.ID
	ours := func(dir string) bool {
		parent := filepath.Dir(dir)
		return filepath.Base(dir) == id && (filepath.Base(parent) == r.tag || parent == r.cg.v2Parent)
	}
	for _, dir := range append([]string{rec.cgroupV2}, rec.cgroupV1...) {
		if dir != "" && ours(dir) {
			killCgroupDir(dir)
			removeCgroupDir(dir)
		}
	}
	if recordedProcessAlive(rec) {
		if err := signalGroup(rec.st.PID, syscall.SIGKILL); err != nil {
			r.log.Warn("cannot kill a leftover job", "job_id", id, "error", err)
		}
	}
}
