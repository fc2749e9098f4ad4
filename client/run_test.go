package client_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/baton-run/baton/client"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

const fakeJobID = "01a21d31-0000-7000-8000-0000000000bb"

// scripted is a scheduler whose answers each test writes: each call of a
// method runs its function with the call's number, from 0. It records
// what it was asked.
type scripted struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	run    func(n int, s *scripted, send func(*batonv1.RunJobResponse) error) error
	start  func(n int, s *scripted) (*batonv1.StartJobResponse, error)
	output func(n int, s *scripted, req *batonv1.StreamJobOutputRequest, send func(*batonv1.StreamJobOutputResponse) error) error
	query  func(n int) (*batonv1.QueryJobResponse, error)

	mu      sync.Mutex
	fs      *fakeServer
	runs    []*batonv1.StartJobRequest
	starts  []*batonv1.StartJobRequest
	offsets []int64
	queries int
}

func serveScripted(t *testing.T, s *scripted) *fakeServer {
	t.Helper()
	fs := serveFake(t, s)
	s.mu.Lock()
	s.fs = fs
	s.mu.Unlock()
	return fs
}

// cut closes the connections of the call in progress.
func (s *scripted) cut() {
	s.mu.Lock()
	fs := s.fs
	s.mu.Unlock()
	fs.cut()
}

func (s *scripted) RunJob(_ context.Context, req *connect.Request[batonv1.RunJobRequest], stream *connect.ServerStream[batonv1.RunJobResponse]) error {
	s.mu.Lock()
	n := len(s.runs)
	s.runs = append(s.runs, req.Msg.GetJob())
	s.mu.Unlock()
	return s.run(n, s, stream.Send)
}

func (s *scripted) StartJob(_ context.Context, req *connect.Request[batonv1.StartJobRequest]) (*connect.Response[batonv1.StartJobResponse], error) {
	s.mu.Lock()
	n := len(s.starts)
	s.starts = append(s.starts, req.Msg)
	s.mu.Unlock()
	res, err := s.start(n, s)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(res), nil
}

func (s *scripted) StreamJobOutput(_ context.Context, req *connect.Request[batonv1.StreamJobOutputRequest], stream *connect.ServerStream[batonv1.StreamJobOutputResponse]) error {
	s.mu.Lock()
	n := len(s.offsets)
	s.offsets = append(s.offsets, req.Msg.GetOffset())
	s.mu.Unlock()
	if s.output == nil {
		return connect.NewError(connect.CodeUnavailable, errors.New("no output here"))
	}
	return s.output(n, s, req.Msg, stream.Send)
}

func (s *scripted) QueryJob(context.Context, *connect.Request[batonv1.QueryJobRequest]) (*connect.Response[batonv1.QueryJobResponse], error) {
	s.mu.Lock()
	n := s.queries
	s.queries++
	s.mu.Unlock()
	if s.query == nil {
		return connect.NewResponse(&batonv1.QueryJobResponse{Status: running()}), nil
	}
	res, err := s.query(n)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(res), nil
}

func (s *scripted) recorded() (runs, starts []*batonv1.StartJobRequest, offsets []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runs, s.starts, s.offsets
}

func running() *batonv1.JobStatus {
	return &batonv1.JobStatus{JobId: fakeJobID, WorkerId: "w1", State: batonv1.JobState_JOB_STATE_RUNNING, StartedAt: timestamppb.Now()}
}

func queued(position int32) *batonv1.JobStatus {
	return &batonv1.JobStatus{JobId: fakeJobID, State: batonv1.JobState_JOB_STATE_QUEUED, QueuePosition: position, Reason: "all 1 matching workers are full"}
}

func succeeded() *batonv1.JobStatus {
	return &batonv1.JobStatus{JobId: fakeJobID, WorkerId: "w1", State: batonv1.JobState_JOB_STATE_SUCCEEDED, ExitCode: proto.Int32(0), StartedAt: timestamppb.Now()}
}

func started(st *batonv1.JobStatus) *batonv1.RunJobResponse {
	return &batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Started{Started: st}}
}

func queuedMsg(st *batonv1.JobStatus) *batonv1.RunJobResponse {
	return &batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Queued{Queued: st}}
}

func runChunk(offset int64, data string) *batonv1.RunJobResponse {
	return &batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Chunk{Chunk: &batonv1.OutputChunk{Offset: offset, Data: []byte(data)}}}
}

func runEnd(st *batonv1.JobStatus) *batonv1.RunJobResponse {
	return &batonv1.RunJobResponse{Event: &batonv1.RunJobResponse_Status{Status: st}}
}

func outChunk(offset int64, data string) *batonv1.StreamJobOutputResponse {
	return &batonv1.StreamJobOutputResponse{Event: &batonv1.StreamJobOutputResponse_Chunk{Chunk: &batonv1.OutputChunk{Offset: offset, Data: []byte(data)}}}
}

func outEnd(st *batonv1.JobStatus) *batonv1.StreamJobOutputResponse {
	return &batonv1.StreamJobOutputResponse{Event: &batonv1.StreamJobOutputResponse_Status{Status: st}}
}

func sendAll[M any](send func(M) error, msgs ...M) error {
	for _, m := range msgs {
		if err := send(m); err != nil {
			return err
		}
	}
	return nil
}

// recorder collects what a run or follow passes to its handlers.
type recorder struct {
	mu      sync.Mutex
	out     strings.Builder
	queued  []int32
	started int
	// events gets a value for each handler call, so that a fake cuts a
	// stream only once the client has what was sent before the cut.
	events chan struct{}
}

func newRecorder() *recorder { return &recorder{events: make(chan struct{}, 64)} }

func (r *recorder) handlers() client.Handlers {
	return client.Handlers{
		Queued: func(st *batonv1.JobStatus) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.queued = append(r.queued, st.GetQueuePosition())
			r.events <- struct{}{}
		},
		Started: func(*batonv1.JobStatus) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.started++
			r.events <- struct{}{}
		},
		Output: func(c *batonv1.OutputChunk) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.out.Write(c.GetData())
			r.events <- struct{}{}
			return nil
		},
	}
}

// received waits until the client's handlers were called n times: what
// was sent before has arrived.
func (r *recorder) received(n int) error {
	for range n {
		select {
		case <-r.events:
		case <-time.After(10 * time.Second):
			return errors.New("the client did not get what was sent within 10s")
		}
	}
	return nil
}

// TestLostStartIsTriedAgainWithTheSameKey: a start whose answer is lost
// (the connection breaks after the request went out) is tried again with
// the key of the first try, so that the scheduler can answer with the job
// the first try may have started; the caller's request is left as it was.
func TestLostStartIsTriedAgainWithTheSameKey(t *testing.T) {
	t.Parallel()
	t.Run("Run", func(t *testing.T) {
		t.Parallel()
		s := &scripted{run: func(n int, s *scripted, send func(*batonv1.RunJobResponse) error) error {
			if n == 0 {
				s.cut()
				return errors.New("cut")
			}
			return sendAll(send, started(running()), runChunk(0, "hi\n"), runEnd(succeeded()))
		}}
		c := serveScripted(t, s).client(t)
		req := &batonv1.StartJobRequest{Command: "true"}
		r := newRecorder()
		st, err := c.Run(t.Context(), req, r.handlers())
		if err != nil {
			t.Fatal(err)
		}
		runs, _, _ := s.recorded()
		checkKeys(t, runs, 2)
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || r.out.String() != "hi\n" || r.started != 1 {
			t.Errorf("status %v, output %q, started %d times", st.GetState(), r.out.String(), r.started)
		}
		if req.GetIdempotencyKey() != "" {
			t.Errorf("the caller's request got key %q", req.GetIdempotencyKey())
		}
	})
	t.Run("Start", func(t *testing.T) {
		t.Parallel()
		s := &scripted{start: func(n int, s *scripted) (*batonv1.StartJobResponse, error) {
			if n == 0 {
				s.cut()
				return nil, errors.New("cut")
			}
			return &batonv1.StartJobResponse{JobId: fakeJobID, Jobs: []*batonv1.JobStatus{running()}}, nil
		}}
		c := serveScripted(t, s).client(t)
		res, err := c.Start(t.Context(), &batonv1.StartJobRequest{Command: "true"})
		if err != nil {
			t.Fatal(err)
		}
		_, starts, _ := s.recorded()
		checkKeys(t, starts, 2)
		if res.GetJobId() != fakeJobID {
			t.Errorf("job %q", res.GetJobId())
		}
	})
	t.Run("the caller's key", func(t *testing.T) {
		t.Parallel()
		s := &scripted{start: func(n int, s *scripted) (*batonv1.StartJobResponse, error) {
			if n == 0 {
				s.cut()
				return nil, errors.New("cut")
			}
			return &batonv1.StartJobResponse{JobId: fakeJobID}, nil
		}}
		c := serveScripted(t, s).client(t, client.WithoutGeneratedKeys())
		if _, err := c.Start(t.Context(), &batonv1.StartJobRequest{Command: "true", IdempotencyKey: "mine"}); err != nil {
			t.Fatal(err)
		}
		_, starts, _ := s.recorded()
		if len(starts) != 2 || starts[0].GetIdempotencyKey() != "mine" || starts[1].GetIdempotencyKey() != "mine" {
			t.Errorf("starts %v, want two with key \"mine\"", starts)
		}
	})
}

// checkKeys checks that there were n tries, all with the same key.
func checkKeys(t *testing.T, reqs []*batonv1.StartJobRequest, n int) {
	t.Helper()
	if len(reqs) != n {
		t.Fatalf("%d tries, want %d", len(reqs), n)
	}
	for _, r := range reqs {
		if r.GetIdempotencyKey() == "" || r.GetIdempotencyKey() != reqs[0].GetIdempotencyKey() {
			t.Fatalf("keys %q and %q, want one key on every try", reqs[0].GetIdempotencyKey(), r.GetIdempotencyKey())
		}
	}
}

// TestStartNotTriedAgain: a start is tried again only when its outcome is
// unknown and a key makes the try safe. The scheduler's refusals, "try
// again later" included, and a lost start without a key are the caller's
// to see at once.
func TestStartNotTriedAgain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts []client.Option
		// answer is the first try's; nil cuts the connection.
		answer error
		want   error
	}{
		{"full", nil, connect.NewError(connect.CodeResourceExhausted, errors.New("every matching worker is full")), client.ErrResourceExhausted},
		{"no ready worker", nil, connect.NewError(connect.CodeUnavailable, errors.New("no ready worker")), client.ErrUnavailable},
		{"bad request", nil, connect.NewError(connect.CodeInvalidArgument, errors.New("command: empty")), client.ErrInvalidArgument},
		{"lost, without a key", []client.Option{client.WithoutGeneratedKeys()}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := &scripted{run: func(_ int, s *scripted, _ func(*batonv1.RunJobResponse) error) error {
				if tt.answer == nil {
					s.cut()
					return errors.New("cut")
				}
				return tt.answer
			}}
			c := serveScripted(t, s).client(t, tt.opts...)
			_, err := c.Run(t.Context(), &batonv1.StartJobRequest{Command: "true"}, client.Handlers{})
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Errorf("error %v, want %v", err, tt.want)
			}
			if runs, _, _ := s.recorded(); len(runs) != 1 {
				t.Errorf("%d tries, want 1", len(runs))
			}
		})
	}
}

// TestRunResumesFromTheLastByte: a run whose stream is cut after the job
// started is picked up with StreamJobOutput from the last byte received,
// not started again; each byte reaches the caller once.
func TestRunResumesFromTheLastByte(t *testing.T) {
	t.Parallel()
	r := newRecorder()
	s := &scripted{
		run: func(_ int, s *scripted, send func(*batonv1.RunJobResponse) error) error {
			if err := sendAll(send, started(running()), runChunk(0, "hello ")); err != nil {
				return err
			}
			if err := r.received(2); err != nil {
				return err
			}
			s.cut()
			return errors.New("cut")
		},
		output: func(n int, s *scripted, req *batonv1.StreamJobOutputRequest, send func(*batonv1.StreamJobOutputResponse) error) error {
			if n == 0 {
				// Cut again, after one more chunk.
				if err := send(outChunk(req.GetOffset(), "wor")); err != nil {
					return err
				}
				if err := r.received(1); err != nil {
					return err
				}
				s.cut()
				return errors.New("cut")
			}
			return sendAll(send, outChunk(req.GetOffset(), "ld\n"), outEnd(succeeded()))
		},
	}
	c := serveScripted(t, s).client(t)
	st, err := c.Run(t.Context(), &batonv1.StartJobRequest{Command: "true"}, r.handlers())
	if err != nil {
		t.Fatal(err)
	}
	runs, _, offsets := s.recorded()
	if len(runs) != 1 {
		t.Errorf("%d RunJob calls, want 1: a started job is never started again", len(runs))
	}
	if want := []int64{6, 9}; !equal(offsets, want) {
		t.Errorf("StreamJobOutput offsets %v, want %v", offsets, want)
	}
	if r.out.String() != "hello world\n" || r.started != 1 || st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("output %q, started %d times, status %v", r.out.String(), r.started, st.GetState())
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestRunFollowsAQueuedJobAgainWithItsKey: a run cut while its job waits
// in the queue calls RunJob again with the same key, which the scheduler
// answers with the queued job; the job is announced queued (again, at its
// new place), then started once.
func TestRunFollowsAQueuedJobAgainWithItsKey(t *testing.T) {
	t.Parallel()
	r := newRecorder()
	s := &scripted{run: func(n int, s *scripted, send func(*batonv1.RunJobResponse) error) error {
		if n == 0 {
			if err := send(queuedMsg(queued(2))); err != nil {
				return err
			}
			if err := r.received(1); err != nil {
				return err
			}
			s.cut()
			return errors.New("cut")
		}
		return sendAll(send, queuedMsg(queued(1)), started(running()), runChunk(0, "ran\n"), runEnd(succeeded()))
	}}
	c := serveScripted(t, s).client(t)
	st, err := c.Run(t.Context(), &batonv1.StartJobRequest{Command: "true"}, r.handlers())
	if err != nil {
		t.Fatal(err)
	}
	runs, _, _ := s.recorded()
	checkKeys(t, runs, 2)
	if !equal32(r.queued, []int32{2, 1}) || r.started != 1 || r.out.String() != "ran\n" || st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("queued at %v, started %d times, output %q, status %v", r.queued, r.started, r.out.String(), st.GetState())
	}
}

func equal32(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFollowWaitsForAQueuedJob: following a job that waits in the queue
// (StreamJobOutput has nothing for it yet) waits for it to run, saying
// where it waits, then streams it.
func TestFollowWaitsForAQueuedJob(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	ran := false
	s := &scripted{
		query: func(n int) (*batonv1.QueryJobResponse, error) {
			if n == 0 {
				return &batonv1.QueryJobResponse{Status: queued(1)}, nil
			}
			mu.Lock()
			ran = true
			mu.Unlock()
			return &batonv1.QueryJobResponse{Status: running()}, nil
		},
		output: func(_ int, _ *scripted, req *batonv1.StreamJobOutputRequest, send func(*batonv1.StreamJobOutputResponse) error) error {
			mu.Lock()
			defer mu.Unlock()
			if !ran {
				return connect.NewError(connect.CodeNotFound, errors.New("worker \"\" is not known"))
			}
			return sendAll(send, outChunk(req.GetOffset(), "ran\n"), outEnd(succeeded()))
		},
	}
	c := serveScripted(t, s).client(t)
	r := newRecorder()
	st, err := c.Follow(t.Context(), &batonv1.StreamJobOutputRequest{JobId: fakeJobID}, r.handlers())
	if err != nil {
		t.Fatal(err)
	}
	if !equal32(r.queued, []int32{1}) || r.started != 1 || r.out.String() != "ran\n" || st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("queued at %v, started %d times, output %q, status %v", r.queued, r.started, r.out.String(), st.GetState())
	}
}

// TestFollowEndsWithTheRecordedEnd: a job no stream will finish (its
// worker went away: LOST; stopped in the queue: never ran) ends the
// follow with its recorded status, not an error.
func TestFollowEndsWithTheRecordedEnd(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		st   *batonv1.JobStatus
	}{
		{"lost", &batonv1.JobStatus{JobId: fakeJobID, State: batonv1.JobState_JOB_STATE_LOST, StartedAt: timestamppb.Now(), Reason: "worker down"}},
		{"stopped in the queue", &batonv1.JobStatus{JobId: fakeJobID, State: batonv1.JobState_JOB_STATE_STOPPED, Reason: "stopped while queued; it never ran"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := &scripted{query: func(int) (*batonv1.QueryJobResponse, error) {
				return &batonv1.QueryJobResponse{Done: true, Error: true, Status: tt.st}, nil
			}}
			c := serveScripted(t, s).client(t)
			st, err := c.Follow(t.Context(), &batonv1.StreamJobOutputRequest{JobId: fakeJobID}, client.Handlers{})
			if err != nil || st.GetState() != tt.st.GetState() {
				t.Errorf("status %v, error %v; want %v", st.GetState(), err, tt.st.GetState())
			}
		})
	}
}

// TestOutputErrorEndsTheRun: an Output handler's error ends the run with
// that very error, without a resume.
func TestOutputErrorEndsTheRun(t *testing.T) {
	t.Parallel()
	s := &scripted{run: func(_ int, _ *scripted, send func(*batonv1.RunJobResponse) error) error {
		return sendAll(send, started(running()), runChunk(0, "hi\n"), runChunk(3, "more\n"), runEnd(succeeded()))
	}}
	c := serveScripted(t, s).client(t)
	closed := errors.New("reader went away")
	_, err := c.Run(t.Context(), &batonv1.StartJobRequest{Command: "true"}, client.Handlers{
		Output: func(*batonv1.OutputChunk) error { return closed },
	})
	if !errors.Is(err, closed) {
		t.Errorf("error %v, want the handler's", err)
	}
	if _, _, offsets := s.recorded(); len(offsets) != 0 {
		t.Errorf("resumed at %v", offsets)
	}
}

// TestUnreachableScheduler: a scheduler that is not running is one line
// naming its URL.
func TestUnreachableScheduler(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	c, err := client.New(client.Config{Schedulers: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Run(t.Context(), &batonv1.StartJobRequest{Command: "true"}, client.Handlers{})
	var e *client.Error
	if !errors.As(err, &e) || !e.Unreachable || !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("error %#v, want an unreachable *client.Error", err)
	}
	if want := "unavailable: cannot reach the scheduler at http://" + addr; !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q, want one line starting %q", err, want)
	}
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("connect.CodeOf = %v", connect.CodeOf(err))
	}
}

// TestFollowResumesAStreamThatEndsEarly: a stream that ends cleanly but
// without the job's status (a relay that gave up) is resumed too.
func TestFollowResumesAStreamThatEndsEarly(t *testing.T) {
	t.Parallel()
	s := &scripted{output: func(n int, _ *scripted, req *batonv1.StreamJobOutputRequest, send func(*batonv1.StreamJobOutputResponse) error) error {
		if n == 0 {
			return send(outChunk(req.GetOffset(), "part "))
		}
		return sendAll(send, outChunk(req.GetOffset(), "rest\n"), outEnd(succeeded()))
	}}
	c := serveScripted(t, s).client(t)
	r := newRecorder()
	st, err := c.Follow(t.Context(), &batonv1.StreamJobOutputRequest{JobId: fakeJobID}, r.handlers())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, offsets := s.recorded(); !equal(offsets, []int64{0, 5}) || r.out.String() != "part rest\n" || st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("offsets %v, output %q, status %v", offsets, r.out.String(), st.GetState())
	}
}
