package worker

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/jobrun"
	"github.com/baton-run/baton/services/metrics"
)

const defaultPageSize = 100

var errBadPageToken = errors.New("page_token is not one this worker issued")

// handler implements WorkerService over the job runtime. Requests arrive
// already validated against the schema; the handler checks only state.
type handler struct {
	runner Jobs
	name   string
	// stopping is cancelled when the worker shuts down.
	stopping context.Context
	// metrics counts the output streamed; nil records nothing.
	metrics *metrics.Worker
	// logger receives the start of each job.
	logger *slog.Logger
}

var errStopping = errors.New("the worker is shutting down; resume the stream from the last offset")

var _ batonv1connect.WorkerServiceHandler = (*handler)(nil)

// StartJob starts a job, or returns the job already started with this id.
func (h *handler) StartJob(ctx context.Context, req *connect.Request[batonv1.WorkerServiceStartJobRequest]) (*connect.Response[batonv1.WorkerServiceStartJobResponse], error) {
	st, err := h.start(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&batonv1.WorkerServiceStartJobResponse{
		JobId:  st.ID,
		Status: statusToProto(st, h.name),
	}), nil
}

// start starts the job of req (under a new id if it names none) and returns
// its status, or the job already started with its id.
func (h *handler) start(ctx context.Context, req *batonv1.WorkerServiceStartJobRequest) (jobrun.Status, error) {
	id, spec, err := jobOf(req)
	if err != nil {
		return jobrun.Status{}, err
	}
	st, created, err := h.runner.Start(ctx, id, spec)
	if err != nil {
		return jobrun.Status{}, mapError(err)
	}
	if created {
		h.started(ctx, st)
	}
	return st, nil
}

// started logs the start of a job's process with the epoch of the leader
// that asked for it (0 for a scheduler running alone). A history checker
// reads these lines to prove that no job ran twice, so their shape stays:
// message "job started", job_id (the id the scheduler gave the run: the
// job's own for its first attempt) and epoch.
func (h *handler) started(ctx context.Context, st jobrun.Status) {
	h.logger.LogAttrs(ctx, slog.LevelInfo, "job started", slog.String("job_id", st.ID), slog.Int64("epoch", epochOf(ctx)))
}

// jobOf returns the id (a new one if req names none) and spec of a start.
func jobOf(req *batonv1.WorkerServiceStartJobRequest) (string, jobrun.Spec, error) {
	id := req.GetJobId()
	if id == "" {
		v7, err := uuid.NewV7()
		if err != nil {
			return "", jobrun.Spec{}, mapError(fmt.Errorf("new job id: %w", err))
		}
		id = v7.String()
	}
	return id, specFromRequest(req), nil
}

// StopJob stops a job and returns its final status. It waits for the job to
// end for as long as the caller's deadline allows.
func (h *handler) StopJob(ctx context.Context, req *connect.Request[batonv1.WorkerServiceStopJobRequest]) (*connect.Response[batonv1.WorkerServiceStopJobResponse], error) {
	by := req.Msg.GetStoppedBy()
	if by == "" {
		by = "anonymous"
	}
	st, err := h.runner.Stop(ctx, req.Msg.GetJobId(), by)
	if err != nil {
		return nil, mapError(err)
	}
	return connect.NewResponse(&batonv1.WorkerServiceStopJobResponse{Status: statusToProto(st, h.name)}), nil
}

// QueryJob reports a job's status with the original design's summary.
func (h *handler) QueryJob(ctx context.Context, req *connect.Request[batonv1.WorkerServiceQueryJobRequest]) (*connect.Response[batonv1.WorkerServiceQueryJobResponse], error) {
	st, err := h.runner.Status(ctx, req.Msg.GetJobId())
	if err != nil {
		return nil, mapError(err)
	}
	res := &batonv1.WorkerServiceQueryJobResponse{Status: statusToProto(st, h.name)}
	res.Done, res.Error, res.ErrorText = summary(st)
	return connect.NewResponse(res), nil
}

// summary gives the original design's done / error / error_text.
func summary(st jobrun.Status) (done, failed bool, text string) {
	done = st.State.Terminal()
	failed = done && st.State != jobrun.StateSucceeded
	if failed {
		text = st.Reason
	}
	return done, failed, text
}

// ListJobs lists jobs newest first, a page at a time.
func (h *handler) ListJobs(ctx context.Context, req *connect.Request[batonv1.WorkerServiceListJobsRequest]) (*connect.Response[batonv1.WorkerServiceListJobsResponse], error) {
	after, err := decodePageToken(req.Msg.GetPageToken())
	if err != nil {
		return nil, mapError(err)
	}
	size := int(req.Msg.GetPageSize())
	if size == 0 {
		size = defaultPageSize
	}
	q := jobrun.Query{Owner: req.Msg.GetOwner(), Limit: size}
	if after != nil {
		q.AfterCreated, q.AfterID = time.Unix(0, after.created), after.id
	}
	for _, s := range req.Msg.GetStates() {
		for rs, ps := range jobStates {
			if ps == s {
				q.States = append(q.States, rs)
			}
		}
	}
	if len(req.Msg.GetStates()) > 0 && len(q.States) == 0 {
		return connect.NewResponse(&batonv1.WorkerServiceListJobsResponse{}), nil
	}
	jobs, more, err := h.runner.Page(ctx, q)
	if err != nil {
		return nil, mapError(err)
	}
	res := &batonv1.WorkerServiceListJobsResponse{Jobs: make([]*batonv1.JobStatus, len(jobs))}
	for i, st := range jobs {
		res.Jobs[i] = statusToProto(st, h.name)
	}
	if more && len(res.Jobs) > 0 {
		res.NextPageToken = encodePageToken(res.Jobs[len(res.Jobs)-1])
	}
	return connect.NewResponse(res), nil
}

// pageKey is the position after which the next page starts, in List's order
// (CreatedAt descending, then ID descending).
type pageKey struct {
	created int64
	id      string
}

func encodePageToken(last *batonv1.JobStatus) string {
	raw := strconv.FormatInt(last.GetCreatedAt().AsTime().UnixNano(), 10) + "/" + last.GetJobId()
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func decodePageToken(token string) (*pageKey, error) {
	if token == "" {
		return nil, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return nil, errBadPageToken
	}
	created, id, ok := strings.Cut(string(raw), "/")
	n, err := strconv.ParseInt(created, 10, 64)
	if !ok || err != nil || id == "" {
		return nil, errBadPageToken
	}
	return &pageKey{created: n, id: id}, nil
}

// StreamJobOutput sends the job's output from the requested offset and, when
// following, keeps sending until the job ends; the status comes last.
func (h *handler) StreamJobOutput(ctx context.Context, req *connect.Request[batonv1.WorkerServiceStreamJobOutputRequest], stream *connect.ServerStream[batonv1.WorkerServiceStreamJobOutputResponse]) error {
	msg := &batonv1.WorkerServiceStreamJobOutputResponse{}
	event := &batonv1.WorkerServiceStreamJobOutputResponse_Chunk{}
	outReq := jobrun.OutputRequest{
		Offset:  req.Msg.GetOffset(),
		Follow:  req.Msg.GetFollow(),
		Streams: streamFromProto(req.Msg.GetStream()),
	}
	st, err := h.output(ctx, req.Msg.GetJobId(), outReq, func(chunk *batonv1.OutputChunk) error {
		event.Chunk = chunk
		msg.Event = event
		return stream.Send(msg)
	})
	if err != nil {
		return err
	}
	return stream.Send(&batonv1.WorkerServiceStreamJobOutputResponse{
		Event: &batonv1.WorkerServiceStreamJobOutputResponse_Status{Status: statusToProto(st, h.name)},
	})
}

// RunJob starts a job and follows it to its end in one call: the started
// status, the output from byte 0, the final status. The job outlives the
// call, as it outlives StartJob.
func (h *handler) RunJob(ctx context.Context, req *connect.Request[batonv1.WorkerServiceRunJobRequest], stream *connect.ServerStream[batonv1.WorkerServiceRunJobResponse]) error {
	// Started as StartJob starts it (which logs the start), then followed
	// from byte 0.
	st, err := h.start(ctx, req.Msg.GetJob())
	if err != nil {
		return err
	}
	if err := stream.Send(&batonv1.WorkerServiceRunJobResponse{
		Event: &batonv1.WorkerServiceRunJobResponse_Started{Started: statusToProto(st, h.name)},
	}); err != nil {
		return err
	}
	msg := &batonv1.WorkerServiceRunJobResponse{}
	event := &batonv1.WorkerServiceRunJobResponse_Chunk{}
	st, err = h.output(ctx, st.ID, jobrun.OutputRequest{Follow: true, Streams: streamFromProto(req.Msg.GetStream())}, func(chunk *batonv1.OutputChunk) error {
		event.Chunk = chunk
		msg.Event = event
		return stream.Send(msg)
	})
	if err != nil {
		return err
	}
	return stream.Send(&batonv1.WorkerServiceRunJobResponse{
		Event: &batonv1.WorkerServiceRunJobResponse_Status{Status: statusToProto(st, h.name)},
	})
}

// output sends a job's output to send, one chunk at a time, and returns the
// job's status after the last one (the final status when following).
func (h *handler) output(ctx context.Context, id string, req jobrun.OutputRequest, send func(*batonv1.OutputChunk) error) (jobrun.Status, error) {
	return h.follow(ctx, func(ctx context.Context, fn func(jobrun.Chunk) error) (jobrun.Status, error) {
		return h.runner.Output(ctx, id, req, fn)
	}, send)
}

// follow runs read, which passes a job's output to its callback, sending
// each chunk with send, and maps its end. The chunk passed to send is
// reused: send must be done with it when it returns, as Connect's Send is
// once it marshalled the message. Streams end with Unavailable when the
// worker shuts down.
func (h *handler) follow(ctx context.Context, read func(context.Context, func(jobrun.Chunk) error) (jobrun.Status, error), send func(*batonv1.OutputChunk) error) (jobrun.Status, error) {
	chunk := &batonv1.OutputChunk{}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(h.stopping, func() { cancel(errStopping) })()
	st, err := read(ctx, func(c jobrun.Chunk) error {
		chunk.Stream = streamToProto(c.Stream)
		chunk.Data = c.Data
		chunk.Offset = c.Offset
		chunk.Time = timestamppb.New(c.Time)
		if err := send(chunk); err != nil {
			return err
		}
		h.metrics.OutputStreamed(len(c.Data))
		return nil
	})
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errStopping) {
			return st, connect.NewError(connect.CodeUnavailable, errStopping)
		}
		if ctx.Err() != nil {
			return st, mapError(ctx.Err())
		}
		return st, mapError(err)
	}
	return st, nil
}
