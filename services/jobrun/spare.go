package jobrun

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// spareDirs is how many job directories the Runner keeps built ahead.
//
// A job directory is six file-system objects (the directory, three empty
// output files, an empty record and the job's future home, see makeHome).
// Creating them costs about as much
// as starting /bin/true itself on a VM disk, while renaming a ready-made
// directory into place is one cheap metadata update. So the Runner keeps a
// few built ahead in DataDir/spares (beside DataDir/jobs, on the same file
// system), and Start renames one into place. A burst of starts that empties
// the pool builds directories in line, as before. Spares are never shared:
// each is renamed away exactly once.
const spareDirs = 2

// buildJobDir creates dir with empty output files, an empty record (see
// writeFirstRecord) and the job's home directory, which Start moves to
// DataDir/home (see makeHome), all private to the worker's user (0700 and
// 0600).
func buildJobDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(dir, spareHome), 0o700); err != nil {
		return err
	}
	for _, name := range []string{stdoutFile, stderrFile, indexFile, recordFile} {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}

// takeSpare returns a ready-made job directory, or "" if none is left.
func (r *Runner) takeSpare() string {
	r.spareMu.Lock()
	defer r.spareMu.Unlock()
	n := len(r.spares)
	if n == 0 {
		return ""
	}
	dir := r.spares[n-1]
	r.spares = r.spares[:n-1]
	return dir
}

// refillSpares builds spare job directories up to spareDirs. Waiters call
// it after a job ended, off the path of whoever follows the job; New calls
// it once. Concurrent calls never overfill the pool.
func (r *Runner) refillSpares() {
	for {
		r.spareMu.Lock()
		if r.sparesClosed || len(r.spares)+r.sparesBuilding >= spareDirs {
			r.spareMu.Unlock()
			return
		}
		r.sparesBuilding++
		r.spareMu.Unlock()

		dir := filepath.Join(r.sparesDir, randomHex())
		err := buildJobDir(dir)
		r.spareMu.Lock()
		r.sparesBuilding--
		keep := err == nil && !r.sparesClosed
		if keep {
			r.spares = append(r.spares, dir)
		}
		r.spareMu.Unlock()
		if !keep {
			// Without a spare, Start builds directories in line; a
			// failure here is only logged.
			if err != nil {
				r.log.Warn("cannot build a spare job directory", "error", err)
			}
			_ = os.RemoveAll(dir)
			return
		}
	}
}

// removeSpares deletes the spare directories and stops refilling. Spares
// left by a crash are deleted by the next New (see openSpares).
func (r *Runner) removeSpares() {
	r.spareMu.Lock()
	r.sparesClosed = true
	r.spares = nil
	r.spareMu.Unlock()
	if err := os.RemoveAll(r.sparesDir); err != nil {
		r.log.Warn("cannot remove the spare job directories", "error", err)
	}
}

// openSpares empties the spares directory, left over by an earlier run, and
// builds the first spares. Without it Start builds every directory in line.
func (r *Runner) openSpares() {
	if err := os.RemoveAll(r.sparesDir); err != nil {
		r.log.Warn("cannot clear the spare job directories", "error", err)
		r.sparesClosed = true
		return
	}
	if err := os.Mkdir(r.sparesDir, 0o700); err != nil {
		r.log.Warn("cannot create the spare job directories", "error", err)
		r.sparesClosed = true
		return
	}
	r.refillSpares()
}

// makeJobDir gives the job its directory: a spare renamed into place, or one
// built now.
func (r *Runner) makeJobDir(dir string) error {
	if spare := r.takeSpare(); spare != "" {
		err := os.Rename(spare, dir)
		if err == nil {
			return nil
		}
		// The job's name is taken (the remains of a failed cleanup, see
		// below) or the spare is broken: build in line.
		_ = os.RemoveAll(spare)
	}
	err := buildJobDir(dir)
	if errors.Is(err, fs.ErrExist) {
		// Not a known job (it would be in r.jobs): the remains of a failed
		// cleanup. Start afresh.
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		err = buildJobDir(dir)
	}
	return err
}
