// Package keeper keeps a worker's jobs alive across restarts of the worker.
//
// A keeper is a process of the baton binary (`baton keeper`), one per
// worker data directory, started by the worker when none runs. It owns the
// job runtime (a jobrun.Runner): it is the parent of every job, holds their
// pipes, writes their output and records, and enforces timeouts, output
// caps and stops in progress, whether a worker process is there or not.
// The worker's API process reaches it over a unix socket in the data
// directory (Client), and can be killed, restarted or upgraded without
// touching a job. The keeper itself is upgraded by executing the new
// binary in place: the same pid, with its listener, lock, and running jobs'
// pipes and process handles carried across the exec.
package keeper

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	keeperv1 "github.com/baton-run/baton/gen/baton/keeper/v1"
	"github.com/baton-run/baton/gen/baton/keeper/v1/keeperv1connect"
	"github.com/baton-run/baton/services/jobrun"
)

// ErrRunning means another keeper already serves the data directory.
var ErrRunning = errors.New("a keeper already serves this data directory")

// handoff is what a keeper is given on its standard input: by the worker
// that starts it, the options only; by the keeper image it replaces, also
// the descriptors it carries across the exec.
type handoff struct {
	Executable string          `json:"executable"`
	Options    json.RawMessage `json:"options"`
	// ListenerFD and LockFD are descriptors inherited across an exec; 0
	// when the keeper is new.
	ListenerFD int `json:"listener_fd,omitempty"`
	LockFD     int `json:"lock_fd,omitempty"`
	// Jobs are the running jobs carried across an exec.
	Jobs []jobrun.Handoff `json:"jobs,omitempty"`
}

// Keeper is a running keeper process's state.
type Keeper struct {
	dir        string
	executable string
	options    json.RawMessage
	runner     *jobrun.Runner
	build      string
	digest     string
	pid        int
	log        *slog.Logger
	watchers   watchers
	lock       *os.File
	listener   net.Listener

	// leaving is closed when the keeper ends or executes another image:
	// Watch streams end with it.
	leaving   chan struct{}
	leaveOnce sync.Once

	mu      sync.Mutex
	next    *handoff // an upgrade asked for
	request chan struct{}
}

// Run is the keeper process: it reads its handoff from in, takes the data
// directory's keeper lock, opens the runtime and serves the socket until
// ctx ends (the jobs are then stopped: a decommission), Shutdown is called,
// or an upgrade executes another image (Run does not return then). It
// returns ErrRunning if another keeper holds the lock.
func Run(ctx context.Context, dataDir string, in io.Reader, logger *slog.Logger) error {
	// Descriptors the worker inherited from whoever started it must not
	// reach the jobs; the ones a handoff names are used in this process.
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	h, opts, err := readHandoff(in)
	if err != nil {
		return err
	}
	// Standard input was the handoff (a memfd after an exec): nothing
	// else may read it, and no job may inherit it.
	if null, err := os.Open(os.DevNull); err == nil {
		_ = unix.Dup2(int(null.Fd()), 0)
		_ = null.Close()
	}
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}
	if opts.DataDir != "" && filepath.Clean(opts.DataDir) != dir {
		return fmt.Errorf("keeper: options for data directory %s given to the keeper of %s", opts.DataDir, dir)
	}
	opts.DataDir = dir
	if err := checkDataDir(dir); err != nil {
		return err
	}
	k := &Keeper{
		dir:        dir,
		executable: h.Executable,
		options:    h.Options,
		build:      Build(),
		digest:     digest(h.Options),
		pid:        os.Getpid(),
		log:        logger,
		leaving:    make(chan struct{}),
		request:    make(chan struct{}, 1),
	}
	if k.lock, err = takeLock(dir, h.LockFD); err != nil {
		return err
	}
	opts.Logger = logger
	opts.OnChange = k.changed
	// A keeper that finds jobs running in the journal took over from one
	// that ended without handing them over.
	opts.LostReason = "worker restarted: its keeper ended while the job ran (killed, crashed, or the machine restarted)"
	opts.Adopt = h.Jobs
	if k.runner, err = jobrun.New(opts); err != nil {
		return err
	}
	if h.ListenerFD > 0 {
		k.listener, err = inheritListener(h.ListenerFD)
	} else {
		k.listener, err = listen(dir)
	}
	if err != nil {
		_ = k.runner.Close(context.Background())
		return err
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	mux := http.NewServeMux()
	// Nothing is compressed on a unix socket: gzip would cost the keeper
	// more CPU per job than the rest of the call.
	// A request is a spec (at most 1 MiB with its script through the
	// API) or a handoff's options: maxRequest bounds what any caller
	// makes the keeper read.
	mux.Handle(keeperv1connect.NewKeeperServiceHandler(&server{k: k}, connect.WithCompression("gzip", nil, nil),
		connect.WithReadMaxBytes(maxRequest)))
	srv := &http.Server{
		Handler: mux, Protocols: &protocols, ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(k.listener) }()
	logger.Info("keeper serving", "data_dir", dir, "pid", k.pid, "build", k.build, "adopted_jobs", len(h.Jobs))

	upgrade := make(chan os.Signal, 1)
	signal.Notify(upgrade, unix.SIGUSR2)
	defer signal.Stop(upgrade)
	idle := time.NewTicker(time.Second)
	defer idle.Stop()
	var idleSince time.Time
	for {
		select {
		case <-ctx.Done():
			logger.Info("keeper stopping every job and ending")
			err := k.runner.Close(context.Background())
			k.end(srv)
			return err
		case err := <-served:
			k.leave()
			_ = k.runner.Close(context.Background())
			return err
		case <-upgrade:
			if err := k.Upgrade(); err != nil {
				logger.Error("cannot upgrade the keeper", "error", err)
			}
			continue
		case now := <-idle.C:
			// A keeper with no job and no worker (a worker follows the
			// change feed while it runs) has nothing to keep.
			if k.runner.Running() > 0 || k.watchers.count() > 0 {
				idleSince = time.Time{}
				continue
			}
			if idleSince.IsZero() {
				idleSince = now
			}
			if now.Sub(idleSince) < IdleExit {
				continue
			}
			logger.Info("keeper idle: no job and no worker; ending", "idle_for", IdleExit.String())
			k.end(srv)
			return k.runner.Close(context.Background())
		case <-k.request:
		}
		k.mu.Lock()
		next := k.next
		k.mu.Unlock()
		if next == nil { // Shutdown: the jobs are over
			k.end(srv)
			return nil
		}
		return k.exec(srv, next)
	}
}

// maxRequest is the largest request message a keeper reads.
const maxRequest = 4 << 20

// IdleExit is how long a keeper with no job and no worker connected waits
// before it ends.
var IdleExit = 10 * time.Second

// end tells every watcher that the keeper ends, lets them read it, and
// stops serving.
func (k *Keeper) end(srv *http.Server) {
	k.watchers.end(&keeperv1.WatchResponse{Ending: true})
	shutdownServer(srv)
	k.leave()
}

// Check is `baton keeper --check`: it reads a handoff as Run does and
// reports whether this build could carry on with it, without starting
// anything. A keeper asked to execute another build runs it this way
// first, so that a binary that is not a keeper of this protocol, or
// options it would refuse, never cost the jobs their keeper.
func Check(dataDir string, in io.Reader, out io.Writer) error {
	_, opts, err := readHandoff(in)
	if err != nil {
		return err
	}
	opts.DataDir = dataDir
	if err := jobrun.CheckOptions(opts); err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s %d\n", checkAnswer, ProtocolVersion)
	return err
}

const checkAnswer = "baton-keeper-ok"

// checkBuild runs executable as `keeper --check` on the handoff it would
// be given, and fails unless it answers that it can carry on.
func checkBuild(executable, dir string, options []byte) error {
	h, err := json.Marshal(handoff{Executable: executable, Options: options})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, executable, "keeper", "--data-dir", dir, "--check")
	cmd.Stdin = bytes.NewReader(h)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s cannot carry on as this keeper: %v %s", executable, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var version int
	if _, err := fmt.Sscanf(string(out), checkAnswer+" %d", &version); err != nil || version < 1 {
		return fmt.Errorf("%s is not a baton keeper (it answered %q)", executable, bytes.TrimSpace(out))
	}
	return nil
}

// readHandoff reads what a keeper is given on its standard input.
func readHandoff(in io.Reader) (handoff, jobrun.Options, error) {
	var h handoff
	var opts jobrun.Options
	if err := json.NewDecoder(in).Decode(&h); err != nil {
		return h, opts, fmt.Errorf("keeper: reading its options: %w", err)
	}
	if err := json.Unmarshal(h.Options, &opts); err != nil {
		return h, opts, fmt.Errorf("keeper: reading its options: %w", err)
	}
	return h, opts, nil
}

// changed passes a job's change to every watcher.
func (k *Keeper) changed(st jobrun.Status) {
	// A change is a state: the worker knows the job's spec.
	msg := statusToProto(st)
	msg.Spec = nil
	k.watchers.publish(&keeperv1.WatchResponse{Status: msg, Running: int64(k.runner.Running())})
}

func (k *Keeper) leave() { k.leaveOnce.Do(func() { close(k.leaving) }) }

// shutdown stops every job, then ends the keeper.
func (k *Keeper) shutdown(ctx context.Context) error {
	err := k.runner.Close(ctx)
	select {
	case k.request <- struct{}{}:
	default:
	}
	return err
}

// requestUpgrade makes the keeper execute executable with options once
// the current call has been answered.
func (k *Keeper) requestUpgrade(executable string, options []byte) error {
	if !filepath.IsAbs(executable) {
		return errors.New("the executable must be an absolute path")
	}
	if fi, err := os.Stat(executable); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", executable)
	}
	var opts jobrun.Options
	if err := json.Unmarshal(options, &opts); err != nil {
		return fmt.Errorf("the options are not valid: %w", err)
	}
	if opts.DataDir != "" && filepath.Clean(opts.DataDir) != k.dir {
		return fmt.Errorf("the options are for data directory %s", opts.DataDir)
	}
	if err := checkBuild(executable, k.dir, options); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.next != nil {
		return errors.New("an upgrade is already under way")
	}
	k.next = &handoff{Executable: executable, Options: options}
	select {
	case k.request <- struct{}{}:
	default:
	}
	return nil
}

// Upgrade makes the keeper execute its own executable again with the same
// options: what a signal asks for after the binary was replaced on disk.
func (k *Keeper) Upgrade() error { return k.requestUpgrade(k.executable, k.options) }

// exec replaces the keeper's image with next's executable, handing over
// the listener, the lock and the running jobs. It returns only on failure,
// after which the keeper has stopped serving and its jobs are left to the
// next keeper to find (as after a crash).
func (k *Keeper) exec(srv *http.Server, next *handoff) error {
	// A duplicate of the socket outlives the server's close: connections
	// made meanwhile wait in its backlog for the next image.
	lf, err := k.listener.(*ownerListener).File()
	if err != nil {
		return fmt.Errorf("keeper: handing over the socket: %w", err)
	}
	k.leave()
	shutdownServer(srv)
	jobs, err := k.runner.Handoff()
	if err != nil {
		return fmt.Errorf("keeper: handing over the jobs: %w", err)
	}
	next.Jobs = jobs
	next.LockFD = int(k.lock.Fd())
	next.ListenerFD = int(lf.Fd())
	keep := []int{next.LockFD, next.ListenerFD}
	for _, j := range jobs {
		keep = append(keep, j.FDs()...)
	}
	state, err := json.Marshal(next)
	if err != nil {
		return err
	}
	mfd, err := unix.MemfdCreate("baton-keeper-handoff", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("keeper: handoff: %w", err)
	}
	if _, err := unix.Pwrite(mfd, state, 0); err != nil {
		return fmt.Errorf("keeper: handoff: %w", err)
	}
	if err := unix.Dup2(mfd, 0); err != nil {
		return fmt.Errorf("keeper: handoff: %w", err)
	}
	for _, fd := range keep {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("keeper: handoff: %w", err)
		}
	}
	k.log.Info("keeper executing a new build", "executable", next.Executable, "jobs", len(jobs))
	err = unix.Exec(next.Executable, []string{next.Executable, "keeper", "--data-dir", k.dir}, os.Environ())
	// Still here: the new build could not be executed (it changed on disk
	// since the check, say). The running image carries on with the jobs.
	k.log.Error("cannot execute the new build; executing this one again", "executable", next.Executable, "error", err)
	next.Executable, next.Options = k.executable, k.options
	if state, err = json.Marshal(next); err == nil {
		if _, err = unix.Pwrite(0, state, 0); err == nil {
			err = unix.Ftruncate(0, int64(len(state)))
		}
	}
	if err == nil {
		err = unix.Exec("/proc/self/exe", []string{k.executable, "keeper", "--data-dir", k.dir}, os.Environ())
	}
	runtime.KeepAlive(lf) // its finalizer would close the listener handed over
	return fmt.Errorf("keeper: executing %s: %w", next.Executable, err)
}

// shutdownServer ends the server, waiting a little for answers in flight
// (the Upgrade call's own) to be written.
func shutdownServer(srv *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		_ = srv.Close()
	}
}

// takeLock takes the data directory's keeper lock, or adopts the one
// inherited as fd.
func takeLock(dir string, fd int) (*os.File, error) {
	if fd > 0 {
		unix.CloseOnExec(fd)
		return os.NewFile(uintptr(fd), filepath.Join(dir, lockName)), nil
	}
	f, err := openOwn(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE)
	if err != nil {
		return nil, fmt.Errorf("keeper lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrRunning
		}
		return nil, fmt.Errorf("keeper lock: %w", err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	return f, nil
}

// inheritListener serves the socket inherited as fd.
func inheritListener(fd int) (net.Listener, error) {
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), socketName)
	l, err := net.FileListener(f)
	_ = f.Close()
	if err != nil {
		return nil, fmt.Errorf("keeper socket: %w", err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		return nil, errors.New("keeper socket: the inherited descriptor is not a unix socket")
	}
	ul.SetUnlinkOnClose(false)
	return &ownerListener{UnixListener: ul, uid: os.Geteuid()}, nil
}

// Build identifies this binary: the digest of the running executable, so
// that two builds of the same version still differ.
var Build = sync.OnceValue(func() string {
	b, err := fileBuild("/proc/self/exe")
	if err != nil {
		return "unknown"
	}
	return b
})

// fileBuild is the build of the executable at path (see Build).
func fileBuild(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// digest identifies a set of runtime options.
func digest(options []byte) string {
	var v any
	if json.Unmarshal(options, &v) == nil {
		if canon, err := json.Marshal(v); err == nil {
			options = canon
		}
	}
	sum := sha256.Sum256(options)
	return hex.EncodeToString(sum[:8])
}
