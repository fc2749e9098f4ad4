package clientcli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptrace"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/baton-run/baton/client"
	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// runOptions are the job flags shared by `baton run` and `baton start`.
type runOptions struct {
	worker    string
	selectors []string
	all       bool
	timeout   time.Duration
	env       []string
	noPath    bool
	detach    bool
	// script is the file sent with the job (--script), run by
	// interpreter.
	script      string
	interpreter string
	noWait      bool
	// queueTimeout and priority are sent only when their flag was given,
	// which flags tells.
	queueTimeout time.Duration
	priority     int
	flags        *pflag.FlagSet
	waits        waitOptions
}

func bindRunFlags(cmd *cobra.Command, o *runOptions) {
	fs := cmd.Flags()
	// Flags stop at COMMAND: `baton run bash -c 'echo hi'` needs no "--".
	fs.SetInterspersed(false)
	fs.StringVar(&o.worker, "worker", "", "run on this worker (name or id)")
	fs.StringArrayVar(&o.selectors, "selector", nil, "run on a worker whose labels include k=v (repeat for more)")
	fs.BoolVar(&o.all, "all", false, "run on every matching worker (fan-out)")
	fs.DurationVar(&o.timeout, "timeout", 0, "end the job as TIMED_OUT after this long (0: no timeout)")
	fs.StringArrayVar(&o.env, "env", nil, "set K=V in the job's environment (repeat for more)")
	fs.BoolVar(&o.noPath, "no-path", false, "pass COMMAND's first argument as a plain argument, never as a script path")
	fs.StringVar(&o.script, "script", "", "send this local file with the job (at most 1 MiB) and run it with --interpreter; the arguments are the script's")
	fs.StringVar(&o.interpreter, "interpreter", "bash", "with --script: the allow-listed command that runs the script")
	fs.BoolVar(&o.noWait, "no-wait", false, "fail at once when every matching worker is full, rather than queue (--queue-timeout 0)")
	fs.DurationVar(&o.queueTimeout, "queue-timeout", 0, "wait at most this long in the scheduler's queue for a free slot (default: no limit; 0: do not wait)")
	fs.IntVar(&o.priority, "priority", defaultPriority, "place among queued jobs, 0 to 100: higher goes first")
	bindWaitFlags(fs, &o.waits)
	o.flags = fs
}

// Queueing limits, as the scheduler checks them.
const (
	defaultPriority = 50
	maxPriority     = 100
	maxQueueTimeout = 30 * 24 * time.Hour
)

// scriptPathArg reports whether COMMAND's first argument is sent as the
// job's script path: a relative path with no ".." element that does not
// look like an option and names a file, by a slash or an extension
// ("count.sh", "tools/train", not "hi" or "1.5"). The worker resolves it
// in its scripts directory (`baton run -- bash count.sh` runs
// scripts/count.sh); --no-path turns this off for commands whose first
// argument is plain data.
func scriptPathArg(arg string) bool {
	if arg == "" || strings.HasPrefix(arg, "-") || filepath.IsAbs(arg) {
		return false
	}
	if slices.Contains(strings.Split(filepath.ToSlash(arg), "/"), "..") {
		return false
	}
	if strings.Contains(arg, "/") {
		return true
	}
	ext := filepath.Ext(arg)
	return len(ext) > 1 && unicode.IsLetter(rune(ext[1]))
}

// startRequest builds the StartJob request from the flags and
// COMMAND [ARGS...].
func (o *runOptions) startRequest(args []string) (*batonv1.StartJobRequest, error) {
	if o.script != "" {
		return o.scriptRequest(args)
	}
	if o.flags != nil && o.flags.Changed("interpreter") {
		return nil, cliout.UsageErrorf("--interpreter goes with --script")
	}
	if len(args) == 0 {
		return nil, cliout.UsageErrorf("missing COMMAND: baton run [flags] -- COMMAND [ARGS...], or baton run --script FILE [ARGS...]")
	}
	req := &batonv1.StartJobRequest{Command: args[0]}
	rest := args[1:]
	if len(rest) > 0 && !o.noPath && scriptPathArg(rest[0]) {
		req.Path, rest = rest[0], rest[1:]
	}
	req.Args = rest
	if err := o.setCommon(req); err != nil {
		return nil, err
	}
	return req, nil
}

// setCommon sets what the flags say about any job: where it runs, its
// environment and its timeout.
func (o *runOptions) setCommon(req *batonv1.StartJobRequest) error {
	if o.all && o.worker != "" {
		return cliout.UsageErrorf("--all and --worker do not go together: --all runs on every worker matching --selector")
	}
	if o.timeout < 0 {
		return cliout.UsageErrorf("--timeout must not be negative")
	}
	req.WorkerId, req.All = o.worker, o.all
	var err error
	if req.Selector, err = pairs("--selector", o.selectors); err != nil {
		return err
	}
	if req.Env, err = pairs("--env", o.env); err != nil {
		return err
	}
	if o.timeout > 0 {
		req.Timeout = durationpb.New(o.timeout)
	}
	return o.waits.apply(req)
}

// setQueueing fills in how long the job may wait on the scheduler for a
// free slot and its priority there. Without flags it waits without limit,
// as srun does; the priority is left to the scheduler unless given.
func (o *runOptions) setQueueing(req *batonv1.StartJobRequest) error {
	explicit := o.flags != nil && o.flags.Changed("queue-timeout")
	switch {
	case o.noWait && explicit:
		return cliout.UsageErrorf("--no-wait and --queue-timeout do not go together: --no-wait is --queue-timeout 0")
	case o.queueTimeout < 0:
		return cliout.UsageErrorf("--queue-timeout must not be negative: leave it out to wait without limit")
	case o.queueTimeout > maxQueueTimeout:
		return cliout.UsageErrorf("--queue-timeout must be at most %s (30 days)", maxQueueTimeout)
	}
	wait := client.NoQueueLimit
	if o.noWait || explicit {
		wait = o.queueTimeout
	}
	req.QueueTimeout = durationpb.New(wait)
	if o.flags != nil && o.flags.Changed("priority") {
		if o.priority < 0 || o.priority > maxPriority {
			return cliout.UsageErrorf("--priority %d: use 0 to %d", o.priority, maxPriority)
		}
		req.Priority = proto.Int32(int32(o.priority))
	}
	return nil
}

// pairs parses repeated K=V flags.
func pairs(flag string, values []string) (map[string]string, error) {
	if len(values) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(values))
	for _, kv := range values {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, cliout.UsageErrorf("%s %q: use KEY=VALUE", flag, kv)
		}
		m[k] = v
	}
	return m, nil
}

func newRunCommand() *cobra.Command {
	var ro runOptions
	cmd := &cobra.Command{
		Use:   "run [flags] -- COMMAND [ARGS...] | run --script FILE [flags] [ARGS...]",
		Short: "Run a job and stream its output; exit with its exit code",
		Long: `run starts a job, writes its stdout to stdout and its stderr to stderr as
they are produced, and exits with the job's exit code (128+N when a signal
N killed it, as shells do).

COMMAND is an allow-listed program (bash, sh, python3, ...) or an executable
in the worker's scripts directory. COMMAND's first argument is sent as the
job's script path when it is a relative path without ".." that does not
start with "-" and names a file, by a slash or an extension: "baton run --
bash count.sh" runs count.sh from the scripts directory, "baton run -- echo
hi" prints hi. --no-path passes it as a plain argument instead.

--script FILE sends a local script with the job (at most 1 MiB), so that
nothing needs to be installed on the workers: the worker writes it into
the job's own directory and runs it with --interpreter (bash by default,
an allow-listed command); the arguments are the script's.

When every matching worker is full, the job waits in the scheduler's queue
(without limit unless --queue-timeout; --no-wait fails at once instead).
Ctrl-C stops the job (SIGTERM, then SIGKILL after the worker's grace) and
exits with its code once it ended, or cancels it while it is queued; a
second Ctrl-C detaches at once and leaves the job to the scheduler.
--detach prints the job id and returns.
With --all the job runs on every matching worker; each line of output is
prefixed with the worker's name, and the exit status is that of the first
job (by worker name) that did not succeed, or 0.`,
		Args: cliout.UsageArgs(cobra.ArbitraryArgs), // COMMAND, or --script
	}
	co := bindClientFlags(cmd)
	bindRunFlags(cmd, &ro)
	cmd.Flags().BoolVar(&ro.detach, "detach", false, "print the job id (the group id with --all) and return")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return runStart(cmd, co, &ro, args, !ro.detach)
	}
	return cmd
}

func newStartCommand() *cobra.Command {
	var ro runOptions
	cmd := &cobra.Command{
		Use:   "start [flags] -- COMMAND [ARGS...] | start --script FILE [flags] [ARGS...]",
		Short: "Start a job and print its id (the group id with --all)",
		Long: `start starts a job like run --detach: it prints the job's id (with --all,
the group's id, which stop and status accept) and returns. The script path
rule and the queue flags are run's; a job that has to wait is queued, its
id printed all the same, and stderr says where it is in the queue.
--script FILE sends a local script with the job, as run does.`,
		Args: cliout.UsageArgs(cobra.ArbitraryArgs), // COMMAND, or --script
	}
	co := bindClientFlags(cmd)
	bindRunFlags(cmd, &ro)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return runStart(cmd, co, &ro, args, false)
	}
	return cmd
}

// runStart starts the job and, when attach is set, follows it to its end.
func runStart(cmd *cobra.Command, co *clientOptions, ro *runOptions, args []string, attach bool) error {
	format, err := co.format()
	if err != nil {
		return err
	}
	req, err := ro.startRequest(args)
	if err != nil {
		return err
	}
	if err := ro.setQueueing(req); err != nil {
		return err
	}
	cfg, err := co.config()
	if err != nil {
		return err
	}
	cl, err := newClient(cfg.Client)
	if err != nil {
		return err
	}
	defer cl.Close()
	// Ctrl-C is ours to handle: the first stops the job, the second
	// detaches. The command's context ends on the first signal, so the
	// RPCs run on one that does not.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, stopSignals()...)
	defer signal.Stop(sigs)
	// A write to a closed standard output would end this process with
	// SIGPIPE and leave the job running. Asked for (and never read), the
	// signal only makes the write fail with EPIPE, which ends the follow
	// and stops the job (see outputClosed). It is not a stop signal:
	// while it is asked for, a write to any broken connection raises it,
	// not only one to the output.
	pipes := make(chan os.Signal, 1)
	signal.Notify(pipes, syscall.SIGPIPE)
	defer signal.Stop(pipes)
	if cmd.Context().Err() != nil {
		// Interrupted before the handler above was in place.
		return &cliout.ExitError{Code: signalExit(syscall.SIGINT)}
	}
	ctx := context.WithoutCancel(cmd.Context())
	a := &attachment{
		client: cl, stdout: cmd.OutOrStdout(), stderr: cmd.ErrOrStderr(),
		spin: startSpinner(cmd.ErrOrStderr(), "placing the job…"),
	}
	defer a.quiet()
	if attach && !req.GetAll() && req.GetArray() == nil {
		// One job followed to its end is one RunJob call.
		return a.run(ctx, sigs, req)
	}
	// A fan-out, or a start without attaching, is a StartJob.
	res, interrupted, err := a.start(ctx, sigs, req, attach)
	if err != nil {
		return err
	}
	for _, j := range res.GetJobs() {
		if j.GetState() == batonv1.JobState_JOB_STATE_QUEUED {
			fmt.Fprintf(a.stderr, "baton: job %s %s\n", j.GetJobId(), queuedNote(j))
		}
	}
	if !attach {
		if format == formatJSON {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		id := res.GetJobId()
		if res.GetGroupId() != "" {
			id = res.GetGroupId()
		}
		_, err := fmt.Fprintln(cmd.OutOrStdout(), id)
		return err
	}
	a.res, a.prefix = res, res.GetGroupId() != ""
	follows := make([]func(context.Context) followResult, len(res.GetJobs()))
	for i, j := range res.GetJobs() {
		follows[i] = func(ctx context.Context) followResult {
			sink := a.sink(j)
			defer sink.flush()
			st, err := cl.Follow(ctx, &batonv1.StreamJobOutputRequest{JobId: j.GetJobId()}, client.Handlers{Output: sink.write})
			return followResult{st, err}
		}
	}
	return a.follow(ctx, sigs, interrupted, follows)
}

// run starts one job with RunJob and follows it to its end. A job that
// waits in the queue keeps the spinner, saying where it waits, until it
// starts.
func (a *attachment) run(ctx context.Context, sigs <-chan os.Signal, req *batonv1.StartJobRequest) error {
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	// known is closed once the job's first status (set in first before)
	// or the run's end is in.
	known := make(chan struct{})
	var first *batonv1.JobStatus
	var once sync.Once
	announce := func(st *batonv1.JobStatus) { once.Do(func() { first = st; close(known) }) }
	done := make(chan followResult, 1)
	sink := a.sink(nil)
	go func() {
		st, err := a.client.Run(runCtx, req, client.Handlers{
			Queued: func(st *batonv1.JobStatus) {
				a.spin.say(queuedNote(st) + " (Ctrl-C cancels)")
				announce(st)
			},
			Started: func(st *batonv1.JobStatus) {
				a.quiet()
				announce(st)
			},
			Output: sink.write,
		})
		done <- followResult{st, err}
		announce(nil)
	}()
	interrupted, err := a.awaitID(sigs, true, known)
	if err != nil {
		return err
	}
	if first == nil {
		// The run ended before naming its job: the start failed.
		r := <-done
		a.quiet()
		if r.err != nil {
			return explainStartError(explain(r.err), req)
		}
		first = r.status
		done <- r
	}
	a.res = &batonv1.StartJobResponse{JobId: first.GetJobId(), Jobs: []*batonv1.JobStatus{first}}
	return a.follow(ctx, sigs, interrupted, []func(context.Context) followResult{
		func(followCtx context.Context) followResult {
			// A detach ends the follow, and with it the run.
			stop := context.AfterFunc(followCtx, cancelRun)
			defer stop()
			return <-done
		},
	})
}

// start starts the job (or the fan-out's jobs) with StartJob.
func (a *attachment) start(ctx context.Context, sigs <-chan os.Signal, req *batonv1.StartJobRequest, attach bool) (*batonv1.StartJobResponse, os.Signal, error) {
	startCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	known := make(chan struct{})
	var (
		res *batonv1.StartJobResponse
		err error
	)
	go func() {
		defer close(known)
		// A full cluster is the scheduler's to wait out: the job is
		// queued there, and the start answers as soon as it is.
		res, err = a.client.Start(startCtx, req)
	}()
	interrupted, werr := a.awaitID(sigs, attach, known)
	if werr != nil {
		return nil, nil, werr
	}
	a.quiet()
	if err != nil {
		return nil, nil, explainStartError(explain(err), req)
	}
	return res, interrupted, nil
}

// awaitID waits until known is closed, while the job has no id to stop it
// by. The first signal, when attaching, is kept to stop the job once it
// has one; a second, or any without attaching, gives up.
func (a *attachment) awaitID(sigs <-chan os.Signal, attach bool, known <-chan struct{}) (os.Signal, error) {
	var interrupted os.Signal
	for {
		select {
		case <-known:
			return interrupted, nil
		case sig := <-sigs:
			if interrupted != nil || !attach {
				a.quiet()
				fmt.Fprintln(a.stderr, "baton: interrupted before the job's id was known; `baton jobs` lists it if it started")
				return nil, &cliout.ExitError{Code: signalExit(sig)}
			}
			interrupted = sig
		}
	}
}

// queuedNote says where a queued job is in the queue and what it waits
// for, in the scheduler's words when it gives them.
func queuedNote(j *batonv1.JobStatus) string {
	note := "queued"
	if p := j.GetQueuePosition(); p > 0 {
		note += " at position " + strconv.Itoa(int(p))
	}
	if r := j.GetReason(); r != "" {
		return note + ": " + r
	}
	return note + ", waiting for a free slot"
}

// explainStartError adds the path rule to a "not found" about the script
// the CLI guessed, since the user may have meant a plain argument.
func explainStartError(err error, req *batonv1.StartJobRequest) error {
	var ce *connect.Error
	if req.GetPath() == "" || !errors.As(err, &ce) || ce.Code() != connect.CodeNotFound || !strings.Contains(ce.Message(), req.GetPath()) {
		return err
	}
	return connect.NewError(ce.Code(), fmt.Errorf("%s (%q was sent as a script path because it looks like one; --no-path passes it as a plain argument)", ce.Message(), req.GetPath()))
}

// signalExit is the status a shell reports for a process a signal ended.
func signalExit(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 130
}

// jobExitCode is the status `baton run` exits with for a finished job: its
// exit code, 128+N when signal N killed it, 0 for a success and 1 for an
// end with neither (a LOST job).
func jobExitCode(st *batonv1.JobStatus) int {
	switch {
	case st.ExitCode != nil:
		return int(st.GetExitCode())
	case st.GetSignal() != "":
		if n := unix.SignalNum(st.GetSignal()); n != 0 {
			return 128 + int(n)
		}
		return 128 + int(syscall.SIGKILL)
	case st.GetState() == batonv1.JobState_JOB_STATE_SUCCEEDED:
		return 0
	}
	return 1
}

// attachment follows the started job (or every job of a fan-out) to its
// end, and owns the terminal's output while it does.
type attachment struct {
	client *client.Client
	// res names the job(s) followed, for a stop.
	res    *batonv1.StartJobResponse
	stdout io.Writer
	stderr io.Writer
	// prefix puts "[worker] " before each line (a fan-out).
	prefix bool
	// spin says the job is being placed, or queued, until it starts;
	// anything written to the terminal ends it first.
	spin *spinner
	// outMu and errMu keep lines of different jobs from interleaving
	// mid-line, one per stream (see lock): a stdout nobody reads must
	// not hold up a note on stderr, such as the one a Ctrl-C prints.
	outMu, errMu sync.Mutex
}

// lock returns the lock of writer w, stdout or stderr.
func (a *attachment) lock(w io.Writer) *sync.Mutex {
	if w == a.stderr {
		return &a.errMu
	}
	return &a.outMu
}

// quiet ends the spinner, if any, so that it leaves the terminal's lines
// alone; safe to call from any goroutine, and again.
func (a *attachment) quiet() {
	if a.spin != nil {
		a.spin.end()
	}
}

type followResult struct {
	status *batonv1.JobStatus
	err    error
}

// stopSignals are the signals that stop the job `baton run` follows, as
// Ctrl-C does: also a terminal's hang-up (unless started under nohup,
// which ignores it). The close of the pipe its output goes to (`baton run
// … | head -1`) stops it too, through the failed write (outputClosed).
func stopSignals() []os.Signal {
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if !signal.Ignored(syscall.SIGHUP) {
		sigs = append(sigs, syscall.SIGHUP)
	}
	return sigs
}

// follow runs each of follows (one per job, in a.res's order) until each
// has a final status, then returns the exit status. Signals: the first
// stops the job(s), the second detaches, which ends the follows' context.
func (a *attachment) follow(ctx context.Context, sigs <-chan os.Signal, interrupted os.Signal, follows []func(context.Context) followResult) error {
	defer a.quiet()
	followCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]followResult, len(follows))
	var wg sync.WaitGroup
	for i, f := range follows {
		wg.Go(func() { results[i] = f(followCtx) })
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()

	// stopSig is the signal that stopped the job(s); nil until one does.
	var stopSig os.Signal
	stopping := false
	// delivered is closed once the stop request is on the wire (or its
	// call ended): a second Ctrl-C must not cut it off before the
	// scheduler has it, or the job would go on running.
	delivered := make(chan struct{})
	var deliveredOnce sync.Once
	markDelivered := func() { deliveredOnce.Do(func() { close(delivered) }) }
	stop := func(sig os.Signal) {
		stopping, stopSig = true, sig
		what := "job " + a.res.GetJobId()
		req := &batonv1.StopJobRequest{JobId: a.res.GetJobId()}
		if g := a.res.GetGroupId(); g != "" {
			what, req = "group "+g, &batonv1.StopJobRequest{GroupId: g}
		}
		traced := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { markDelivered() },
		})
		// The stop goes out first: the note below may wait for stderr.
		go func() {
			defer markDelivered()
			if _, err := a.client.Scheduler().StopJob(traced, connect.NewRequest(req)); err != nil {
				a.printErr("baton: stop: %s\n", errorLine(explain(err)))
			}
		}()
		a.printErr("baton: stopping %s (Ctrl-C again to detach)\n", what)
	}
	if interrupted != nil {
		stop(interrupted)
	}
	for {
		select {
		case <-allDone:
			if outputClosed(results) {
				// Nobody reads the output any more: the job is stopped,
				// and this ends once the stop is on its way.
				if !stopping {
					stop(syscall.SIGPIPE)
				}
				select {
				case <-delivered:
				case <-time.After(stopDeliveryWait):
				}
				return &cliout.ExitError{Code: signalExit(syscall.SIGPIPE)}
			}
			return a.finish(results, stopSig)
		case sig := <-sigs:
			if !stopping {
				stop(sig)
				continue
			}
			select {
			case <-delivered:
			case <-time.After(stopDeliveryWait):
			}
			cancel()
			a.printErr("baton: detached; the job goes on stopping (baton status %s)\n", a.res.GetJobId())
			return &cliout.ExitError{Code: signalExit(sig)}
		}
	}
}

// outputClosed reports whether a follow ended because the output it
// wrote to was closed.
func outputClosed(results []followResult) bool {
	for _, r := range results {
		if errors.Is(r.err, syscall.EPIPE) {
			return true
		}
	}
	return false
}

// finish turns the jobs' ends into the exit status; stopSig is the signal
// that stopped them, or nil.
func (a *attachment) finish(results []followResult, stopSig os.Signal) error {
	type ended struct {
		worker string
		status *batonv1.JobStatus
	}
	var ends []ended
	var errs []error
	for i, r := range results {
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		ends = append(ends, ended{a.res.GetJobs()[i].GetWorkerId(), r.status})
	}
	if len(errs) > 0 {
		return explain(errs[0])
	}
	slices.SortFunc(ends, func(x, y ended) int { return strings.Compare(x.worker, y.worker) })
	code := 0
	for _, e := range ends {
		st := e.status
		// A job that ended with a code or a signal says so through the
		// exit status, as a local process would; the other ends get a line.
		switch st.GetState() {
		case batonv1.JobState_JOB_STATE_SUCCEEDED:
		case batonv1.JobState_JOB_STATE_FAILED:
			// One that failed with no code or signal to show for it (it
			// never ran, broke a limit) says why.
			if a.prefix || (st.ExitCode == nil && st.GetSignal() == "") {
				a.printErr("baton: %sjob %s failed: %s\n", a.workerTag(e.worker), st.GetJobId(), st.GetReason())
			}
		default:
			if stopSig == nil || st.GetState() != batonv1.JobState_JOB_STATE_STOPPED || a.prefix {
				a.printErr("baton: %sjob %s %s: %s\n", a.workerTag(e.worker), st.GetJobId(), strings.ToLower(jobStateName(st.GetState())), st.GetReason())
			}
		}
		c := jobExitCode(st)
		if stopSig != nil && st.GetState() == batonv1.JobState_JOB_STATE_STOPPED && st.ExitCode == nil && st.GetSignal() == "" {
			// Cancelled while queued: it had no process to end with a
			// code or a signal, so the status is the interrupt's, as a
			// shell reports it.
			c = signalExit(stopSig)
		}
		if c != 0 && code == 0 {
			code = c
		}
	}
	if code != 0 {
		return &cliout.ExitError{Code: code}
	}
	return nil
}

func (a *attachment) workerTag(worker string) string {
	if !a.prefix {
		return ""
	}
	return "[" + worker + "] "
}

func (a *attachment) printErr(format string, args ...any) {
	a.quiet()
	a.errMu.Lock()
	defer a.errMu.Unlock()
	fmt.Fprintf(a.stderr, format, args...)
}

// sink returns where a job's chunks go: straight through for a single
// job, as whole prefixed lines for a fan-out.
func (a *attachment) sink(j *batonv1.JobStatus) *outputSink {
	s := &outputSink{a: a}
	switch {
	case a.prefix && j != nil && j.GetSpec().ArrayIndex != nil:
		s.tag = []byte("[" + strconv.Itoa(int(j.GetSpec().GetArrayIndex())) + "] ")
	case a.prefix && j != nil:
		s.tag = []byte("[" + j.GetWorkerId() + "] ")
	}
	return s
}

// outputSink writes one job's chunks to stdout and stderr.
type outputSink struct {
	a   *attachment
	tag []byte
	// partial holds a fan-out job's unfinished last line, per stream.
	partial [3][]byte
}

func (s *outputSink) write(c *batonv1.OutputChunk) error {
	s.a.quiet()
	w := s.a.stdout
	if c.GetStream() == batonv1.OutputStream_OUTPUT_STREAM_STDERR {
		w = s.a.stderr
	}
	mu := s.a.lock(w)
	if s.tag == nil {
		mu.Lock()
		defer mu.Unlock()
		_, err := w.Write(c.GetData())
		return err
	}
	idx := int(c.GetStream()) % len(s.partial)
	buf := append(s.partial[idx], c.GetData()...)
	var out []byte
	for {
		nl := bytes.IndexByte(buf, '\n')
		if nl < 0 {
			break
		}
		out = append(append(out, s.tag...), buf[:nl+1]...)
		buf = buf[nl+1:]
	}
	s.partial[idx] = append(s.partial[idx][:0], buf...)
	if len(out) == 0 {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	_, err := w.Write(out)
	return err
}

// flush ends the unfinished lines of a fan-out job.
func (s *outputSink) flush() {
	for idx, p := range s.partial {
		if len(p) == 0 {
			continue
		}
		w := s.a.stdout
		if idx == int(batonv1.OutputStream_OUTPUT_STREAM_STDERR) {
			w = s.a.stderr
		}
		line := append(append(append([]byte{}, s.tag...), p...), '\n')
		mu := s.a.lock(w)
		mu.Lock()
		_, _ = w.Write(line)
		mu.Unlock()
		s.partial[idx] = nil
	}
}

// stopDeliveryWait bounds how long a second Ctrl-C waits for the stop
// request to reach the scheduler.
const stopDeliveryWait = 3 * time.Second

// errorLine is how the CLI writes an error on one line: the Connect code
// and the message, or the error alone.
func errorLine(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code().String() + ": " + ce.Message()
	}
	return err.Error()
}
