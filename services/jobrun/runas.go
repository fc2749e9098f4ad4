package jobrun

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// makeDataDirs creates DataDir's directories. DataDir/jobs (output) and
// DataDir/journal stay private to the worker (0700, 0600). With jobs
// under other uids, DataDir and DataDir/home are 0711: a job can pass
// through them to its own home, but list neither.
func makeDataDirs(dataDir, jobsDir, homesDir string, id *identity) error {
	mode := os.FileMode(0o700)
	if id.mode != runAsWorker {
		mode = 0o711
	}
	// MkdirAll gives parents it creates the same mode, so they are
	// searchable too.
	if err := os.MkdirAll(homesDir, mode); err != nil {
		return fmt.Errorf("jobrun: cannot create the data directory: %w", err)
	}
	dirs := []string{homesDir}
	if id.mode != runAsWorker {
		dirs = append(dirs, dataDir)
	}
	for _, dir := range dirs {
		if err := os.Chmod(dir, mode); err != nil {
			return fmt.Errorf("jobrun: cannot set the mode of the data directory: %w", err)
		}
	}
	if err := os.MkdirAll(jobsDir, 0o700); err != nil {
		return fmt.Errorf("jobrun: cannot create the jobs directory: %w", err)
	}
	return nil
}

// checkReachable makes sure that jobs under other uids can reach their
// homes and the scripts directory: every directory on the way must be
// searchable by them. A job that could not would fail at chdir(2) or when
// its interpreter opens the script.
func checkReachable(id *identity, homesDir, scriptsDir string) error {
	real, err := filepath.EvalSymlinks(homesDir)
	if err != nil {
		return fmt.Errorf("jobrun: invalid data directory: %w", err)
	}
	if err := id.checkReachable(real); err != nil {
		return fmt.Errorf("jobrun: jobs run under their own uids and must reach their home directories in the data directory, but %w: make it searchable (chmod o+x) or choose another data directory", err)
	}
	if err := id.checkReachable(scriptsDir); err != nil {
		return fmt.Errorf("jobrun: jobs run under their own uids and must reach the scripts directory, but %w: make it searchable (chmod o+x) and its scripts readable (chmod o+r)", err)
	}
	return nil
}

// logIdentity says at start whose uid jobs run under, loudly when it
// protects nothing.
func (r *Runner) logIdentity() {
	switch r.id.mode {
	case runPerJob:
		r.log.Info("jobs run under uids of their own", "job_uids", r.id.uids.String())
	case runAsUser:
		r.log.Info("jobs run as one user", "user", r.id.user, "uid", r.id.uid)
	default:
		if r.id.uid == 0 {
			r.log.Warn("jobs run as root: they can read and signal everything of the worker and of each other; set per-job uids")
		} else {
			r.log.Warn("jobs run as the worker's uid: they can read the worker's files and each other's; run the worker as root for per-job uids", "uid", r.id.uid)
		}
	}
}

// gid returns the primary group of a job running under uid.
func (id *identity) gidFor(uid uint32) uint32 {
	switch id.mode {
	case runPerJob:
		return uid
	}
	return id.gid
}

// makeHome gives the job its home directory, its default working
// directory, made its uid's, mode 0700, so no other job can enter it. A
// script sent with the job is written into it first, as scriptName.
func (r *Runner) makeHome(dir string, uid uint32, scriptName string, script []byte) error {
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, fs.ErrExist) {
		// The remains of a failed cleanup under the job's name (not a
		// known job's: it would be in r.jobs).
		if err = os.RemoveAll(dir); err == nil {
			err = os.Mkdir(dir, 0o700)
		}
	}
	if err != nil {
		return err
	}
	chown := r.id.mode != runAsWorker
	gid := int(r.id.gidFor(uid))
	if script != nil {
		if err := writeJobScript(dir, scriptName, script, int(uid), gid, chown); err != nil {
			return fmt.Errorf("write the job's script: %w", err)
		}
	}
	if !chown {
		return nil
	}
	return os.Lchown(dir, int(uid), gid)
}

// disownHome is the end of a home directory's use by its job: an empty one
// is removed, so that most jobs leave nothing on disk; one the job left
// something in goes back to the worker, mode 0700 (whatever the job left
// inside stays its uid's, but a later job that gets the same uid cannot
// enter the directory to reach it), until the job expires.
func (r *Runner) disownHome(dir string) {
	if err := syscall.Rmdir(dir); err == nil || errors.Is(err, syscall.ENOENT) || r.id.mode == runAsWorker {
		return
	}
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() {
		return
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == r.selfUID && int(st.Gid) == r.selfGID && fi.Mode().Perm() == 0o700 {
		return
	}
	if err := os.Lchown(dir, r.selfUID, r.selfGID); err != nil {
		r.log.Error("cannot take back a job's home directory", "name", filepath.Base(dir), "error", err)
		return
	}
	_ = os.Chmod(dir, 0o700)
}

// heldUID is the uid of an ended job that is not given back yet: some of
// its processes outlived SIGKILL (a process in uninterruptible sleep).
type heldUID struct {
	lease *uidLease
	home  string
}

// endIdentity ends the job's hold on its identity, after its waiter killed
// its cgroup and reaped it. A per-job uid is given back only once none of
// the job's processes is left: an emptied v2 cgroup proves it; otherwise
// every process running under the uid is killed first, which also gets
// what left the process group (setsid) without a cgroup to hold it.
func (r *Runner) endIdentity(j *job, v2Empty bool) {
	if name := j.spec.ScriptName; name != "" {
		// The script sent with the job has served: a home with nothing
		// else in it is removed below. (A job that replaced the file with
		// a directory keeps it, as anything else it left.)
		_ = os.Remove(filepath.Join(j.home, name))
	}
	switch {
	case r.id.mode == runAsWorker:
		r.disownHome(j.home)
		return
	case j.lease == nil:
		// One user for all jobs: the uid is shared, so nothing is killed
		// by uid.
		r.disownHome(j.home)
		return
	}
	if !v2Empty && !killUID(j.lease.uid, copierDrainTimeout) {
		r.log.Error("processes of an ended job survive SIGKILL; its uid stays leased", "job_id", j.id, "uid", j.lease.uid)
		r.holdUID(heldUID{lease: j.lease, home: j.home})
		return
	}
	r.releaseUID(j.lease, j.home)
}

func (r *Runner) releaseUID(l *uidLease, home string) {
	r.disownHome(home)
	if r.onUIDRelease != nil {
		r.onUIDRelease(l.uid)
	}
	if err := l.release(); err != nil {
		r.log.Error("cannot give back a job uid", "uid", l.uid, "error", err)
	}
}

func (r *Runner) holdUID(h heldUID) {
	r.mu.Lock()
	r.held = append(r.held, h)
	r.mu.Unlock()
}

// retryHeldUIDs gives back the held uids whose processes are gone now. The
// janitor calls it.
func (r *Runner) retryHeldUIDs() {
	r.mu.Lock()
	held := r.held
	r.held = nil
	r.mu.Unlock()
	for _, h := range held {
		if killUID(h.lease.uid, 0) {
			r.releaseUID(h.lease, h.home)
		} else {
			r.holdUID(h)
		}
	}
}

// recoverUIDs runs once, in New, after load killed what the lost jobs left:
// it gives back the leases an earlier run of this data directory still held
// (the worker died while their jobs ran), once no process runs under their
// uids, killing any that still does (one that left the process group
// without a cgroup to hold it). Then it frees the leases of takers whose
// data directory is gone and whose uid no process holds.
func (r *Runner) recoverUIDs() {
	for uid, l := range r.uids.leases() {
		if !l.ok || l.DataDir != r.uids.dataDir {
			continue
		}
		if h := r.adopted[l.JobID]; h != nil && h.Leased && h.LeasedUID == uid {
			continue // its job runs on
		}
		h := heldUID{lease: &uidLease{pool: r.uids, uid: uid}}
		if validateID(l.JobID) == nil {
			h.home = filepath.Join(r.homesDir, l.JobID)
		}
		if !killUID(uid, 5*time.Second) {
			r.log.Error("processes of a lost job survive SIGKILL; its uid stays leased", "job_id", l.JobID, "uid", uid)
			r.holdUID(h)
			continue
		}
		r.releaseUID(h.lease, h.home)
		r.log.Info("uid of a lost job given back", "job_id", l.JobID, "uid", uid)
	}
	r.uids.reclaimOrphans(r.log)
}
