package main

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
	noWait    bool
	// queueTimeout and priority are sent only when their flag was given,
	// which flags tells.
	queueTimeout time.Duration
	priority     int
	flags        *pflag.FlagSet
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
	fs.BoolVar(&o.noWait, "no-wait", false, "fail at once when every matching worker is full, rather than queue (--queue-timeout 0)")
	fs.DurationVar(&o.queueTimeout, "queue-timeout", 0, "wait at most this long in the scheduler's queue for a free slot (default: no limit; 0: do not wait)")
	fs.IntVar(&o.priority, "priority", defaultPriority, "place among queued jobs, 0 to 100: higher goes first")
	o.flags = fs
}

// Queueing limits, as the scheduler checks them.
const (
	defaultPriority = 50
	maxPriority     = 100
	maxQueueTimeout = 30 * 24 * time.Hour
	// noQueueLimit is how StartJobRequest says "wait until placed".
	noQueueLimit = -time.Second
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
	if len(args) == 0 {
		return nil, usageErrorf("missing COMMAND: baton run [flags] -- COMMAND [ARGS...]")
	}
	if o.all && o.worker != "" {
		return nil, usageErrorf("--all and --worker do not go together: --all runs on every worker matching --selector")
	}
	if o.timeout < 0 {
		return nil, usageErrorf("--timeout must not be negative")
	}
	req := &batonv1.StartJobRequest{
		WorkerId: o.worker,
		Command:  args[0],
		All:      o.all,
	}
	rest := args[1:]
	if len(rest) > 0 && !o.noPath && scriptPathArg(rest[0]) {
		req.Path, rest = rest[0], rest[1:]
	}
	req.Args = rest
	var err error
	if req.Selector, err = pairs("--selector", o.selectors); err != nil {
		return nil, err
	}
	if req.Env, err = pairs("--env", o.env); err != nil {
		return nil, err
	}
	if o.timeout > 0 {
		req.Timeout = durationpb.New(o.timeout)
	}
	return req, nil
}

// setQueueing fills in how long the job may wait on the scheduler for a
// free slot and its priority there. Without flags it waits without limit,
// as srun does; the priority is left to the scheduler unless given.
func (o *runOptions) setQueueing(req *batonv1.StartJobRequest) error {
	explicit := o.flags != nil && o.flags.Changed("queue-timeout")
	switch {
	case o.noWait && explicit:
		return usageErrorf("--no-wait and --queue-timeout do not go together: --no-wait is --queue-timeout 0")
	case o.queueTimeout < 0:
		return usageErrorf("--queue-timeout must not be negative: leave it out to wait without limit")
	case o.queueTimeout > maxQueueTimeout:
		return usageErrorf("--queue-timeout must be at most %s (30 days)", maxQueueTimeout)
	}
	wait := noQueueLimit
	if o.noWait || explicit {
		wait = o.queueTimeout
	}
	req.QueueTimeout = durationpb.New(wait)
	if o.flags != nil && o.flags.Changed("priority") {
		if o.priority < 0 || o.priority > maxPriority {
			return usageErrorf("--priority %d: use 0 to %d", o.priority, maxPriority)
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
			return nil, usageErrorf("%s %q: use KEY=VALUE", flag, kv)
		}
		m[k] = v
	}
	return m, nil
}

func newRunCommand() *cobra.Command {
	var ro runOptions
	cmd := &cobra.Command{
		Use:   "run [flags] -- COMMAND [ARGS...]",
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

When every matching worker is full, the job waits in the scheduler's queue
(without limit unless --queue-timeout; --no-wait fails at once instead).
Ctrl-C stops the job (SIGTERM, then SIGKILL after the worker's grace) and
exits with its code once it ended, or cancels it while it is queued; a
second Ctrl-C detaches at once and leaves the job to the scheduler.
--detach prints the job id and returns.
With --all the job runs on every matching worker; each line of output is
prefixed with the worker's name, and the exit status is that of the first
job (by worker name) that did not succeed, or 0.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
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
		Use:   "start [flags] -- COMMAND [ARGS...]",
		Short: "Start a job and print its id (the group id with --all)",
		Long: `start starts a job like run --detach: it prints the job's id (with --all,
the group's id, which stop and status accept) and returns. The script path
rule and the queue flags are run's; a job that has to wait is queued, its
id printed all the same, and stderr says where it is in the queue.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
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
	client, err := newSchedulerClient(cfg.Client)
	if err != nil {
		return err
	}
	// Ctrl-C is ours to handle: the first stops the job, the second
	// detaches. The command's context ends on the first signal, so the
	// RPCs run on one that does not.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, stopSignals()...)
	defer signal.Stop(sigs)
	if cmd.Context().Err() != nil {
		// Interrupted before the handler above was in place.
		return &exitError{code: signalExit(syscall.SIGINT)}
	}
	ctx := context.WithoutCancel(cmd.Context())
	stderr := cmd.ErrOrStderr()

	startCtx, cancelStart := context.WithCancel(ctx)
	defer cancelStart()
	type started struct {
		res *batonv1.StartJobResponse
		// run is the rest of a RunJob stream: the job's output and final
		// status, for the follower to read before any StreamJobOutput.
		run *connect.ServerStreamForClient[batonv1.RunJobResponse]
		err error
	}
	// One job followed to its end is one RunJob call; a fan-out, or a
	// start without attaching, is a StartJob.
	oneCall := attach && !req.GetAll()
	startDone := make(chan started, 1)
	spin := startSpinner(stderr, "placing the job…")
	go func() {
		// A full cluster is the scheduler's to wait out: the job is queued
		// there, and the start answers as soon as it is.
		var st started
		if oneCall {
			st.run, st.res, st.err = startRun(startCtx, client, req)
		} else {
			var res *connect.Response[batonv1.StartJobResponse]
			if res, st.err = client.StartJob(startCtx, connect.NewRequest(req)); st.err == nil {
				st.res = res.Msg
			}
		}
		startDone <- st
	}()
	var interrupted os.Signal
	var st started
wait:
	for {
		select {
		case st = <-startDone:
			break wait
		case sig := <-sigs:
			if interrupted != nil || !attach {
				spin.end()
				fmt.Fprintln(stderr, "baton: interrupted before the job's id was known; `baton jobs` lists it if it started")
				return &exitError{code: signalExit(sig)}
			}
			interrupted = sig
		}
	}
	if st.err != nil {
		spin.end()
		return explainStartError(client.explain(st.err), req)
	}
	res := st.res
	if oneCall && res.GetJobs()[0].GetState() == batonv1.JobState_JOB_STATE_QUEUED {
		// The spinner stays until the job starts: the follow ends it.
		spin.say(queuedNote(res.GetJobs()[0]) + " (Ctrl-C cancels)")
	} else {
		spin.end()
		spin = nil
		for _, j := range res.GetJobs() {
			if j.GetState() == batonv1.JobState_JOB_STATE_QUEUED {
				fmt.Fprintf(stderr, "baton: job %s %s\n", j.GetJobId(), queuedNote(j))
			}
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
	a := &attachment{
		client: client, res: res, run: st.run, stdout: cmd.OutOrStdout(), stderr: stderr,
		prefix: res.GetGroupId() != "", spin: spin,
	}
	return a.follow(ctx, sigs, interrupted)
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

// startRun starts one job with RunJob and reads its first message, started
// or queued. It returns the rest of the stream, which the caller closes,
// and the start as StartJob would have answered it.
func startRun(ctx context.Context, client *schedulerClient, req *batonv1.StartJobRequest) (*connect.ServerStreamForClient[batonv1.RunJobResponse], *batonv1.StartJobResponse, error) {
	stream, err := client.RunJob(ctx, connect.NewRequest(&batonv1.RunJobRequest{Job: req}))
	if err != nil {
		return nil, nil, err
	}
	if !stream.Receive() {
		err := stream.Err()
		_ = stream.Close()
		if err == nil {
			err = connect.NewError(connect.CodeUnavailable, errors.New("the scheduler ended the run before the job started"))
		}
		return nil, nil, err
	}
	// A job that has to wait is queued first; it has its id already, so
	// a stop can reach it before it runs.
	first := stream.Msg()
	st := first.GetStarted()
	if st == nil {
		st = first.GetQueued()
	}
	if st == nil {
		_ = stream.Close()
		return nil, nil, connect.NewError(connect.CodeInternal, errors.New("the scheduler sent no start status first"))
	}
	return stream, &batonv1.StartJobResponse{JobId: st.GetJobId(), Jobs: []*batonv1.JobStatus{st}}, nil
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
	client *schedulerClient
	res    *batonv1.StartJobResponse
	// run, if set, is the RunJob stream of the one job, read before any
	// StreamJobOutput.
	run    *connect.ServerStreamForClient[batonv1.RunJobResponse]
	stdout io.Writer
	stderr io.Writer
	// prefix puts "[worker] " before each line (a fan-out).
	prefix bool
	// spin, if set, says the job is queued until it starts; anything
	// written to the terminal ends it first.
	spin *spinner
	// mu keeps lines of different jobs from interleaving mid-line.
	mu sync.Mutex
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
// which ignores it) and the close of the pipe its output goes to (`baton
// run … | head -1`), which would otherwise end this process and leave the
// job running.
func stopSignals() []os.Signal {
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGPIPE}
	if !signal.Ignored(syscall.SIGHUP) {
		sigs = append(sigs, syscall.SIGHUP)
	}
	return sigs
}

// follow streams every job's output until each has a final status, then
// returns the exit status. Signals: the first stops the job(s), the second
// detaches.
func (a *attachment) follow(ctx context.Context, sigs <-chan os.Signal, interrupted os.Signal) error {
	defer a.quiet()
	jobs := a.res.GetJobs()
	followCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]followResult, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Go(func() {
			sink := a.sink(j)
			st, err := followOutput(followCtx, a.client, j.GetJobId(), a.run, a.quiet, sink.write)
			sink.flush()
			results[i] = followResult{st, err}
		})
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
		a.printErr("baton: stopping %s (Ctrl-C again to detach)\n", what)
		traced := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { markDelivered() },
		})
		go func() {
			defer markDelivered()
			if _, err := a.client.StopJob(traced, connect.NewRequest(req)); err != nil {
				a.printErr("baton: stop: %s\n", errorLine(a.client.explain(err)))
			}
		}()
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
				return &exitError{code: signalExit(syscall.SIGPIPE)}
			}
			return a.finish(results, stopSig)
		case sig := <-sigs:
			if !stopping {
				stop(sig)
				continue
			}
			if sig == syscall.SIGPIPE {
				continue // every write to the closed pipe raises one
			}
			select {
			case <-delivered:
			case <-time.After(stopDeliveryWait):
			}
			cancel()
			a.printErr("baton: detached; the job goes on stopping (baton status %s)\n", a.res.GetJobId())
			return &exitError{code: signalExit(sig)}
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
		return errs[0]
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
			if a.prefix {
				a.printErr("baton: [%s] job %s failed: %s\n", e.worker, st.GetJobId(), st.GetReason())
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
		return &exitError{code: code}
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
	a.mu.Lock()
	defer a.mu.Unlock()
	fmt.Fprintf(a.stderr, format, args...)
}

// sink returns where a job's chunks go: straight through for a single
// job, as whole prefixed lines for a fan-out.
func (a *attachment) sink(j *batonv1.JobStatus) *outputSink {
	s := &outputSink{a: a}
	if a.prefix {
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
	if s.tag == nil {
		s.a.mu.Lock()
		defer s.a.mu.Unlock()
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
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
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
		s.a.mu.Lock()
		_, _ = w.Write(line)
		s.a.mu.Unlock()
		s.partial[idx] = nil
	}
}

// Resuming a cut output stream: the scheduler ends streams with
// Unavailable when it shuts down or the job's worker goes away, and the
// stream picks up again from the last offset.
const (
	resumeAttempts = 20
	resumeFirst    = 200 * time.Millisecond
	// stopDeliveryWait bounds how long a second Ctrl-C waits for the stop
	// request to reach the scheduler.
	stopDeliveryWait = 3 * time.Second
	resumeMax        = 3 * time.Second
)

// followOutput streams a job's output (both streams, interleaved, from
// the start) into sink until the job's final status, resuming from the
// last offset when the stream is cut. run, if not nil, is read first: the
// rest of the RunJob call that started the job, which calls started when
// it says that a queued job runs.
func followOutput(ctx context.Context, client *schedulerClient, jobID string, run *connect.ServerStreamForClient[batonv1.RunJobResponse], started func(), sink func(*batonv1.OutputChunk) error) (*batonv1.JobStatus, error) {
	var offset int64
	delay := resumeFirst
	for attempt := 0; ; attempt++ {
		var (
			st       *batonv1.JobStatus
			progress bool
			err      error
			sinkErr  error
		)
		if run != nil {
			msg := func() *batonv1.RunJobResponse {
				m := run.Msg()
				if m.GetStarted() != nil {
					started()
				}
				return m
			}
			st, progress, err, sinkErr = drainOutput(run, msg, &offset, sink)
			run = nil
		} else {
			var stream *connect.ServerStreamForClient[batonv1.StreamJobOutputResponse]
			stream, err = client.StreamJobOutput(ctx, connect.NewRequest(&batonv1.StreamJobOutputRequest{
				JobId: jobID, Offset: offset, Follow: true,
			}))
			if err == nil {
				st, progress, err, sinkErr = drainOutput(stream, stream.Msg, &offset, sink)
			}
		}
		if st != nil || sinkErr != nil {
			return st, sinkErr
		}
		if progress {
			attempt, delay = 0, resumeFirst
		}
		if err == nil {
			err = connect.NewError(connect.CodeUnavailable, errors.New("the output stream ended before the job's status"))
		}
		if !resumable(err) || attempt >= resumeAttempts || ctx.Err() != nil {
			return nil, client.explain(err)
		}
		// A worker that went away leaves the job LOST: no stream will ever
		// finish it, so its stored status is the answer.
		if q, qerr := client.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: jobID})); qerr == nil && q.Msg.GetDone() &&
			q.Msg.GetStatus().GetState() == batonv1.JobState_JOB_STATE_LOST {
			return q.Msg.GetStatus(), nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, resumeMax)
	}
}

// resumable reports whether a follow that ended with err is worth picking
// up again: the scheduler said so (it shuts down, the worker went away), or
// the connection broke mid-message, as it does when the scheduler is
// killed (Connect's client then says "internal: protocol error").
func resumable(err error) bool {
	return connect.CodeOf(err) == connect.CodeUnavailable ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// outputStream is a stream of output messages: a RunJob's or a
// StreamJobOutput's.
type outputStream interface {
	Receive() bool
	Err() error
	Close() error
}

// outputMsg is one message of an outputStream.
type outputMsg interface {
	GetChunk() *batonv1.OutputChunk
	GetStatus() *batonv1.JobStatus
}

// drainOutput reads stream to its end, passing chunks to sink and moving
// offset past them. It returns the job's status if the stream brought it,
// whether any chunk arrived, the stream's error, and the sink's, which ends
// the follow with no resume.
func drainOutput[M outputMsg](stream outputStream, msg func() M, offset *int64, sink func(*batonv1.OutputChunk) error) (st *batonv1.JobStatus, progress bool, streamErr, sinkErr error) {
	defer stream.Close()
	for stream.Receive() {
		m := msg()
		if st := m.GetStatus(); st != nil {
			return st, progress, nil, nil
		}
		if c := m.GetChunk(); c != nil {
			if err := sink(c); err != nil {
				return nil, progress, nil, err
			}
			*offset = c.GetOffset() + int64(len(c.GetData()))
			progress = true
		}
	}
	return nil, progress, stream.Err(), nil
}

// errorLine is how the CLI writes an error on one line: the Connect code
// and the message, or the error alone.
func errorLine(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code().String() + ": " + ce.Message()
	}
	return err.Error()
}
