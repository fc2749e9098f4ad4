package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/jobrun"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
	"github.com/baton-run/baton/services/worker"
)

// benchOptions are the flags of `baton bench`.
type benchOptions struct {
	Scheduler string
	Clients   int
	Jobs      int
	Command   string
	Args      []string
	Worker    string
	Baseline  bool
	Local     bool
	// MTLS, with Local, runs the load a second time on a local cluster
	// that speaks mutual TLS, to compare with h2c.
	MTLS bool
	// JobUIDs, with Local, runs the load a second time on a local cluster
	// whose workers run each job under a uid of its own (root only), to
	// compare with jobs under the worker's uid.
	JobUIDs bool
}

// benchStats are the figures of one way of running the jobs.
type benchStats struct {
	Completed  int     `json:"completed"`
	Failed     int     `json:"failed"`
	P50Ms      float64 `json:"p50_ms"`
	P90Ms      float64 `json:"p90_ms"`
	P99Ms      float64 `json:"p99_ms"`
	JobsPerSec float64 `json:"jobs_per_sec"`
	WallSec    float64 `json:"wall_sec"`
}

// benchResult is what `baton bench` prints.
type benchResult struct {
	Scheduler string   `json:"scheduler"`
	Local     bool     `json:"local"`
	Clients   int      `json:"clients"`
	Jobs      int      `json:"jobs"`
	Command   string   `json:"command"`
	Args      []string `json:"args,omitempty"`
	// Baton is submit→done through the scheduler: from the first StartJob
	// attempt, through StreamJobOutput (follow), to the final status.
	Baton benchStats `json:"baton"`
	// Errors counts jobs that failed, by Connect code, or by final job
	// state ("job_FAILED", ...) for jobs that ran but did not succeed.
	Errors map[string]int `json:"errors"`
	// Retries counts StartJob calls answered ResourceExhausted and retried.
	Retries int `json:"resource_exhausted_retries"`
	// MTLS is the same load on a local cluster over mutual TLS (clients
	// with certificates, scheduler ↔ workers mTLS); MTLSP50Ratio and
	// MTLSThroughputRatio compare it with Baton over h2c.
	MTLS                *benchStats `json:"baton_mtls,omitempty"`
	MTLSP50Ratio        float64     `json:"mtls_p50_ratio,omitempty"`
	MTLSThroughputRatio float64     `json:"mtls_throughput_ratio,omitempty"`
	// JobUIDs is the same load on a local cluster whose jobs run under
	// uids of their own; the ratios compare it with Baton (the worker's
	// uid).
	JobUIDs                *benchStats `json:"baton_job_uids,omitempty"`
	JobUIDsP50Ratio        float64     `json:"job_uids_p50_ratio,omitempty"`
	JobUIDsThroughputRatio float64     `json:"job_uids_throughput_ratio,omitempty"`
	// Exec is the same command run with os/exec, as a baseline.
	Exec *benchStats `json:"exec,omitempty"`
	// P50Ratio is Baton's p50 over exec's; ThroughputRatio is Baton's
	// jobs/s over exec's.
	P50Ratio        float64 `json:"p50_ratio,omitempty"`
	ThroughputRatio float64 `json:"throughput_ratio,omitempty"`
}

// benchRetryDelay is the pause before retrying a StartJob answered
// ResourceExhausted (every worker full).
const benchRetryDelay = 20 * time.Millisecond

func newBenchCommand() *cobra.Command {
	var opts benchOptions
	var output string
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure submit→done latency and throughput of jobs through the scheduler, against os/exec",
		Long: `bench runs --jobs jobs from --clients concurrent clients through the scheduler:
each client starts a job, follows its output until the final status, and
starts the next. It prints the p50/p90/p99 submit→done latency and the
sustained jobs/s, then the same figures for running the command directly
with os/exec (same clients, same count) and the ratios.

--local starts a scheduler and two workers in this process, on loopback,
with their state in a temporary directory, and stops them afterwards.`,
		Args: cobra.NoArgs,
	}
	flags := cmd.Flags()
	flags.StringVar(&opts.Scheduler, "scheduler", "127.0.0.1:7070", "scheduler address (h2c)")
	flags.IntVar(&opts.Clients, "clients", 16, "concurrent clients")
	flags.IntVar(&opts.Jobs, "jobs", 1000, "jobs in total")
	flags.StringVar(&opts.Command, "command", "true", "command each job runs")
	flags.StringArrayVar(&opts.Args, "args", nil, "argument of the command (repeat for more)")
	flags.StringVar(&opts.Worker, "worker", "", "run every job on this worker (default: the scheduler places them)")
	flags.BoolVar(&opts.Baseline, "baseline", true, "also run the command with os/exec and compare")
	flags.BoolVar(&opts.Local, "local", false, "start a scheduler and 2 workers in-process and bench them")
	flags.BoolVar(&opts.MTLS, "mtls", false, "with --local: run the load again on a local cluster over mutual TLS and compare")
	flags.BoolVar(&opts.JobUIDs, "job-uids", false, "with --local, as root: run the load again on a local cluster whose jobs get uids of their own and compare")
	flags.StringVarP(&output, "output", "o", "table", "table or json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if output != "table" && output != "json" {
			return fmt.Errorf("--output %q: use table or json", output)
		}
		res, err := runBench(cmd.Context(), opts)
		if err != nil {
			return err
		}
		if output == "json" {
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(res)
		}
		printBench(cmd.OutOrStdout(), res)
		return nil
	}
	return cmd
}

// runBench runs the load (and the baseline) and returns the figures.
func runBench(ctx context.Context, opts benchOptions) (*benchResult, error) {
	if opts.Clients < 1 || opts.Jobs < 1 {
		return nil, errors.New("--clients and --jobs must be at least 1")
	}
	if (opts.MTLS || opts.JobUIDs) && !opts.Local {
		return nil, errors.New("--mtls and --job-uids need --local: they compare two local clusters")
	}
	if opts.MTLS && opts.JobUIDs {
		return nil, errors.New("--mtls and --job-uids: one comparison at a time")
	}
	if opts.Local {
		lc, err := startLocalCluster(ctx, opts.Command, localVariant{})
		if err != nil {
			return nil, err
		}
		defer lc.close()
		opts.Scheduler = lc.addr
	}
	res := &benchResult{
		Scheduler: opts.Scheduler, Local: opts.Local, Clients: opts.Clients, Jobs: opts.Jobs,
		Command: opts.Command, Args: opts.Args, Errors: map[string]int{},
	}
	var retries atomic.Int64
	var plain, other loadSample
	if !opts.MTLS && !opts.JobUIDs {
		var err error
		if plain, err = loadThrough(ctx, opts, opts.Jobs, opts.Scheduler, nil, res, &retries); err != nil {
			return nil, err
		}
	} else {
		lc, err := startLocalCluster(ctx, opts.Command, localVariant{secure: opts.MTLS, jobUIDs: opts.JobUIDs})
		if err != nil {
			return nil, err
		}
		defer lc.close()
		// Rounds alternate between the two clusters, so that a change in
		// the machine's load (it is shared) weighs on both alike.
		rounds := min(benchRounds, opts.Jobs)
		for r := range rounds {
			n := opts.Jobs/rounds + btoi(r < opts.Jobs%rounds)
			p, err := loadThrough(ctx, opts, n, opts.Scheduler, nil, res, &retries)
			if err != nil {
				return nil, err
			}
			plain.merge(p)
			q, err := loadThrough(ctx, opts, n, lc.addr, lc.clientTLS, res, &retries)
			if err != nil {
				return nil, err
			}
			other.merge(q)
		}
		st := other.stats()
		if opts.MTLS {
			res.MTLS = &st
		} else {
			res.JobUIDs = &st
		}
	}
	stats := plain.stats()
	if res.MTLS != nil && stats.P50Ms > 0 && stats.JobsPerSec > 0 {
		res.MTLSP50Ratio = res.MTLS.P50Ms / stats.P50Ms
		res.MTLSThroughputRatio = res.MTLS.JobsPerSec / stats.JobsPerSec
	}
	if res.JobUIDs != nil && stats.P50Ms > 0 && stats.JobsPerSec > 0 {
		res.JobUIDsP50Ratio = res.JobUIDs.P50Ms / stats.P50Ms
		res.JobUIDsThroughputRatio = res.JobUIDs.JobsPerSec / stats.JobsPerSec
	}
	res.Baton = stats
	res.Retries = int(retries.Load())
	if !opts.Baseline {
		return res, nil
	}
	sample, err := runLoad(ctx, opts.Clients, opts.Jobs, func(ctx context.Context) error {
		return exec.CommandContext(ctx, opts.Command, opts.Args...).Run()
	})
	if err != nil {
		return nil, err
	}
	base := sample.stats()
	res.Exec = &base
	if base.P50Ms > 0 {
		res.P50Ratio = res.Baton.P50Ms / base.P50Ms
	}
	if base.JobsPerSec > 0 {
		res.ThroughputRatio = res.Baton.JobsPerSec / base.JobsPerSec
	}
	return res, nil
}

// loadThrough runs the load through the scheduler at addr, counting
// errors into res.
func loadThrough(ctx context.Context, opts benchOptions, jobs int, addr string, clientTLS *tls.Config, res *benchResult, retries *atomic.Int64) (loadSample, error) {
	httpClient := serving.NewHTTPClient(clientTLS)
	defer httpClient.CloseIdleConnections()
	client := batonv1connect.NewSchedulerServiceClient(httpClient, serving.BaseURL(addr, clientTLS != nil))
	var mu sync.Mutex
	return runLoad(ctx, opts.Clients, jobs, func(ctx context.Context) error {
		err := runJob(ctx, client, opts, retries)
		if err != nil {
			mu.Lock()
			res.Errors[errorKey(err)]++
			mu.Unlock()
		}
		return err
	})
}

// benchRounds is how many alternating rounds --mtls splits the jobs into.
const benchRounds = 4

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// loadSample is what a load measured: the latency of each call that
// succeeded, the failures and the wall time.
type loadSample struct {
	times  []time.Duration
	failed int
	wall   time.Duration
}

// merge adds another run's measurements, as if both were one run.
func (s *loadSample) merge(o loadSample) {
	s.times = append(s.times, o.times...)
	s.failed += o.failed
	s.wall += o.wall
}

func (s loadSample) stats() benchStats {
	times := slices.Sorted(slices.Values(s.times))
	st := benchStats{
		Completed: len(times),
		Failed:    s.failed,
		P50Ms:     percentileMs(times, 0.50),
		P90Ms:     percentileMs(times, 0.90),
		P99Ms:     percentileMs(times, 0.99),
		WallSec:   s.wall.Seconds(),
	}
	if s.wall > 0 {
		st.JobsPerSec = float64(len(times)) / s.wall.Seconds()
	}
	return st
}

// runLoad runs total calls of fn from clients goroutines and measures the
// latency of those that succeed and the sustained rate. It fails only when
// ctx ends.
func runLoad(ctx context.Context, clients, total int, fn func(context.Context) error) (loadSample, error) {
	var (
		next   atomic.Int64
		failed atomic.Int64
		mu     sync.Mutex
		times  = make([]time.Duration, 0, total)
		wg     sync.WaitGroup
	)
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for next.Add(1) <= int64(total) && ctx.Err() == nil {
				t0 := time.Now()
				if err := fn(ctx); err != nil {
					failed.Add(1)
					continue
				}
				d := time.Since(t0)
				mu.Lock()
				times = append(times, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return loadSample{}, err
	}
	return loadSample{times: times, failed: int(failed.Load()), wall: time.Since(start)}, nil
}

// percentileMs is the nearest-rank percentile of sorted durations, in ms.
func percentileMs(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := max(int(math.Ceil(p*float64(len(sorted))))-1, 0)
	return float64(sorted[i]) / float64(time.Millisecond)
}

// jobStateError is a job that ran to an end other than success.
type jobStateError struct{ state batonv1.JobState }

func (e *jobStateError) Error() string { return "job ended " + e.state.String() }

// errorKey names an error in the result's error counts.
func errorKey(err error) string {
	var se *jobStateError
	if errors.As(err, &se) {
		return "job_" + strings.TrimPrefix(se.state.String(), "JOB_STATE_")
	}
	return connect.CodeOf(err).String()
}

// runJob starts one job through the scheduler and follows it to its final
// status. StartJob answered ResourceExhausted is retried after a pause.
func runJob(ctx context.Context, client batonv1connect.SchedulerServiceClient, opts benchOptions, retries *atomic.Int64) error {
	req := &batonv1.StartJobRequest{WorkerId: opts.Worker, Command: opts.Command, Args: opts.Args}
	var jobID string
	for {
		res, err := client.StartJob(ctx, connect.NewRequest(req))
		if connect.CodeOf(err) == connect.CodeResourceExhausted {
			retries.Add(1)
			if !sleepCtx(ctx, benchRetryDelay) {
				return ctx.Err()
			}
			continue
		}
		if err != nil {
			return err
		}
		jobID = res.Msg.GetJobId()
		break
	}
	stream, err := client.StreamJobOutput(ctx, connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: jobID, Follow: true}))
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Receive() {
		if st := stream.Msg().GetStatus(); st != nil {
			if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
				return &jobStateError{state: st.GetState()}
			}
			return nil
		}
	}
	if err := stream.Err(); err != nil {
		return err
	}
	return connect.NewError(connect.CodeDataLoss, errors.New("output stream ended without the job's final status"))
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// printBench writes the result as a table.
func printBench(w io.Writer, r *benchResult) {
	where := r.Scheduler
	if r.Local {
		where += " (local: 1 scheduler, 2 workers, in-process)"
	}
	cmdline := strings.Join(append([]string{r.Command}, r.Args...), " ")
	fmt.Fprintf(w, "%d jobs of %q from %d clients, scheduler %s\n\n", r.Jobs, cmdline, r.Clients, where)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tcompleted\tfailed\tp50 ms\tp90 ms\tp99 ms\tjobs/s\t")
	row := func(name string, s benchStats) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%.2f\t%.2f\t%.1f\t\n", name, s.Completed, s.Failed, s.P50Ms, s.P90Ms, s.P99Ms, s.JobsPerSec)
	}
	row("baton", r.Baton)
	if r.MTLS != nil {
		row("baton mTLS", *r.MTLS)
	}
	if r.JobUIDs != nil {
		row("baton job uids", *r.JobUIDs)
	}
	if r.Exec != nil {
		row("os/exec", *r.Exec)
	}
	_ = tw.Flush()
	if r.Exec != nil {
		fmt.Fprintf(w, "\nbaton/exec: p50 %.1fx, throughput %.2fx\n", r.P50Ratio, r.ThroughputRatio)
	}
	if r.MTLS != nil {
		fmt.Fprintf(w, "mTLS/h2c: p50 %.2fx, throughput %.2fx\n", r.MTLSP50Ratio, r.MTLSThroughputRatio)
	}
	if r.JobUIDs != nil {
		fmt.Fprintf(w, "job uids/worker uid: p50 %.2fx, throughput %.2fx\n", r.JobUIDsP50Ratio, r.JobUIDsThroughputRatio)
	}
	errs := "none"
	if len(r.Errors) > 0 {
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range r.Errors {
				if !yield(k) {
					return
				}
			}
		})
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.Errors[k]))
		}
		errs = strings.Join(parts, ", ")
	}
	fmt.Fprintf(w, "errors: %s; StartJob retried after ResourceExhausted: %d\n", errs, r.Retries)
}

// localCluster is a scheduler and two workers served on loopback by this
// process, with their state in a temporary directory.
type localCluster struct {
	addr string
	// clientTLS is what a client of a secure cluster dials with: an admin
	// certificate; nil for h2c.
	clientTLS *tls.Config
	closers   []func()
}

// serve serves h on a loopback port until the cluster closes, and runs run
// (if any) alongside; it returns the bound address.
func (lc *localCluster) serve(ctx context.Context, h http.Handler, serverTLS *tls.Config, run func(context.Context) error, logger *slog.Logger) (string, error) {
	srv, err := serving.Listen("127.0.0.1:0", h, serverTLS, logger)
	if err != nil {
		return "", err
	}
	serveDone := make(chan struct{})
	go func() {
		defer close(serveDone)
		_ = srv.Serve()
	}()
	lc.closers = append(lc.closers, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-serveDone
	})
	if run != nil {
		runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
		runDone := make(chan struct{})
		go func() {
			defer close(runDone)
			_ = run(runCtx)
		}()
		lc.closers = append(lc.closers, func() { stop(); <-runDone })
	}
	return srv.Addr().String(), nil
}

// close stops everything, last started first, and removes the state.
func (lc *localCluster) close() {
	for _, c := range slices.Backward(lc.closers) {
		c()
	}
}

// startLocalCluster starts the scheduler and two workers that allow command
// (besides true, sh and bash), and waits until both workers are READY.
// secure makes it a cluster over mutual TLS with its own CA, as `baton
// dev` runs; otherwise everything is h2c.
// localVariant is what a local cluster varies: mutual TLS, and jobs under
// uids of their own.
type localVariant struct {
	secure, jobUIDs bool
}

func startLocalCluster(ctx context.Context, command string, v localVariant) (_ *localCluster, err error) {
	secure := v.secure
	lc := &localCluster{}
	defer func() {
		if err != nil {
			lc.close()
		}
	}()
	var jobUIDs jobrun.UIDRange
	dirMode := os.FileMode(0o700)
	if v.jobUIDs {
		if os.Geteuid() != 0 {
			return nil, errors.New("--job-uids needs root: only root runs jobs under other uids")
		}
		if jobUIDs, err = jobrun.ParseUIDRange(defaultJobUIDs); err != nil {
			return nil, err
		}
		dirMode = 0o711 // jobs under other uids pass through to their homes
	}
	dir, err := os.MkdirTemp("", "baton-bench-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, dirMode); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	lc.closers = append(lc.closers, func() { _ = os.RemoveAll(dir) })
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	st, err := store.Open(ctx, filepath.Join(dir, "scheduler", "baton.db"))
	if err != nil {
		return nil, err
	}
	lc.closers = append(lc.closers, func() { _ = st.Close() })
	workerHTTP := serving.NewHTTPClient(nil)
	lc.closers = append(lc.closers, workerHTTP.CloseIdleConnections)
	names := []string{"bench-1", "bench-2"}
	creds := map[identity.Principal]*identity.Credentials{}
	if secure {
		admin := identity.Principal{Role: identity.RoleAdmin, Name: "bench"}
		principals := []identity.Principal{identity.Scheduler, admin}
		for _, n := range names {
			principals = append(principals, identity.Principal{Role: identity.RoleWorker, Name: n})
		}
		caFile, files, err := ensureCerts(filepath.Join(dir, "certs"), "bench", principals...)
		if err != nil {
			return nil, err
		}
		for _, p := range principals {
			if creds[p], err = identity.LoadCredentials(caFile, files[p][0], files[p][1]); err != nil {
				return nil, err
			}
		}
		lc.clientTLS = creds[admin].ClientTLS(identity.Expect(identity.Scheduler))
	}
	// listen serves h as p: mutual TLS with p's certificate when secure.
	listen := func(p identity.Principal, h http.Handler, run func(context.Context) error) (string, error) {
		c := creds[p]
		if c == nil {
			return lc.serve(ctx, identity.AnonymousHandler(h), nil, run, logger)
		}
		return lc.serve(ctx, identity.NewAuthenticator(c, nil, false).Middleware(h), c.ServerTLS(), run, logger)
	}
	sched, err := scheduler.New(ctx, scheduler.Options{
		Store:             st,
		HeartbeatInterval: time.Second,
		HTTPClient:        workerHTTP,
		WorkerTLS:         creds[identity.Scheduler],
		Logger:            logger,
	})
	if err != nil {
		return nil, err
	}
	if lc.addr, err = listen(identity.Scheduler, sched.Handler(), sched.Run); err != nil {
		return nil, err
	}

	allowed := []string{"true", "sh", "bash"}
	if !strings.Contains(command, "/") && !slices.Contains(allowed, command) {
		allowed = append(allowed, command)
	}
	adminHTTP := serving.NewHTTPClient(lc.clientTLS)
	lc.closers = append(lc.closers, adminHTTP.CloseIdleConnections)
	adminClient := batonv1connect.NewSchedulerServiceClient(adminHTTP, serving.BaseURL(lc.addr, secure))
	for _, name := range names {
		self := identity.Principal{Role: identity.RoleWorker, Name: name}
		var schedTLS *tls.Config
		if secure {
			schedTLS = creds[self].ClientTLS(identity.Expect(identity.Scheduler))
		}
		schedHTTP := serving.NewHTTPClient(schedTLS)
		lc.closers = append(lc.closers, schedHTTP.CloseIdleConnections)
		schedClient := batonv1connect.NewSchedulerServiceClient(schedHTTP, serving.BaseURL(lc.addr, secure))
		scripts := filepath.Join(dir, name, "scripts")
		if err := os.MkdirAll(scripts, dirMode); err != nil {
			return nil, err
		}
		if err := os.Chmod(filepath.Dir(scripts), dirMode); err != nil {
			return nil, err
		}
		// The worker must know its address before it exists: listen first,
		// and hand calls to it once it does.
		var w *worker.Worker
		ready := make(chan struct{})
		addr, err := listen(self, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			<-ready
			w.Handler().ServeHTTP(rw, r)
		}), nil)
		if err != nil {
			return nil, err
		}
		w, err = worker.New(worker.Options{
			Name:      name,
			Address:   addr,
			Scheduler: schedClient,
			Logger:    logger,
			Runner: jobrun.Options{
				DataDir:         filepath.Join(dir, name, "data"),
				ScriptsDir:      scripts,
				AllowedCommands: allowed,
				Capacity:        defaultWorkerConfig().Worker.Capacity,
				StopGrace:       time.Second,
				JobUIDs:         jobUIDs,
			},
		})
		if err != nil {
			return nil, err
		}
		close(ready)
		lc.closers = append(lc.closers, func() {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = w.Close(cctx)
		})
		runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = w.Run(runCtx)
		}()
		lc.closers = append(lc.closers, func() { stop(); <-done })
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := adminClient.ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{
			States: []batonv1.WorkerState{batonv1.WorkerState_WORKER_STATE_READY},
		}))
		if err == nil && len(res.Msg.GetWorkers()) == 2 {
			return lc, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("local cluster: workers did not register within 10s (last error: %v)", err)
		}
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
}
