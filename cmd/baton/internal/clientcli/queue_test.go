package clientcli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

// TestQueueFlags: run and start queue without limit by default; the
// queue flags turn into queue_timeout and priority, and the combinations
// that make no sense are usage errors.
func TestQueueFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		wait     time.Duration
		priority *int32
		// usage is set when the command line must be refused.
		usage string
	}{
		{name: "default: wait without limit, priority left to the scheduler", args: nil, wait: -time.Second},
		{name: "a queue timeout", args: []string{"--queue-timeout", "10m"}, wait: 10 * time.Minute},
		{name: "queue timeout 0: do not wait", args: []string{"--queue-timeout", "0"}, wait: 0},
		{name: "--no-wait is queue timeout 0", args: []string{"--no-wait"}, wait: 0},
		{name: "a priority", args: []string{"--priority", "80"}, wait: -time.Second, priority: proto.Int32(80)},
		{name: "priority 0 is sent", args: []string{"--priority", "0"}, wait: -time.Second, priority: proto.Int32(0)},
		{name: "priority 100 with --no-wait", args: []string{"--no-wait", "--priority", "100"}, wait: 0, priority: proto.Int32(100)},
		{name: "the longest queue timeout", args: []string{"--queue-timeout", "720h"}, wait: 720 * time.Hour},
		{name: "--no-wait with a queue timeout", args: []string{"--no-wait", "--queue-timeout", "5m"}, usage: "--no-wait and --queue-timeout"},
		{name: "--no-wait with queue timeout 0", args: []string{"--queue-timeout", "0", "--no-wait"}, usage: "--no-wait and --queue-timeout"},
		{name: "negative queue timeout", args: []string{"--queue-timeout", "-1s"}, usage: "--queue-timeout must not be negative"},
		{name: "queue timeout over 30 days", args: []string{"--queue-timeout", "721h"}, usage: "--queue-timeout must be at most"},
		{name: "priority over 100", args: []string{"--priority", "101"}, usage: "--priority 101"},
		{name: "negative priority", args: []string{"--priority", "-1"}, usage: "--priority -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ro, args := parseRunFlags(t, append(tt.args, "--", "bash", "count.sh"))
			req, err := ro.startRequest(args)
			if err != nil {
				t.Fatal(err)
			}
			err = ro.setQueueing(req)
			if tt.usage != "" {
				var ue *cliout.UsageError
				if !errors.As(err, &ue) || !strings.Contains(ue.Error(), tt.usage) {
					t.Fatalf("error = %v, want a usage error naming %q", err, tt.usage)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := &batonv1.StartJobRequest{
				Command: "bash", Path: "count.sh",
				QueueTimeout: durationpb.New(tt.wait), Priority: tt.priority,
			}
			if !proto.Equal(req, want) {
				t.Errorf("request = %v, want %v", req, want)
			}
		})
	}
}

// TestQueueFlagsRefusedBeforeAnyCall: run and start both take the queue
// flags, and refuse a bad combination with a usage error (exit 2) before
// reaching for a scheduler.
func TestQueueFlagsRefusedBeforeAnyCall(t *testing.T) {
	t.Parallel()
	for _, command := range []string{"run", "start"} {
		for _, flags := range [][]string{
			{"--priority", "101"},
			{"--no-wait", "--queue-timeout", "1m"},
			{"--queue-timeout", "-5s"},
		} {
			t.Run(command+" "+strings.Join(flags, " "), func(t *testing.T) {
				t.Parallel()
				args := append(append([]string{command, "--scheduler", e2e.FreeAddr(t)}, flags...), "--", "true")
				root := newRootCommand()
				var stdout, stderr e2e.LockedBuffer
				root.SetOut(&stdout)
				root.SetErr(&stderr)
				root.SetArgs(args)
				var ue *cliout.UsageError
				if err := root.ExecuteContext(t.Context()); !errors.As(err, &ue) {
					t.Errorf("baton %s: error %v, want a usage error", strings.Join(args, " "), err)
				}
				if stdout.String() != "" {
					t.Errorf("stdout %q", stdout.String())
				}
			})
		}
	}
}

func TestParseQueuedState(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"queued", "QUEUED", "JOB_STATE_QUEUED"} {
		if got, err := parseJobState(s); err != nil || got != batonv1.JobState_JOB_STATE_QUEUED {
			t.Errorf("%q: %v, %v", s, got, err)
		}
	}
}

// TestQueuedTables: a queued job's row shows its place in the queue, and
// its status what it waits for and how long it may.
func TestQueuedTables(t *testing.T) {
	t.Parallel()
	style := tableStyle{now: goldenNow, loc: time.UTC}
	queued := &batonv1.JobStatus{
		JobId: "01a21d31-0000-7000-8000-000000000001", State: batonv1.JobState_JOB_STATE_QUEUED,
		QueuePosition: 3, Reason: "all 2 matching workers are full", Owner: "alice", CreatedAt: ago(70 * time.Second),
		Spec: &batonv1.JobSpec{
			Command: "bash", Path: "count.sh", Selector: map[string]string{"gpu": "yes"},
			Priority: 80, QueueTimeout: durationpb.New(-time.Second),
		},
	}
	timedOut := &batonv1.JobStatus{
		JobId: "01a21d31-0000-7000-8000-000000000002", State: batonv1.JobState_JOB_STATE_TIMED_OUT,
		Reason: "queued 10m0s without a free slot; it never ran", Owner: "bob", CreatedAt: ago(11 * time.Minute),
		EndedAt: ago(time.Minute),
		Spec:    &batonv1.JobSpec{Command: "true", Priority: 50, QueueTimeout: durationpb.New(10 * time.Minute)},
	}
	tests := []struct {
		name   string
		render func(*strings.Builder) error
	}{
		{"jobs_queued", func(b *strings.Builder) error {
			return writeJobsTable(b, []*batonv1.JobStatus{queued, timedOut, goldenJobs()[0]}, style)
		}},
		{"status_queued", func(b *strings.Builder) error { return writeJobStatus(b, queued, style) }},
		{"status_queue_timed_out", func(b *strings.Builder) error { return writeJobStatus(b, timedOut, style) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got strings.Builder
			if err := tt.render(&got); err != nil {
				t.Fatal(err)
			}
			e2e.CheckGolden(t, tt.name, []byte(got.String()))
		})
	}
}

// queueScheduler is a scheduler whose every job is queued first: RunJob
// sends queued, then what then holds, or, when then is empty, waits for a
// StopJob and ends the job STOPPED without running it.
type queueScheduler struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	then []*batonv1.RunJobResponse
	// holdAfterThen makes RunJob wait for stopped after sending then, as
	// for a job that runs on.
	holdAfterThen bool
	// stops receives the id of each job StopJob is asked to stop; closing
	// stopped ends a RunJob that waits for it.
	stops   chan string
	stopped chan struct{}

	mu   sync.Mutex
	reqs []*batonv1.StartJobRequest
}

const queuedJobID = "01a21d31-0000-7000-8000-0000000000aa"

func queuedStatus(position int32) *batonv1.JobStatus {
	return &batonv1.JobStatus{
		JobId: queuedJobID, State: batonv1.JobState_JOB_STATE_QUEUED,
		QueuePosition: position, Reason: "all 2 matching workers are full",
	}
}

func (s *queueScheduler) record(req *batonv1.StartJobRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, req)
}

func (s *queueScheduler) received() []*batonv1.StartJobRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs
}

func (s *queueScheduler) StartJob(_ context.Context, req *connect.Request[batonv1.StartJobRequest]) (*connect.Response[batonv1.StartJobResponse], error) {
	s.record(req.Msg)
	return connect.NewResponse(&batonv1.StartJobResponse{JobId: queuedJobID, Jobs: []*batonv1.JobStatus{queuedStatus(2)}}), nil
}

func (s *queueScheduler) RunJob(ctx context.Context, req *connect.Request[batonv1.RunJobRequest], stream *connect.ServerStream[batonv1.RunJobResponse]) error {
	s.record(req.Msg.GetJob())
	if err := stream.Send(&batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Queued{Queued: queuedStatus(3)}}); err != nil {
		return err
	}
	for _, m := range s.then {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	if len(s.then) > 0 && !s.holdAfterThen {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stopped:
	}
	return stream.Send(&batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Status{Status: &batonv1.JobStatus{
		JobId: queuedJobID, State: batonv1.JobState_JOB_STATE_STOPPED, Reason: "stopped by admin before it ran",
	}}})
}

func (s *queueScheduler) StopJob(_ context.Context, req *connect.Request[batonv1.StopJobRequest]) (*connect.Response[batonv1.StopJobResponse], error) {
	s.stops <- req.Msg.GetJobId()
	return connect.NewResponse(&batonv1.StopJobResponse{Status: &batonv1.JobStatus{JobId: req.Msg.GetJobId(), State: batonv1.JobState_JOB_STATE_STOPPED}}), nil
}

// serveQueue serves s over h2c, as a scheduler's plain listener does, and
// returns its URL.
func serveQueue(t *testing.T, s *queueScheduler) string {
	t.Helper()
	if s.stops == nil {
		s.stops = make(chan string, 1)
	}
	s.stopped = make(chan struct{})
	_, handler := batonv1connect.NewSchedulerServiceHandler(s)
	srv := httptest.NewUnstartedServer(handler)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// runCLI runs the CLI in this process against the scheduler at url.
func runCLI(t *testing.T, url string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	file := e2e.WriteConfig(t, fmt.Sprintf("[client]\nscheduler = %q\n", url))
	root := newRootCommand()
	var out, errOut e2e.LockedBuffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{args[0], "--config", file}, args[1:]...))
	err = root.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

// TestRunQueued: a run whose job is queued says where it waits, then
// streams the output once the job runs; a job that never runs ends the
// run with its reason and a failing status. start prints a queued job's id.
func TestRunQueued(t *testing.T) {
	t.Parallel()
	chunk := &batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Chunk{Chunk: &batonv1.OutputChunk{Data: []byte("hi\n")}}}
	started := &batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Started{Started: &batonv1.JobStatus{
		JobId: queuedJobID, WorkerId: "w1", State: batonv1.JobState_JOB_STATE_RUNNING,
	}}}
	end := func(st *batonv1.JobStatus) *batonv1.RunJobResponse {
		st.JobId = queuedJobID
		return &batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Status{Status: st}}
	}
	queuedLine := "baton: queued at position 3: all 2 matching workers are full (Ctrl-C cancels)\n"
	tests := []struct {
		name   string
		args   []string
		then   []*batonv1.RunJobResponse
		stdout string
		// stderr is all of it; code is the exit status (0 for no error).
		stderr string
		code   int
		// wait and priority are what the request must carry.
		wait     time.Duration
		priority *int32
	}{
		{
			name:   "queued, then runs",
			args:   []string{"run", "--", "bash", "-c", "echo hi"},
			then:   []*batonv1.RunJobResponse{started, chunk, end(&batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_SUCCEEDED, ExitCode: proto.Int32(0)})},
			stdout: "hi\n", stderr: queuedLine, code: 0, wait: -time.Second,
		},
		{
			name: "queue timeout: never ran",
			args: []string{"run", "--queue-timeout", "10m", "--priority", "80", "--", "true"},
			then: []*batonv1.RunJobResponse{end(&batonv1.JobStatus{
				State: batonv1.JobState_JOB_STATE_TIMED_OUT, Reason: "queued 10m0s without a free slot; it never ran",
			})},
			stderr: queuedLine + "baton: job " + queuedJobID + " timed_out: queued 10m0s without a free slot; it never ran\n",
			code:   1, wait: 10 * time.Minute, priority: proto.Int32(80),
		},
		{
			name: "stopped by someone else while queued",
			args: []string{"run", "--", "true"},
			then: []*batonv1.RunJobResponse{end(&batonv1.JobStatus{
				State: batonv1.JobState_JOB_STATE_STOPPED, Reason: "stopped by bob before it ran",
			})},
			stderr: queuedLine + "baton: job " + queuedJobID + " stopped: stopped by bob before it ran\n",
			code:   1, wait: -time.Second,
		},
		{
			name:   "start prints a queued job's id",
			args:   []string{"start", "--priority", "10", "--", "true"},
			stdout: queuedJobID + "\n",
			stderr: "baton: job " + queuedJobID + " queued at position 2: all 2 matching workers are full\n",
			wait:   -time.Second, priority: proto.Int32(10),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := &queueScheduler{then: tt.then}
			stdout, stderr, err := runCLI(t, serveQueue(t, s), tt.args...)
			code := 0
			if ee := new(cliout.ExitError); errors.As(err, &ee) {
				code = ee.Code
			} else if err != nil {
				t.Fatalf("baton %s: %v", strings.Join(tt.args, " "), err)
			}
			if stdout != tt.stdout || stderr != tt.stderr || code != tt.code {
				t.Errorf("stdout %q, stderr %q, exit %d; want %q, %q, %d", stdout, stderr, code, tt.stdout, tt.stderr, tt.code)
			}
			reqs := s.received()
			if len(reqs) != 1 {
				t.Fatalf("the scheduler got %d starts, want 1", len(reqs))
			}
			if got := reqs[0]; got.GetQueueTimeout().AsDuration() != tt.wait || priorityText(got.Priority) != priorityText(tt.priority) {
				t.Errorf("queue_timeout %v, priority %s; want %v, %s", got.GetQueueTimeout().AsDuration(), priorityText(got.Priority), tt.wait, priorityText(tt.priority))
			}
		})
	}
}

func priorityText(p *int32) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

// TestCtrlCCancelsAQueuedRun: the queued message names the job, so Ctrl-C
// before it runs stops it by id; the run ends with the interrupt's status,
// as a shell reports it.
func TestCtrlCCancelsAQueuedRun(t *testing.T) {
	t.Parallel()
	s := &queueScheduler{}
	url := serveQueue(t, s)
	cl, err := newClient(config.ClientSection{Scheduler: url})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var stdout, stderr e2e.LockedBuffer
	a := &attachment{client: cl, stdout: &stdout, stderr: &stderr, spin: startSpinner(&stderr, "placing the job…")}
	sigs := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		done <- a.run(t.Context(), sigs, &batonv1.StartJobRequest{Command: "true", QueueTimeout: durationpb.New(-time.Second)})
	}()
	// Before the job is named or after: either way the job is stopped by
	// its id once it has one.
	sigs <- os.Interrupt
	select {
	case id := <-s.stops:
		if id != queuedJobID {
			t.Errorf("StopJob for %q, want %q", id, queuedJobID)
		}
		close(s.stopped)
	case <-time.After(10 * time.Second):
		t.Fatalf("no StopJob within 10s; stderr %q", stderr.String())
	}
	select {
	case err := <-done:
		if ee := new(cliout.ExitError); !errors.As(err, &ee) || ee.Code != 130 {
			t.Errorf("follow: %v, want exit 130", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the run did not end after its job was stopped; stderr %q", stderr.String())
	}
	want := "baton: queued at position 3: all 2 matching workers are full (Ctrl-C cancels)\n" +
		"baton: stopping job " + queuedJobID + " (Ctrl-C again to detach)\n"
	if stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
}

// blockedWriter is an output nobody reads: a write waits until release
// is closed.
type blockedWriter struct {
	entered chan struct{}
	once    sync.Once
	release chan struct{}
}

func (w *blockedWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	return len(p), nil
}

// TestCtrlCStopsWhileOutputIsBlocked: the job's output fills a pipe nobody
// reads, so writing it blocks; Ctrl-C still sends the stop at once.
func TestCtrlCStopsWhileOutputIsBlocked(t *testing.T) {
	t.Parallel()
	started := &batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Started{Started: &batonv1.JobStatus{
		JobId: queuedJobID, WorkerId: "w1", State: batonv1.JobState_JOB_STATE_RUNNING,
	}}}
	chunk := &batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Chunk{Chunk: &batonv1.OutputChunk{Data: []byte("y\n")}}}
	s := &queueScheduler{then: []*batonv1.RunJobResponse{started, chunk}, holdAfterThen: true}
	url := serveQueue(t, s)
	cl, err := newClient(config.ClientSection{Scheduler: url})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	stdout := &blockedWriter{entered: make(chan struct{}), release: make(chan struct{})}
	var stderr e2e.LockedBuffer
	a := &attachment{client: cl, stdout: stdout, stderr: &stderr, spin: startSpinner(&stderr, "placing the job…")}
	sigs := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		done <- a.run(t.Context(), sigs, &batonv1.StartJobRequest{Command: "true", QueueTimeout: durationpb.New(-time.Second)})
	}()
	select {
	case <-stdout.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the job's output was never written")
	}
	sigs <- os.Interrupt
	select {
	case <-s.stops:
	case <-time.After(10 * time.Second):
		close(stdout.release)
		t.Fatalf("no StopJob within 10s while the output was blocked; stderr %q", stderr.String())
	}
	close(stdout.release)
	close(s.stopped)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the run did not end after its job was stopped")
	}
}
