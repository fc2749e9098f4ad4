package clientcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/baton-run/baton/client"
	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

// clientCall is what every client command needs once its flags are parsed.
type clientCall struct {
	ctx    context.Context
	client *client.Client
	format outputFormat
	out    io.Writer
	errOut io.Writer
}

// prepare checks the output flag, loads the configuration and builds the
// client.
func prepare(cmd *cobra.Command, co *clientOptions) (*clientCall, error) {
	format, err := co.format()
	if err != nil {
		return nil, err
	}
	cfg, err := co.config()
	if err != nil {
		return nil, err
	}
	cl, err := newClient(cfg.Client)
	if err != nil {
		return nil, err
	}
	return &clientCall{ctx: cmd.Context(), client: cl, format: format, out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr()}, nil
}

// clientCommand builds a client command: its flags, and a RunE that
// prepares the client before calling run.
func clientCommand(cmd *cobra.Command, run func(c *clientCall, args []string) error) *cobra.Command {
	co := bindClientFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := prepare(cmd, co)
		if err != nil {
			return err
		}
		defer c.client.Close()
		return explain(run(c, args))
	}
	return cmd
}

// checkID refuses an argument that cannot be a job or group id before any
// call is made.
func checkID(what, id string) error {
	if _, err := uuid.Parse(id); err != nil {
		return cliout.UsageErrorf("%s %q is not an id: job and group ids are UUIDs, as printed by baton start and baton jobs", what, id)
	}
	return nil
}

func newStopCommand() *cobra.Command {
	return clientCommand(&cobra.Command{
		Use:   "stop JOB",
		Short: "Stop a job (or every job of a group) and print its final status",
		Long: `stop sends the job SIGTERM and, after the worker's grace period, SIGKILL,
waits for it to end and prints its final status. Stopping a finished job
changes nothing and prints its status. JOB may also be a group id (from
start --all): every job of the group is stopped.`,
		Args: cliout.UsageArgs(cobra.ExactArgs(1)),
	}, func(c *clientCall, args []string) error {
		id := args[0]
		if err := checkID("JOB", id); err != nil {
			return err
		}
		sched := c.client.Scheduler()
		res, err := sched.StopJob(c.ctx, connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
		if errors.Is(err, client.ErrNotFound) {
			if g, gerr := sched.StopJob(c.ctx, connect.NewRequest(&batonv1.StopJobRequest{GroupId: id})); gerr == nil {
				res, err = g, nil
			}
		}
		if err != nil {
			return err
		}
		if c.format == formatJSON {
			return writeJSON(c.out, res.Msg)
		}
		if len(res.Msg.GetJobs()) > 1 {
			return writeJobsTable(c.out, res.Msg.GetJobs(), liveStyle())
		}
		return writeJobStatus(c.out, res.Msg.GetStatus(), liveStyle())
	})
}

func newStatusCommand() *cobra.Command {
	return clientCommand(&cobra.Command{
		Use:   "status JOB",
		Short: "Show a job's status (or a group's jobs)",
		Args:  cliout.UsageArgs(cobra.ExactArgs(1)),
	}, func(c *clientCall, args []string) error {
		id := args[0]
		if err := checkID("JOB", id); err != nil {
			return err
		}
		sched := c.client.Scheduler()
		res, err := sched.QueryJob(c.ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: id}))
		group := false
		if errors.Is(err, client.ErrNotFound) {
			if g, gerr := sched.QueryJob(c.ctx, connect.NewRequest(&batonv1.QueryJobRequest{GroupId: id})); gerr == nil {
				res, err, group = g, nil, true
			}
		}
		if err != nil {
			return err
		}
		if c.format == formatJSON {
			return writeJSON(c.out, res.Msg)
		}
		if group {
			return writeJobsTable(c.out, res.Msg.GetJobs(), liveStyle())
		}
		return writeJobStatus(c.out, res.Msg.GetStatus(), liveStyle())
	})
}

func newLogsCommand() *cobra.Command {
	var follow, onlyStdout, onlyStderr bool
	var offset int64
	var attempt int32
	cmd := &cobra.Command{
		Use:   "logs JOB",
		Short: "Print a job's output: stdout to stdout, stderr to stderr",
		Long: `logs prints what the job has written so far, stdout to stdout and stderr to
stderr, in the order it was produced; -f follows until the job ends.
--offset skips bytes of the view asked for (both streams interleaved, or
the one stream of --stdout or --stderr). With -o json each message of the
stream is printed as one JSON object a line (JSON Lines), the job's final
status last when following. A retried job's output is that of its
attempts, one after the other; --attempt N prints attempt N's alone.`,
		Args: cliout.UsageArgs(cobra.ExactArgs(1)),
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output until the job ends")
	cmd.Flags().Int64Var(&offset, "offset", 0, "start this many bytes into the output")
	cmd.Flags().BoolVar(&onlyStdout, "stdout", false, "only the job's standard output")
	cmd.Flags().BoolVar(&onlyStderr, "stderr", false, "only the job's standard error")
	cmd.Flags().Int32Var(&attempt, "attempt", 0, "only attempt N of a retried job (from 1)")
	return clientCommand(cmd, func(c *clientCall, args []string) error {
		id := args[0]
		if err := checkID("JOB", id); err != nil {
			return err
		}
		if onlyStdout && onlyStderr {
			return cliout.UsageErrorf("--stdout and --stderr: give one, or neither for both")
		}
		if offset < 0 {
			return cliout.UsageErrorf("--offset must not be negative")
		}
		if attempt < 0 {
			return cliout.UsageErrorf("--attempt counts from 1")
		}
		req := &batonv1.StreamJobOutputRequest{JobId: id, Offset: offset, Follow: follow, Attempt: attempt}
		switch {
		case onlyStdout:
			req.Stream = batonv1.OutputStream_OUTPUT_STREAM_STDOUT
		case onlyStderr:
			req.Stream = batonv1.OutputStream_OUTPUT_STREAM_STDERR
		}
		err := followLogs(c, req)
		// Ctrl-C while following is the normal way out.
		if follow && errors.Is(c.ctx.Err(), context.Canceled) {
			return nil
		}
		return err
	})
}

// followLogs prints the output req asks for. When following, a stream cut
// as `baton run`'s can be (the scheduler or the job's worker restarting)
// is resumed from the last offset printed, so no byte is missing or
// repeated, and a job that waits in the queue is waited for.
func followLogs(c *clientCall, req *batonv1.StreamJobOutputRequest) error {
	if !req.GetFollow() {
		return printLogs(c, req)
	}
	noted := false
	st, err := c.client.Follow(c.ctx, req, client.Handlers{
		Queued: func(st *batonv1.JobStatus) {
			if !noted {
				noted = true
				fmt.Fprintf(c.errOut, "baton: job %s %s\n", st.GetJobId(), queuedNote(st))
			}
		},
		Output: func(chunk *batonv1.OutputChunk) error {
			return printLog(c, &batonv1.StreamJobOutputResponse{Event: &batonv1.StreamJobOutputResponse_Chunk{Chunk: chunk}})
		},
	})
	if err != nil {
		return err
	}
	return printLog(c, &batonv1.StreamJobOutputResponse{Event: &batonv1.StreamJobOutputResponse_Status{Status: st}})
}

// printLogs prints one StreamJobOutput call's messages: the output so far.
func printLogs(c *clientCall, req *batonv1.StreamJobOutputRequest) error {
	stream, err := c.client.Scheduler().StreamJobOutput(c.ctx, connect.NewRequest(req))
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Receive() {
		if err := printLog(c, stream.Msg()); err != nil {
			return err
		}
	}
	return stream.Err()
}

// printLog prints one message of a job's output: as a JSON line with -o
// json, else a chunk's bytes to stdout or stderr, as the job wrote them.
func printLog(c *clientCall, msg *batonv1.StreamJobOutputResponse) error {
	if c.format == formatJSON {
		return writeJSONLine(c.out, msg)
	}
	chunk := msg.GetChunk()
	if chunk == nil {
		return nil
	}
	w := c.out
	if chunk.GetStream() == batonv1.OutputStream_OUTPUT_STREAM_STDERR {
		w = c.errOut
	}
	_, err := w.Write(chunk.GetData())
	return err
}

func newJobsCommand() *cobra.Command {
	var states []string
	var worker, group string
	var limit int
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "List jobs, newest first",
		Long: `jobs lists jobs, newest first, fetching as many pages as --limit needs.
With -o json it prints one JSON array of job statuses.`,
		Args: cliout.UsageArgs(cobra.NoArgs),
	}
	cmd.Flags().StringSliceVar(&states, "state", nil, "only jobs in these states: queued, pending, running, succeeded, failed, stopped, timed_out, lost (repeat or comma-separate)")
	cmd.Flags().StringVar(&worker, "worker", "", "only this worker's jobs (name or id)")
	cmd.Flags().StringVar(&group, "group", "", "only the jobs of this group (a fan-out or an array)")
	cmd.Flags().IntVar(&limit, "limit", 100, "list at most this many jobs (0: all)")
	return clientCommand(cmd, func(c *clientCall, _ []string) error {
		if limit < 0 {
			return cliout.UsageErrorf("--limit must not be negative")
		}
		if group != "" {
			if err := checkID("--group", group); err != nil {
				return err
			}
		}
		req := &batonv1.ListJobsRequest{WorkerId: worker, GroupId: group}
		for _, s := range states {
			st, err := parseJobState(s)
			if err != nil {
				return err
			}
			req.States = append(req.States, st)
		}
		jobs, more, err := ListJobs(c.ctx, c.client.Scheduler(), req, limit)
		if err != nil {
			return err
		}
		if c.format == formatJSON {
			return writeJSONList(c.out, jobs)
		}
		if err := writeJobsTable(c.out, jobs, liveStyle()); err != nil {
			return err
		}
		if more {
			fmt.Fprintf(c.errOut, "(the first %d jobs; --limit 0 lists all)\n", limit)
		}
		return nil
	})
}

// maxPageSize is the largest page ListJobs serves.
const maxPageSize = 1000

// ListJobs pages through ListJobs until limit jobs (0: all) or the last
// page; more says whether jobs were left out.
func ListJobs(ctx context.Context, sched batonv1connect.SchedulerServiceClient, req *batonv1.ListJobsRequest, limit int) ([]*batonv1.JobStatus, bool, error) {
	var jobs []*batonv1.JobStatus
	for {
		size := maxPageSize
		if limit > 0 {
			size = min(size, limit-len(jobs))
		}
		req.PageSize = int32(size)
		res, err := sched.ListJobs(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, false, err
		}
		jobs = append(jobs, res.Msg.GetJobs()...)
		next := res.Msg.GetNextPageToken()
		if next == "" {
			return jobs, false, nil
		}
		if next == req.PageToken {
			return nil, false, errors.New("the scheduler gave the same page token twice")
		}
		if limit > 0 && len(jobs) >= limit {
			return jobs[:limit], true, nil
		}
		req.PageToken = next
	}
}

// parseJobState accepts "running", "RUNNING" and "JOB_STATE_RUNNING".
func parseJobState(s string) (batonv1.JobState, error) {
	v, err := parseState(s, "JOB_STATE_", batonv1.JobState_value, "queued, pending, running, succeeded, failed, stopped, timed_out or lost")
	return batonv1.JobState(v), err
}

// parseWorkerState accepts "ready", "READY" and "WORKER_STATE_READY".
func parseWorkerState(s string) (batonv1.WorkerState, error) {
	v, err := parseState(s, "WORKER_STATE_", batonv1.WorkerState_value, "ready, draining, down, left or restarting")
	return batonv1.WorkerState(v), err
}

// parseState finds a --state value among an enum's values (by name, with
// or without prefix, in any case); the unspecified zero is not one.
func parseState(s, prefix string, values map[string]int32, choices string) (int32, error) {
	name := strings.ToUpper(strings.TrimSpace(s))
	if !strings.HasPrefix(name, prefix) {
		name = prefix + name
	}
	v, ok := values[name]
	if !ok || v == 0 {
		return 0, cliout.UsageErrorf("--state %q: use %s", s, choices)
	}
	return v, nil
}

func newWorkersCommand() *cobra.Command {
	var states, selectors []string
	cmd := &cobra.Command{
		Use:   "workers",
		Short: "List the workers: state, address, running jobs, labels",
		Long: `workers lists the roster by name, a page of 1,000 workers at a time.
With -o json it prints one JSON array of workers.`,
		Args: cliout.UsageArgs(cobra.NoArgs),
	}
	cmd.Flags().StringSliceVar(&states, "state", nil, "only workers in these states: ready, draining, down, left, restarting (repeat or comma-separate)")
	cmd.Flags().StringArrayVar(&selectors, "selector", nil, "only workers whose labels include k=v (repeat for more)")
	return clientCommand(cmd, func(c *clientCall, _ []string) error {
		req := &batonv1.ListWorkersRequest{PageSize: maxPageSize}
		for _, s := range states {
			st, err := parseWorkerState(s)
			if err != nil {
				return err
			}
			req.States = append(req.States, st)
		}
		var err error
		if req.Selector, err = pairs("--selector", selectors); err != nil {
			return err
		}
		var workers []*batonv1.Worker
		var leader string
		var epoch int64
		for {
			res, err := c.client.Scheduler().ListWorkers(c.ctx, connect.NewRequest(req))
			if err != nil {
				return err
			}
			workers = append(workers, res.Msg.GetWorkers()...)
			leader, epoch = res.Msg.GetLeader(), res.Msg.GetEpoch()
			next := res.Msg.GetNextPageToken()
			if next == "" {
				break
			}
			if next == req.PageToken {
				return errors.New("the scheduler gave the same page token twice")
			}
			req.PageToken = next
		}
		if c.format == formatJSON {
			return writeJSONList(c.out, workers)
		}
		if err := writeWorkersTable(c.out, workers, liveStyle()); err != nil {
			return err
		}
		// A replicated scheduler names the replica that answered, which
		// leads; a single one names none.
		if leader != "" {
			_, err = fmt.Fprintf(c.out, "\nScheduler leader: %s (epoch %d)\n", leader, epoch)
		}
		return err
	})
}

func newDrainCommand() *cobra.Command {
	return clientCommand(&cobra.Command{
		Use:   "drain WORKER",
		Short: "Stop placing jobs on a worker; its running jobs finish",
		Args:  cliout.UsageArgs(cobra.ExactArgs(1)),
	}, func(c *clientCall, args []string) error {
		res, err := c.client.Scheduler().DrainWorker(c.ctx, connect.NewRequest(&batonv1.DrainWorkerRequest{WorkerId: args[0]}))
		if err != nil {
			return err
		}
		if c.format == formatJSON {
			return writeJSON(c.out, res.Msg)
		}
		return writeWorkersTable(c.out, []*batonv1.Worker{res.Msg.GetWorker()}, liveStyle())
	})
}
