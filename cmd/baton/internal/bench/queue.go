package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/baton-run/baton/client"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

// benchQueueCapacity is each local worker's capacity with --queue: small,
// so that nearly every job waits on the scheduler and each start follows
// an end.
const benchQueueCapacity = 4

// Polling while the queue drains: seldom, and one row at a time, so that
// the bench does not weigh on the scheduler it measures. A drain that
// finishes no job for queueStall is stuck.
const (
	queuePoll  = 500 * time.Millisecond
	queueStall = 30 * time.Second
)

// activeStates are the states of a job that has not ended.
var activeStates = []batonv1.JobState{
	batonv1.JobState_JOB_STATE_QUEUED, batonv1.JobState_JOB_STATE_PENDING, batonv1.JobState_JOB_STATE_RUNNING,
}

// queueResult is what `baton bench --queue` measured: jobs submitted at
// once, all waiting on the scheduler, and handed to the workers as their
// slots free.
type queueResult struct {
	Jobs     int `json:"jobs"`
	Workers  int `json:"workers"`
	Capacity int `json:"capacity"`
	// QueuedAtStart counts the StartJob calls answered QUEUED; the others
	// found a free slot.
	QueuedAtStart int `json:"queued_at_start"`
	// SubmitPerSec is StartJob calls a second, from the first call to the
	// last answer; SubmitP50Ms and SubmitP99Ms are one call's latency.
	SubmitPerSec float64 `json:"submit_per_sec"`
	SubmitP50Ms  float64 `json:"submit_p50_ms"`
	SubmitP99Ms  float64 `json:"submit_p99_ms"`
	// DrainPerSec is jobs a second from the first job's start to the last
	// job's end, DrainSec that span.
	DrainPerSec float64 `json:"drain_per_sec"`
	DrainSec    float64 `json:"drain_sec"`
	// Dispatch is the time from a slot freeing (a job's end on a worker)
	// to the next job's start in it, over every start that waited for a
	// slot; DispatchQuiet the same over the starts after the last StartJob
	// call, when the submissions no longer share the CPU.
	Dispatch      latencyStats `json:"dispatch"`
	DispatchQuiet latencyStats `json:"dispatch_after_submit"`
	// OverCapacity counts starts that came before the end that freed
	// their slot: a worker ran more jobs than its capacity.
	OverCapacity int `json:"over_capacity"`
	Succeeded    int `json:"succeeded"`
	// Ended counts the jobs that did not succeed, by final state.
	Ended map[string]int `json:"ended,omitempty"`
	// SchedulerCPUMsPerJob is the scheduler's CPU from the first StartJob
	// to the last end, per job; SchedulerDispatchCPUMsPerJob is its CPU
	// after the last StartJob call per job started meanwhile.
	SchedulerCPUMsPerJob         float64 `json:"scheduler_cpu_ms_per_job"`
	SchedulerDispatchCPUMsPerJob float64 `json:"scheduler_dispatch_cpu_ms_per_job"`
	// CPUMsPerJob is each process's CPU over the whole run, per job, keyed
	// as benchProcesses.CPUMsPerJob.
	CPUMsPerJob map[string]float64 `json:"cpu_ms_per_job"`
	// LoadBefore and LoadAfter are the 1, 5 and 15 minute load averages
	// (/proc/loadavg).
	LoadBefore string `json:"load_before"`
	LoadAfter  string `json:"load_after"`
}

// latencyStats are the percentiles of a set of latencies.
type latencyStats struct {
	Samples int     `json:"samples"`
	P50Ms   float64 `json:"p50_ms"`
	P99Ms   float64 `json:"p99_ms"`
	MaxMs   float64 `json:"max_ms"`
}

func latencyStatsOf(d []time.Duration) latencyStats {
	s := slices.Sorted(slices.Values(d))
	return latencyStats{Samples: len(s), P50Ms: percentileMs(s, 0.50), P99Ms: percentileMs(s, 0.99), MaxMs: percentileMs(s, 1)}
}

// runQueueBench starts a local cluster whose workers take
// benchQueueCapacity jobs each, queues opts.Queue jobs on it at once and
// measures how the queue hands them out.
func runQueueBench(ctx context.Context, opts benchOptions) (_ *benchResult, err error) {
	binary, err := localBinary(opts)
	if err != nil {
		return nil, err
	}
	lc, err := startLocalCluster(ctx, binary, opts.TempDir, opts.Command, localVariant{secure: opts.MTLS, capacity: benchQueueCapacity})
	if err != nil {
		return nil, fmt.Errorf("local cluster: %w", err)
	}
	defer func() { err = errors.Join(err, lc.close()) }()
	res := &benchResult{
		Scheduler: lc.addr, Local: true, Clients: opts.Clients, Jobs: opts.Queue,
		Command: opts.Command, Args: opts.Args, JobsRunAs: jobsRunAs(), Errors: map[string]int{},
	}
	// What the first jobs set up once (connections, the keepers' first
	// forks) is not what each job costs.
	if _, err := queueRound(ctx, lc, opts, min(benchWarmup, opts.Queue), map[string]int{}); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	if res.Queue, err = queueRound(ctx, lc, opts, opts.Queue, res.Errors); err != nil {
		return nil, err
	}
	return res, nil
}

// queueRound submits n jobs that wait without limit, from opts.Clients
// clients as fast as they are answered, waits until every one has ended,
// and measures the round from the jobs' final statuses. StartJob failures
// are counted into errs.
func queueRound(ctx context.Context, lc *localCluster, opts benchOptions, n int, errs map[string]int) (*queueResult, error) {
	cl, err := benchClient(lc.addrs, lc.clientTLS)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	sched := cl.Scheduler()

	qr := &queueResult{Jobs: n, Workers: len(lc.workers), Capacity: benchQueueCapacity, LoadBefore: loadAvg()}
	cpu0, err := lc.cpu()
	if err != nil {
		return nil, err
	}
	var (
		mu  sync.Mutex
		ids = make(map[string]bool, n)
	)
	sample, err := runLoad(ctx, opts.Clients, n, func(ctx context.Context) error {
		r, err := cl.Start(ctx, &batonv1.StartJobRequest{
			WorkerId: opts.Worker, Command: opts.Command, Args: opts.Args,
			QueueTimeout: durationpb.New(client.NoQueueLimit),
		})
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs[errorKey(err)]++
			return err
		}
		ids[r.GetJobId()] = true
		if js := r.GetJobs(); len(js) > 0 && js[0].GetState() == batonv1.JobState_JOB_STATE_QUEUED {
			qr.QueuedAtStart++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	submitted := time.Now()
	cpu1, err := lc.cpu()
	if err != nil {
		return nil, err
	}
	if err := waitDrained(ctx, lc, sched); err != nil {
		return nil, err
	}
	cpu2, err := lc.cpu()
	if err != nil {
		return nil, err
	}
	qr.LoadAfter = loadAvg()
	jobs, err := listByID(ctx, sched, ids)
	if err != nil {
		return nil, err
	}

	st := sample.stats()
	qr.SubmitPerSec, qr.SubmitP50Ms, qr.SubmitP99Ms = st.JobsPerSec, st.P50Ms, st.P99Ms
	byWorker := map[string][]jobTimes{}
	var first, last time.Time
	startedAfter := 0
	for _, j := range jobs {
		if j.GetState() == batonv1.JobState_JOB_STATE_SUCCEEDED {
			qr.Succeeded++
		} else {
			if qr.Ended == nil {
				qr.Ended = map[string]int{}
			}
			qr.Ended[strings.TrimPrefix(j.GetState().String(), "JOB_STATE_")]++
		}
		if j.GetStartedAt() == nil {
			continue // ended without running
		}
		t := jobTimes{created: j.GetCreatedAt().AsTime(), started: j.GetStartedAt().AsTime()}
		if j.GetEndedAt() != nil {
			t.ended = j.GetEndedAt().AsTime()
		}
		byWorker[j.GetWorkerId()] = append(byWorker[j.GetWorkerId()], t)
		if first.IsZero() || t.started.Before(first) {
			first = t.started
		}
		last = later(last, t.ended)
		if t.started.After(submitted) {
			startedAfter++
		}
	}
	var all, quiet []time.Duration
	for _, wj := range byWorker {
		d, over := dispatchLatencies(wj, benchQueueCapacity)
		qr.OverCapacity += over
		for _, l := range d {
			all = append(all, l.wait)
			if l.start.After(submitted) {
				quiet = append(quiet, l.wait)
			}
		}
	}
	qr.Dispatch, qr.DispatchQuiet = latencyStatsOf(all), latencyStatsOf(quiet)
	if span := last.Sub(first); span > 0 {
		qr.DrainSec = span.Seconds()
		qr.DrainPerSec = float64(len(jobs)) / span.Seconds()
	}
	ms := func(d time.Duration, jobs int) float64 {
		return float64(d) / float64(time.Millisecond) / float64(max(jobs, 1))
	}
	qr.SchedulerCPUMsPerJob = ms(cpu2["scheduler"]-cpu0["scheduler"], n)
	qr.SchedulerDispatchCPUMsPerJob = ms(cpu2["scheduler"]-cpu1["scheduler"], startedAfter)
	qr.CPUMsPerJob = map[string]float64{}
	var baton time.Duration
	for k, v := range cpu2 {
		d := v - cpu0[k]
		qr.CPUMsPerJob[k] = ms(d, n)
		if k != "client" {
			baton += d
		}
	}
	qr.CPUMsPerJob["baton"] = ms(baton, n)
	return qr, nil
}

// waitDrained waits until the scheduler lists no job that has not ended.
// A drain in which the workers finish no job for queueStall is stuck: the
// error names some of the jobs left.
func waitDrained(ctx context.Context, lc *localCluster, client batonv1connect.SchedulerServiceClient) error {
	finished, progress := -1.0, time.Now()
	for {
		left, err := client.ListJobs(ctx, connect.NewRequest(&batonv1.ListJobsRequest{States: activeStates, PageSize: 1}))
		if err != nil {
			return fmt.Errorf("list the jobs not ended: %w", err)
		}
		if len(left.Msg.GetJobs()) == 0 {
			return nil
		}
		var now float64
		for _, w := range lc.workers {
			if err := w.running(); err != nil {
				return err
			}
			m, err := w.scrape(ctx)
			if err != nil {
				return fmt.Errorf("%s metrics: %w", w.name, err)
			}
			now += m[metricFinished]
		}
		if now != finished {
			finished, progress = now, time.Now()
		} else if time.Since(progress) > queueStall {
			return stuckError(ctx, client)
		}
		if !sleepCtx(ctx, queuePoll) {
			return ctx.Err()
		}
	}
}

// stuckError describes the jobs left in a drain that stopped moving.
func stuckError(ctx context.Context, client batonv1connect.SchedulerServiceClient) error {
	res, err := client.ListJobs(ctx, connect.NewRequest(&batonv1.ListJobsRequest{States: activeStates, PageSize: 5}))
	if err != nil {
		return fmt.Errorf("no job ended for %s, and the jobs left cannot be listed: %w", queueStall, err)
	}
	var b strings.Builder
	for _, j := range res.Msg.GetJobs() {
		fmt.Fprintf(&b, "\n  %s %s on %q: %s", j.GetJobId(), j.GetState(), j.GetWorkerId(), j.GetReason())
	}
	return fmt.Errorf("no job ended for %s while jobs were left, among them:%s", queueStall, b.String())
}

// listByID pages through the scheduler's jobs, newest first, until it has
// the status of every job in ids.
func listByID(ctx context.Context, client batonv1connect.SchedulerServiceClient, ids map[string]bool) ([]*batonv1.JobStatus, error) {
	out := make([]*batonv1.JobStatus, 0, len(ids))
	token := ""
	for {
		res, err := client.ListJobs(ctx, connect.NewRequest(&batonv1.ListJobsRequest{PageSize: 1000, PageToken: token}))
		if err != nil {
			return nil, fmt.Errorf("list the jobs: %w", err)
		}
		for _, j := range res.Msg.GetJobs() {
			if ids[j.GetJobId()] {
				out = append(out, j)
			}
		}
		token = res.Msg.GetNextPageToken()
		if len(out) == len(ids) {
			return out, nil
		}
		if token == "" {
			return nil, fmt.Errorf("the scheduler lists %d of the %d jobs started", len(out), len(ids))
		}
	}
}

// jobTimes are when a job was accepted, started and ended (zero when it
// has not).
type jobTimes struct{ created, started, ended time.Time }

// dispatchWait is one start that waited for a slot, and how long after
// both the slot and the job were there it came.
type dispatchWait struct {
	start time.Time
	wait  time.Duration
}

// dispatchLatencies pairs each start on a worker of capacity slots with
// the end that freed its slot: in time order, the k-th start (k >
// capacity) needed the (k−capacity)-th end, whichever job's it was. The
// wait is counted from that end, or from the job's acceptance if it came
// later. A start before its end means the worker ran more than capacity
// jobs; those are counted in over, not in the waits.
func dispatchLatencies(jobs []jobTimes, capacity int) (waits []dispatchWait, over int) {
	starts := slices.Clone(jobs)
	slices.SortFunc(starts, func(a, b jobTimes) int { return a.started.Compare(b.started) })
	var ends []time.Time
	for _, j := range jobs {
		if !j.ended.IsZero() {
			ends = append(ends, j.ended)
		}
	}
	slices.SortFunc(ends, time.Time.Compare)
	for k := capacity; k < len(starts); k++ {
		s := starts[k]
		if k-capacity >= len(ends) || ends[k-capacity].After(s.started) {
			over++
			continue
		}
		waits = append(waits, dispatchWait{start: s.started, wait: s.started.Sub(later(ends[k-capacity], s.created))})
	}
	return waits, over
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// loadAvg is the 1, 5 and 15 minute load averages of proc_loadavg(5).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// printQueue writes a queue run's figures.
func printQueue(w io.Writer, r *benchResult) {
	q := r.Queue
	cmdline := strings.Join(append([]string{r.Command}, r.Args...), " ")
	fmt.Fprintf(w, "%d jobs of %q queued from %d clients behind %d workers of capacity %d, scheduler %s (local, child processes; jobs run as %s)\n\n",
		q.Jobs, cmdline, r.Clients, q.Workers, q.Capacity, r.Scheduler, r.JobsRunAs)
	fmt.Fprintf(w, "submit:   %.0f StartJob/s (p50 %.2f ms, p99 %.2f ms); %d answered QUEUED\n",
		q.SubmitPerSec, q.SubmitP50Ms, q.SubmitP99Ms, q.QueuedAtStart)
	fmt.Fprintf(w, "drain:    %.1f jobs/s (first start to last end, %.1f s); %d of %d succeeded", q.DrainPerSec, q.DrainSec, q.Succeeded, q.Jobs)
	for _, k := range slices.Sorted(maps.Keys(q.Ended)) {
		fmt.Fprintf(w, ", %s %d", k, q.Ended[k])
	}
	fmt.Fprintln(w)
	row := func(name string, s latencyStats) {
		fmt.Fprintf(w, "%s p50 %.2f ms, p99 %.2f ms, max %.2f ms (%d starts)\n", name, s.P50Ms, s.P99Ms, s.MaxMs, s.Samples)
	}
	row("dispatch, slot freed → next start:         ", q.Dispatch)
	row("dispatch, starts after the last StartJob:  ", q.DispatchQuiet)
	fmt.Fprintf(w, "starts over capacity: %d\n", q.OverCapacity)
	fmt.Fprintf(w, "scheduler CPU: %.3f ms a job (first StartJob to last end), %.3f ms a job started after the last StartJob\n",
		q.SchedulerCPUMsPerJob, q.SchedulerDispatchCPUMsPerJob)
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(q.CPUMsPerJob)) {
		parts = append(parts, fmt.Sprintf("%s %.3f", k, q.CPUMsPerJob[k]))
	}
	fmt.Fprintf(w, "CPU ms a job: %s\n", strings.Join(parts, ", "))
	fmt.Fprintf(w, "load average: %s before, %s after\n", q.LoadBefore, q.LoadAfter)
	errs := "none"
	if len(r.Errors) > 0 {
		var p []string
		for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
			p = append(p, fmt.Sprintf("%s %d", k, r.Errors[k]))
		}
		errs = strings.Join(p, ", ")
	}
	fmt.Fprintf(w, "StartJob errors: %s\n", errs)
}
