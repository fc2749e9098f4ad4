package jobrun

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// Options configure a Runner. The zero value of each optional field selects
// the documented default. Options are read once by New.
type Options struct {
	// DataDir holds the journal of job records (DataDir/journal), the
	// output of jobs that wrote any (DataDir/jobs/<id>/) and the jobs' home
	// directories (DataDir/home/<id>). Required.
	DataDir string
	// ScriptsDir is the only place scripts, script-dir commands and working
	// directories are taken from. Required.
	ScriptsDir string
	// AllowedCommands are command names resolved on the worker's PATH at New.
	// nil selects sh, bash, python3, ruby, perl and node; names that cannot be
	// found are skipped. Executables inside ScriptsDir are always allowed.
	AllowedCommands []string
	// InheritEnv names worker environment variables passed to jobs. By
	// default nothing from the worker's environment reaches a job.
	InheritEnv []string
	// InheritedValues, if not nil, are the values of InheritEnv's names to
	// pass, instead of this process's environment: a keeper gets them from
	// the worker that configures it, so that a rotated value reaches new
	// jobs once the worker restarts.
	InheritedValues map[string]string
	// StopGrace is the time between SIGTERM and SIGKILL. Default 10s.
	StopGrace time.Duration
	// OutputLimit caps the stored output of a job (both streams plus 32
	// bytes of index per write). Default 64 MiB.
	OutputLimit int64
	// Retention is how long finished jobs are kept. Default 24h.
	Retention time.Duration
	// Capacity caps the number of jobs running at once; 0 means unlimited.
	Capacity int
	// CgroupParent is the cgroup v2 directory job cgroups are created in.
	// "" picks a directory under the cgroup v2 mount named after DataDir;
	// "-" disables cgroups (process groups only).
	CgroupParent string
	// JobUIDs, if set, runs every job under a uid of its own leased from
	// this range (gid = uid, no supplementary groups), given back only when
	// none of the job's processes is left. It needs root. The job's home
	// directory is then DataDir/home/<id>, owned by that uid with mode 0700;
	// DataDir and DataDir/home become 0711, and every parent of them and of
	// ScriptsDir must be searchable by others, or New fails.
	JobUIDs UIDRange
	// JobUser, if set, runs every job as this account instead (see
	// LookupUser). It needs root; JobUIDs and JobUser are exclusive. With
	// neither, jobs run as the worker's own uid.
	JobUser *User
	// UIDLeaseDir is the host-wide directory where per-job uids are leased,
	// shared by every worker of the host. Default DefaultUIDLeaseDir.
	UIDLeaseDir string
	// OnChange, if set, is called after every state change of a job. It is
	// never called with a lock held, but it runs on the job's goroutines and
	// must return quickly.
	OnChange func(Status) `json:"-"`
	// LostReason is the reason of a job found running in the journal
	// whose process is not carried on: LOST. Default "worker restarted".
	LostReason string
	// Adopt are running jobs handed over by the Runner of the process
	// image this one replaced (Runner.Handoff, then exec). New carries
	// them on where their records and processes agree; any other is LOST.
	Adopt []Handoff `json:"-"`
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger `json:"-"`
}

var defaultCommands = []string{"sh", "bash", "python3", "ruby", "perl", "node"}

func (o *Options) setDefaults() error {
	if o.DataDir == "" {
		return errors.New("jobrun: Options.DataDir is required")
	}
	if o.ScriptsDir == "" {
		return errors.New("jobrun: Options.ScriptsDir is required")
	}
	if o.StopGrace <= 0 {
		o.StopGrace = 10 * time.Second
	}
	if o.OutputLimit <= 0 {
		o.OutputLimit = 64 << 20
	}
	if o.Retention <= 0 {
		o.Retention = 24 * time.Hour
	}
	if o.Capacity < 0 {
		return fmt.Errorf("jobrun: Options.Capacity must not be negative, got %d", o.Capacity)
	}
	if o.LostReason == "" {
		o.LostReason = "worker restarted"
	}
	if o.UIDLeaseDir == "" {
		o.UIDLeaseDir = DefaultUIDLeaseDir
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// CheckOptions reports whether New would accept opts as far as can be told
// without touching the data directory: a process about to hand its jobs to
// another image with these options checks them first.
func CheckOptions(opts Options) error {
	if err := opts.setDefaults(); err != nil {
		return err
	}
	scripts, err := filepath.Abs(opts.ScriptsDir)
	if err == nil {
		scripts, err = filepath.EvalSymlinks(scripts)
	}
	if err != nil {
		return fmt.Errorf("jobrun: invalid scripts directory: %w", err)
	}
	if fi, err := os.Stat(scripts); err != nil || !fi.IsDir() {
		return errors.New("jobrun: the scripts directory is not a directory")
	}
	if _, err := chooseIdentity(os.Geteuid(), os.Getegid(), opts.JobUIDs, opts.JobUser); err != nil {
		return fmt.Errorf("jobrun: %w", err)
	}
	return nil
}
