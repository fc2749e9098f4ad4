// Package bench is `baton bench`: it starts local clusters of baton
// processes from the daemons' default configurations and measures
// throughput, latency, streaming and footprint against targets.
package bench

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/baton-run/baton/client"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
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
	// compare with jobs under one account.
	JobUIDs bool
	// StreamMiB, with Local, measures following the output of a job that
	// writes this many MiB instead of running the load.
	StreamMiB int
	// StreamRuns is how many times each way of streaming runs.
	StreamRuns int
	// Queue, with Local, queues this many jobs at once behind workers of
	// small capacity and measures how they are handed out, instead of
	// the load.
	Queue int
	// Schedules, with Local, runs the load a second time on a local
	// cluster with this many schedules defined (none due during the run),
	// to compare with none.
	Schedules int
	// Replicas, with Local, runs the load a second time on a local
	// cluster of this many scheduler replicas, each with an embedded etcd
	// member, to compare with one scheduler on SQLite.
	Replicas int
	// Binary is the baton executable the local cluster runs; empty means
	// this process's own.
	Binary string
	// TempDir is where the local cluster's directory is made; empty means
	// the system's temporary directory.
	TempDir string
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
	// Processes are a local cluster's CPU, memory and disk figures.
	Processes *benchProcesses `json:"processes,omitempty"`
}

// benchResult is what `baton bench` prints.
type benchResult struct {
	Scheduler string   `json:"scheduler"`
	Local     bool     `json:"local"`
	Clients   int      `json:"clients,omitempty"`
	Jobs      int      `json:"jobs,omitempty"`
	Command   string   `json:"command,omitempty"`
	Args      []string `json:"args,omitempty"`
	// JobsRunAs says which uid the local cluster's jobs ran under.
	JobsRunAs string `json:"jobs_run_as,omitempty"`
	// Baton is submit→done through the scheduler: from the first RunJob
	// attempt to the final status it brings.
	Baton *benchStats `json:"baton,omitempty"`
	// Errors counts jobs that failed, by Connect code, or by final job
	// state ("job_FAILED", ...) for jobs that ran but did not succeed.
	Errors map[string]int `json:"errors,omitempty"`
	// Retries counts starts answered ResourceExhausted and retried.
	Retries int `json:"resource_exhausted_retries"`
	// MTLS is the same load on a local cluster over mutual TLS (clients
	// with certificates, scheduler ↔ workers mTLS); MTLSP50Ratio and
	// MTLSThroughputRatio compare it with Baton over h2c.
	MTLS                *benchStats `json:"baton_mtls,omitempty"`
	MTLSP50Ratio        float64     `json:"mtls_p50_ratio,omitempty"`
	MTLSThroughputRatio float64     `json:"mtls_throughput_ratio,omitempty"`
	// JobUIDs is the same load on a local cluster whose jobs run under
	// uids of their own; the ratios compare it with Baton (jobs under
	// one account).
	JobUIDs                *benchStats `json:"baton_job_uids,omitempty"`
	JobUIDsP50Ratio        float64     `json:"job_uids_p50_ratio,omitempty"`
	JobUIDsThroughputRatio float64     `json:"job_uids_throughput_ratio,omitempty"`
	// Schedules is the same load on a local cluster with --schedules
	// schedules defined; the ratios compare it with Baton (none).
	Schedules                *benchStats `json:"baton_schedules,omitempty"`
	SchedulesDefined         int         `json:"schedules_defined,omitempty"`
	SchedulesP50Ratio        float64     `json:"schedules_p50_ratio,omitempty"`
	SchedulesThroughputRatio float64     `json:"schedules_throughput_ratio,omitempty"`
	// Replicated is the same load on a local cluster of Replicas
	// scheduler replicas on embedded etcd; the ratios compare it with
	// Baton (one scheduler on SQLite).
	Replicated                *benchStats `json:"baton_replicated,omitempty"`
	Replicas                  int         `json:"replicas,omitempty"`
	ReplicatedP50Ratio        float64     `json:"replicated_p50_ratio,omitempty"`
	ReplicatedP99Ratio        float64     `json:"replicated_p99_ratio,omitempty"`
	ReplicatedThroughputRatio float64     `json:"replicated_throughput_ratio,omitempty"`
	// Exec is the same command run with os/exec, as a baseline.
	Exec *benchStats `json:"exec,omitempty"`
	// P50Ratio is Baton's p50 over exec's; ThroughputRatio is Baton's
	// jobs/s over exec's.
	P50Ratio        float64 `json:"p50_ratio,omitempty"`
	ThroughputRatio float64 `json:"throughput_ratio,omitempty"`
	// Stream is the output-stream comparison of --stream-mib.
	Stream *streamResult `json:"stream,omitempty"`
	// Queue is the queue's figures of --queue.
	Queue *queueResult `json:"queue,omitempty"`
	// TargetsCluster names the cluster whose figures Targets judge.
	TargetsCluster string `json:"targets_cluster,omitempty"`
	// Targets are the fast path's targets, judged on this run's figures.
	Targets []benchTarget `json:"targets,omitempty"`
}

// benchRetryDelay is the pause before retrying a start answered
// ResourceExhausted (every worker full).
const benchRetryDelay = 20 * time.Millisecond

// NewCommand is `baton bench`.
func NewCommand() *cobra.Command {
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

--local starts a scheduler and two workers as child processes of this
one (baton scheduler and baton worker, each with a config file), on
loopback ports, with their configuration and data in a temporary
directory, and stops them (SIGTERM) and removes it afterwards. After 50
unmeasured jobs through each cluster it runs the load, and reports also
each process's CPU time per job (utime+stime of /proc/PID/stat during
the measured rounds; a worker's jobs are its children, not counted),
their peak RSS, each worker's disk and live heap growth per finished
job, and the fast path's targets judged on these figures:

  go run ./cmd/baton bench --local --mtls --clients 1 --jobs 300    # latency: p50 ≤ 1.6x, p99 ≤ 3x os/exec
  go run ./cmd/baton bench --local --mtls --clients 16 --jobs 2000  # throughput ≥ 0.6x os/exec
  go run ./cmd/baton bench --local --mtls --stream-mib 50           # output stream ≤ 3x a pipe

Every run prints each target it has figures for, noting those set for
another number of clients. Baton's CPU per job (scheduler + workers) is
to stay ≤ 2 ms, a worker's disk ≤ 8 KiB and heap ≤ 1 KiB per retained job.

--replicas N runs the load also on a second local cluster whose scheduler
is N replicas (N processes of baton scheduler, each with an embedded etcd
member that syncs every write to disk, store.backend "etcd"), rounds
alternating with the cluster on SQLite; the clients and workers are given
every replica's address and follow the leader. It prints the replicated
cluster's figures and its p50, p99 and throughput over SQLite's:

  go run ./cmd/baton bench --local --replicas 3 --clients 16 --jobs 2000

--stream-mib N runs, instead of the load, a job writing N MiB to stdout,
followed into a file by this binary as a child process,
  baton run --config CLIENT.toml -- head -c BYTES /dev/zero > FILE
against
  sh -c 'head -c BYTES /dev/zero | cat > FILE'
--stream-runs times each, alternating, and compares the medians.

--queue N runs, instead of the load, N jobs submitted at once from --clients
clients with StartJob and queue_timeout -1s to a local cluster whose two
workers run 4 jobs each, so that nearly all of them wait on the scheduler.
Once all have ended it reports, from their statuses, the dispatch latency
(from a job's end on a worker to the start of the next job in its slot),
the submission and drain rates, and the scheduler's CPU per job:

  go run ./cmd/baton bench --local --queue 10000`,
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
	flags.BoolVar(&opts.Local, "local", false, "start a scheduler and 2 workers as child processes and bench them")
	flags.BoolVar(&opts.MTLS, "mtls", false, "with --local: run the load again on a local cluster over mutual TLS and compare; with --stream-mib: stream over mutual TLS")
	flags.BoolVar(&opts.JobUIDs, "job-uids", false, "with --local, as root: run the load again on a local cluster whose jobs get uids of their own and compare")
	flags.IntVar(&opts.StreamMiB, "stream-mib", 0, "with --local: instead of the load, follow a job writing this many MiB through `baton run` into a file, against a pipe")
	flags.IntVar(&opts.StreamRuns, "stream-runs", 5, "with --stream-mib: runs of each way")
	flags.IntVar(&opts.Schedules, "schedules", 0, "with --local: run the load again on a local cluster with this many schedules defined (none due) and compare")
	flags.IntVar(&opts.Replicas, "replicas", 0, "with --local: run the load again on a local cluster of this many scheduler replicas on embedded etcd (at least 2) and compare with SQLite")
	flags.IntVar(&opts.Queue, "queue", 0, "with --local: instead of the load, queue this many jobs at once behind 2 workers of capacity 4 and measure their dispatch")
	flags.StringVarP(&output, "output", "o", "table", "table or json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if output != "table" && output != "json" {
			return fmt.Errorf("--output %q: use table or json", output)
		}
		res, err := runBench(cmd.Context(), opts)
		if res == nil {
			return err
		}
		// Figures measured before a failed cleanup are still worth showing.
		if output == "json" {
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return errors.Join(enc.Encode(res), err)
		}
		printBench(cmd.OutOrStdout(), res)
		return err
	}
	return cmd
}

// runBench runs the load (and the baseline) and returns the figures. With
// Local, an error stopping the cluster comes with the figures.
func runBench(ctx context.Context, opts benchOptions) (*benchResult, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	if opts.Queue > 0 {
		return runQueueBench(ctx, opts)
	}
	res := &benchResult{
		Scheduler: opts.Scheduler, Local: opts.Local, Clients: opts.Clients, Jobs: opts.Jobs,
		Command: opts.Command, Args: opts.Args, Errors: map[string]int{},
	}
	var retries atomic.Int64
	if opts.Local {
		var err error
		if res, err = runLocal(ctx, opts, res, &retries); err != nil || opts.StreamMiB > 0 {
			return res, err
		}
	} else {
		sample, err := loadThrough(ctx, opts, opts.Jobs, []string{opts.Scheduler}, nil, res, &retries)
		if err != nil {
			return nil, err
		}
		st := sample.stats()
		res.Baton = &st
	}
	res.Retries = int(retries.Load())
	if opts.Baseline {
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
	}
	if opts.Local {
		res.TargetsCluster, res.Targets = fastPathTargets(res)
	}
	return res, nil
}

// check refuses flags that do not go together.
func (opts benchOptions) check() error {
	switch {
	case (opts.MTLS || opts.JobUIDs || opts.StreamMiB != 0 || opts.Queue != 0) && !opts.Local:
		return errors.New("--mtls, --job-uids, --stream-mib and --queue need --local: they run on local clusters")
	case opts.Queue < 0:
		return errors.New("--queue must be positive")
	case opts.Queue > 0 && (opts.JobUIDs || opts.StreamMiB != 0):
		return errors.New("--queue goes with --mtls or alone, not with --job-uids or --stream-mib")
	case opts.MTLS && opts.JobUIDs, opts.Schedules != 0 && (opts.MTLS || opts.JobUIDs || opts.StreamMiB != 0 || opts.Queue != 0),
		opts.Replicas != 0 && (opts.MTLS || opts.JobUIDs || opts.Schedules != 0 || opts.StreamMiB != 0 || opts.Queue != 0):
		return errors.New("--mtls, --job-uids, --schedules and --replicas: one comparison at a time, and not with --stream-mib or --queue")
	case (opts.Schedules != 0 || opts.Replicas != 0) && !opts.Local:
		return errors.New("--schedules and --replicas need --local: they run on local clusters")
	case opts.Replicas < 0 || opts.Replicas == 1 || opts.Replicas > maxBenchReplicas:
		return fmt.Errorf("--replicas must be 2 to %d: one replica is the SQLite cluster already measured", maxBenchReplicas)
	case opts.Schedules < 0 || opts.Schedules > maxBenchSchedules:
		return fmt.Errorf("--schedules must be 0 to %d (the scheduler's default max_schedules_per_owner)", maxBenchSchedules)
	case opts.StreamMiB < 0 || (opts.StreamMiB > 0 && opts.StreamRuns < 1):
		return errors.New("--stream-mib and --stream-runs must be positive")
	case opts.StreamMiB > 0 && opts.JobUIDs:
		return errors.New("--stream-mib goes with --mtls or alone, not with --job-uids")
	case opts.StreamMiB == 0 && (opts.Clients < 1 || opts.Jobs < 1):
		return errors.New("--clients and --jobs must be at least 1")
	}
	return nil
}

// runLocal starts the local clusters, runs the load (or the stream
// measurement) on them and stops them.
func runLocal(ctx context.Context, opts benchOptions, res *benchResult, retries *atomic.Int64) (_ *benchResult, err error) {
	binary, err := localBinary(opts)
	if err != nil {
		return nil, err
	}
	type variant struct {
		label string
		v     localVariant
	}
	base := localVariant{}
	res.JobsRunAs = jobsRunAs()
	if opts.JobUIDs {
		if os.Geteuid() != 0 {
			return nil, errors.New("--job-uids needs root: only root runs jobs under other uids")
		}
		// A root worker cannot be told to run jobs as itself: the
		// comparison is with jobs under one account.
		base.jobUser = "nobody"
		res.JobsRunAs = "nobody (worker.job_user)"
	}
	variants := []variant{{"h2c", base}}
	switch {
	case opts.StreamMiB > 0:
		v := localVariant{secure: opts.MTLS, outputLimit: int64(opts.StreamMiB+1) << 20}
		variants = []variant{{"h2c", v}}
		if opts.MTLS {
			variants[0].label = "mTLS"
		}
	case opts.MTLS:
		variants = append(variants, variant{"mTLS", localVariant{secure: true}})
	case opts.JobUIDs:
		variants = append(variants, variant{"job uids", localVariant{jobUIDs: true}})
	case opts.Schedules > 0:
		variants = append(variants, variant{"schedules", localVariant{schedules: opts.Schedules}})
	case opts.Replicas > 1:
		variants = append(variants, variant{"replicated", localVariant{replicas: opts.Replicas}})
	}
	loads := make([]*clusterLoad, 0, len(variants))
	defer func() {
		for _, c := range loads {
			err = errors.Join(err, c.lc.close())
		}
	}()
	for _, v := range variants {
		lc, err := startLocalCluster(ctx, binary, opts.TempDir, opts.Command, v.v)
		if err != nil {
			return nil, fmt.Errorf("local cluster (%s): %w", v.label, err)
		}
		loads = append(loads, &clusterLoad{lc: lc})
		if err := defineSchedules(ctx, lc, v.v.schedules); err != nil {
			return nil, fmt.Errorf("local cluster (%s): %w", v.label, err)
		}
	}
	res.Scheduler = loads[0].lc.addr
	if opts.StreamMiB > 0 {
		s, err := runStream(ctx, binary, loads[0].lc, variants[0].label, opts.StreamMiB, opts.StreamRuns)
		if err != nil {
			return nil, err
		}
		return &benchResult{Scheduler: res.Scheduler, Local: true, JobsRunAs: res.JobsRunAs, Stream: s,
			TargetsCluster: variants[0].label, Targets: streamTargets(s)}, nil
	}
	for _, c := range loads {
		// What the first jobs set up once (connections, buffers, pools)
		// is not what each job costs.
		scratch := &benchResult{Errors: map[string]int{}}
		var r atomic.Int64
		if _, err := loadThrough(ctx, opts, min(benchWarmup, opts.Jobs), c.lc.addrs, c.lc.clientTLS, scratch, &r); err != nil {
			return nil, err
		}
		if c.before, err = c.lc.footprint(ctx); err != nil {
			return nil, err
		}
	}
	// Rounds alternate between the clusters, so that a change in the
	// machine's load (it is shared) weighs on all alike.
	rounds := 1
	if len(loads) > 1 {
		rounds = min(benchRounds, opts.Jobs)
	}
	for r := range rounds {
		n := opts.Jobs/rounds + btoi(r < opts.Jobs%rounds)
		for _, c := range loads {
			if err := c.round(ctx, opts, n, res, retries); err != nil {
				return nil, err
			}
		}
	}
	stats := make([]benchStats, len(loads))
	for i, c := range loads {
		if stats[i], err = c.stats(ctx); err != nil {
			return nil, err
		}
	}
	res.Baton = &stats[0]
	if len(stats) > 1 {
		other := &stats[1]
		var p50, tput float64
		if res.Baton.P50Ms > 0 && res.Baton.JobsPerSec > 0 {
			p50, tput = other.P50Ms/res.Baton.P50Ms, other.JobsPerSec/res.Baton.JobsPerSec
		}
		switch {
		case opts.MTLS:
			res.MTLS, res.MTLSP50Ratio, res.MTLSThroughputRatio = other, p50, tput
		case opts.Schedules > 0:
			res.Schedules, res.SchedulesP50Ratio, res.SchedulesThroughputRatio = other, p50, tput
			res.SchedulesDefined = opts.Schedules
		case opts.Replicas > 1:
			res.Replicated, res.ReplicatedP50Ratio, res.ReplicatedThroughputRatio = other, p50, tput
			res.Replicas = opts.Replicas
			if res.Baton.P99Ms > 0 {
				res.ReplicatedP99Ratio = other.P99Ms / res.Baton.P99Ms
			}
		default:
			res.JobUIDs, res.JobUIDsP50Ratio, res.JobUIDsThroughputRatio = other, p50, tput
		}
	}
	return res, nil
}

// localBinary is the baton executable local clusters run: opts.Binary,
// or this process's own.
func localBinary(opts benchOptions) (string, error) {
	if opts.Binary != "" {
		return opts.Binary, nil
	}
	return os.Executable()
}

// jobsRunAs says which uid a local cluster's jobs run under by default.
func jobsRunAs() string {
	if os.Geteuid() == 0 {
		return "uids of their own (worker.job_uids, as root by default)"
	}
	return "the worker's uid"
}

// loadThrough runs the load through the scheduler at addrs (its replicas,
// or a comma-separated list of them), counting errors into res.
func loadThrough(ctx context.Context, opts benchOptions, jobs int, addrs []string, clientTLS *tls.Config, res *benchResult, retries *atomic.Int64) (loadSample, error) {
	cl, err := benchClient(addrs, clientTLS)
	if err != nil {
		return loadSample{}, err
	}
	defer cl.Close()
	var mu sync.Mutex
	return runLoad(ctx, opts.Clients, jobs, func(ctx context.Context) error {
		err := runJob(ctx, cl, opts, retries)
		if err != nil {
			mu.Lock()
			res.Errors[errorKey(err)]++
			mu.Unlock()
		}
		return err
	})
}

// benchClient is a client of the scheduler at addrs (h2c, or TLS with
// clientTLS), following the leader among several. It makes up no
// idempotency keys: the starts measured are the fast path without one, as
// in the figures of earlier versions.
func benchClient(addrs []string, clientTLS *tls.Config) (*client.Client, error) {
	opts := []client.Option{client.WithoutGeneratedKeys()}
	if clientTLS != nil {
		opts = append(opts, client.WithTLSConfig(clientTLS))
	}
	return client.New(client.Config{Schedulers: addrs}, opts...)
}

// benchRounds is how many alternating rounds two clusters split the jobs
// into.
const benchRounds = 4

// maxBenchReplicas bounds --replicas: etcd clusters have an odd number of
// members, rarely more than 7.
const maxBenchReplicas = 7

// benchWarmup is how many jobs go through a local cluster, unmeasured,
// before the load.
const benchWarmup = 50

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

// runJob runs one job through the scheduler with RunJob and follows it to
// its final status. A start answered ResourceExhausted (every worker full)
// is retried after a pause.
func runJob(ctx context.Context, cl *client.Client, opts benchOptions, retries *atomic.Int64) error {
	req := &batonv1.StartJobRequest{WorkerId: opts.Worker, Command: opts.Command, Args: opts.Args}
	for {
		st, err := cl.Run(ctx, req, client.Handlers{})
		if errors.Is(err, client.ErrResourceExhausted) {
			retries.Add(1)
			if !sleepCtx(ctx, benchRetryDelay) {
				return ctx.Err()
			}
			continue
		}
		if err != nil {
			return err
		}
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			return &jobStateError{state: st.GetState()}
		}
		return nil
	}
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

// printBench writes the result as tables.
func printBench(w io.Writer, r *benchResult) {
	if r.Queue != nil {
		printQueue(w, r)
		return
	}
	where := r.Scheduler
	if r.Local {
		where += " (local: 1 scheduler, 2 workers, child processes; jobs run as " + r.JobsRunAs + ")"
		if r.Replicated != nil {
			where += fmt.Sprintf("; and %d scheduler replicas on embedded etcd (fsync on) with 2 workers", r.Replicas)
		}
	}
	if r.Stream != nil {
		fmt.Fprintf(w, "scheduler %s\n", where)
		printStream(w, r.Stream)
		printTargets(w, r.TargetsCluster, 0, r.Targets)
		return
	}
	cmdline := strings.Join(append([]string{r.Command}, r.Args...), " ")
	fmt.Fprintf(w, "%d jobs of %q from %d clients, scheduler %s\n\n", r.Jobs, cmdline, r.Clients, where)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tcompleted\tfailed\tp50 ms\tp90 ms\tp99 ms\tjobs/s\t")
	row := func(name string, s *benchStats) {
		if s != nil {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%.2f\t%.2f\t%.1f\t\n", name, s.Completed, s.Failed, s.P50Ms, s.P90Ms, s.P99Ms, s.JobsPerSec)
		}
	}
	row("baton", r.Baton)
	row("baton mTLS", r.MTLS)
	row("baton job uids", r.JobUIDs)
	row(fmt.Sprintf("baton %d schedules", r.SchedulesDefined), r.Schedules)
	row(fmt.Sprintf("baton %d replicas", r.Replicas), r.Replicated)
	row("os/exec", r.Exec)
	_ = tw.Flush()
	fmt.Fprintln(w)
	if r.Exec != nil {
		fmt.Fprintf(w, "baton/exec: p50 %.1fx, throughput %.2fx\n", r.P50Ratio, r.ThroughputRatio)
	}
	if r.MTLS != nil {
		fmt.Fprintf(w, "mTLS/h2c: p50 %.2fx, throughput %.2fx\n", r.MTLSP50Ratio, r.MTLSThroughputRatio)
	}
	if r.JobUIDs != nil {
		fmt.Fprintf(w, "job uids/one account: p50 %.2fx, throughput %.2fx\n", r.JobUIDsP50Ratio, r.JobUIDsThroughputRatio)
	}
	if r.Schedules != nil {
		fmt.Fprintf(w, "%d schedules/none: p50 %.2fx, throughput %.2fx\n", r.SchedulesDefined, r.SchedulesP50Ratio, r.SchedulesThroughputRatio)
	}
	if r.Replicated != nil {
		fmt.Fprintf(w, "%d replicas (etcd)/one scheduler (SQLite): p50 %.2fx, p99 %.2fx, throughput %.2fx\n", r.Replicas, r.ReplicatedP50Ratio, r.ReplicatedP99Ratio, r.ReplicatedThroughputRatio)
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
	fmt.Fprintf(w, "errors: %s; starts retried after ResourceExhausted: %d\n", errs, r.Retries)
	label := "h2c"
	switch {
	case r.JobUIDs != nil:
		label = "one account"
	case r.Replicated != nil:
		label = "SQLite"
	}
	printProcesses(w, []string{label, "mTLS", "job uids", "schedules", "replicated"}, []*benchStats{r.Baton, r.MTLS, r.JobUIDs, r.Schedules, r.Replicated})
	printTargets(w, r.TargetsCluster, r.Clients, r.Targets)
}
