package keeper

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"connectrpc.com/connect"

	keeperv1 "github.com/baton-run/baton/gen/baton/keeper/v1"
	"github.com/baton-run/baton/gen/baton/keeper/v1/keeperv1connect"
	"github.com/baton-run/baton/services/jobrun"
)

// ProtocolVersion is the version of KeeperService this build speaks. It
// grows by one whenever a method or field a worker relies on is added:
// 2 added positions_only (the worker reads output from the files); 3 the
// script sent with a job.
const ProtocolVersion = 3

// server implements KeeperService over the keeper's Runner.
type server struct {
	k *Keeper
}

var _ keeperv1connect.KeeperServiceHandler = (*server)(nil)

func (s *server) runner() *jobrun.Runner { return s.k.runner }

func (s *server) Hello(_ context.Context, _ *connect.Request[keeperv1.HelloRequest]) (*connect.Response[keeperv1.HelloResponse], error) {
	return connect.NewResponse(&keeperv1.HelloResponse{
		ProtocolVersion: ProtocolVersion,
		Build:           s.k.build,
		OptionsDigest:   s.k.digest,
		Pid:             int64(s.k.pid),
		Running:         int64(s.runner().Running()),
	}), nil
}

func (s *server) Start(ctx context.Context, req *connect.Request[keeperv1.StartRequest]) (*connect.Response[keeperv1.StartResponse], error) {
	st, created, err := s.runner().Start(ctx, req.Msg.GetId(), specFromProto(req.Msg.GetSpec()))
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&keeperv1.StartResponse{Status: statusToProto(st), Created: created}), nil
}

func (s *server) Run(ctx context.Context, req *connect.Request[keeperv1.RunRequest], stream *connect.ServerStream[keeperv1.RunResponse]) error {
	st, _, err := s.runner().Start(ctx, req.Msg.GetId(), specFromProto(req.Msg.GetSpec()))
	if err != nil {
		return toConnect(err)
	}
	if err := stream.Send(&keeperv1.RunResponse{Event: &keeperv1.RunResponse_Started{Started: statusToProto(st)}}); err != nil {
		return err
	}
	msg := &keeperv1.RunResponse{}
	if req.Msg.GetPositionsOnly() {
		st, err = s.runner().Written(ctx, st.ID, true, func(n int64) error {
			msg.Event = &keeperv1.RunResponse_WrittenRecords{WrittenRecords: n}
			return stream.Send(msg)
		})
	} else {
		event := &keeperv1.RunResponse_Chunk{Chunk: &keeperv1.Chunk{}}
		outReq := jobrun.OutputRequest{Follow: true, Streams: jobrun.Stream(req.Msg.GetStreams())}
		st, err = s.runner().Output(ctx, st.ID, outReq, func(c jobrun.Chunk) error {
			chunkToProto(c, event.Chunk)
			msg.Event = event
			return stream.Send(msg)
		})
	}
	if err != nil {
		return toConnect(err)
	}
	return stream.Send(&keeperv1.RunResponse{Event: &keeperv1.RunResponse_Status{Status: statusToProto(st)}})
}

func (s *server) Stop(ctx context.Context, req *connect.Request[keeperv1.StopRequest]) (*connect.Response[keeperv1.StopResponse], error) {
	st, err := s.runner().Stop(ctx, req.Msg.GetId(), req.Msg.GetStoppedBy())
	if err != nil && st.ID == "" {
		return nil, toConnect(err)
	}
	// A stop whose wait ended first still reports where the job is.
	return connect.NewResponse(&keeperv1.StopResponse{Status: statusToProto(st)}), nil
}

func (s *server) Status(_ context.Context, req *connect.Request[keeperv1.StatusRequest]) (*connect.Response[keeperv1.StatusResponse], error) {
	st, err := s.runner().Status(req.Msg.GetId())
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&keeperv1.StatusResponse{Status: statusToProto(st)}), nil
}

func (s *server) List(_ context.Context, req *connect.Request[keeperv1.ListRequest]) (*connect.Response[keeperv1.ListResponse], error) {
	q := jobrun.Query{
		AfterCreated: fromUnixNanos(req.Msg.GetAfterCreatedUnixNanos()),
		AfterID:      req.Msg.GetAfterId(),
		Owner:        req.Msg.GetOwner(),
		Live:         req.Msg.GetLiveOnly(),
		Limit:        int(req.Msg.GetLimit()),
	}
	for _, st := range req.Msg.GetStates() {
		q.States = append(q.States, stateFromProto(st))
	}
	jobs, more := s.runner().Page(q)
	res := &keeperv1.ListResponse{Jobs: make([]*keeperv1.Status, len(jobs)), More: more}
	for i, st := range jobs {
		res.Jobs[i] = statusToProto(st)
	}
	return connect.NewResponse(res), nil
}

func (s *server) Output(ctx context.Context, req *connect.Request[keeperv1.OutputRequest], stream *connect.ServerStream[keeperv1.OutputResponse]) error {
	msg := &keeperv1.OutputResponse{}
	var (
		st  jobrun.Status
		err error
	)
	if req.Msg.GetPositionsOnly() {
		st, err = s.runner().Written(ctx, req.Msg.GetId(), req.Msg.GetFollow(), func(n int64) error {
			msg.Event = &keeperv1.OutputResponse_WrittenRecords{WrittenRecords: n}
			return stream.Send(msg)
		})
	} else {
		event := &keeperv1.OutputResponse_Chunk{Chunk: &keeperv1.Chunk{}}
		outReq := jobrun.OutputRequest{
			Offset:  req.Msg.GetOffset(),
			Follow:  req.Msg.GetFollow(),
			Streams: jobrun.Stream(req.Msg.GetStreams()),
		}
		st, err = s.runner().Output(ctx, req.Msg.GetId(), outReq, func(c jobrun.Chunk) error {
			chunkToProto(c, event.Chunk)
			msg.Event = event
			return stream.Send(msg)
		})
	}
	if err != nil {
		return toConnect(err)
	}
	return stream.Send(&keeperv1.OutputResponse{Event: &keeperv1.OutputResponse_Status{Status: statusToProto(st)}})
}

func (s *server) Watch(ctx context.Context, _ *connect.Request[keeperv1.WatchRequest], stream *connect.ServerStream[keeperv1.WatchResponse]) error {
	sub := s.k.watchers.add()
	defer s.k.watchers.remove(sub)
	// The headers go out now, so that the worker knows the feed is on
	// before it reconciles what it missed.
	if err := stream.Send(&keeperv1.WatchResponse{Running: int64(s.runner().Running())}); err != nil {
		return err
	}
	leaving := s.k.leaving
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-leaving:
			if s.k.watchers.ended() {
				leaving = nil // the feed ends once drained
				continue
			}
			return connect.NewError(connect.CodeUnavailable, errors.New("the keeper is restarting"))
		case msg, ok := <-sub:
			if !ok {
				if s.k.watchers.ended() {
					return nil
				}
				return connect.NewError(connect.CodeResourceExhausted, errors.New("the watcher fell behind; watch again and reconcile"))
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
	}
}

func (s *server) Upgrade(_ context.Context, req *connect.Request[keeperv1.UpgradeRequest]) (*connect.Response[keeperv1.UpgradeResponse], error) {
	if err := s.k.requestUpgrade(req.Msg.GetExecutable(), req.Msg.GetOptions()); err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	}
	return connect.NewResponse(&keeperv1.UpgradeResponse{}), nil
}

func (s *server) Shutdown(ctx context.Context, _ *connect.Request[keeperv1.ShutdownRequest]) (*connect.Response[keeperv1.ShutdownResponse], error) {
	if err := s.k.shutdown(ctx); err != nil {
		return nil, connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	return connect.NewResponse(&keeperv1.ShutdownResponse{}), nil
}

// watchers fan the runtime's changes out to every Watch call.
type watchers struct {
	mu    sync.Mutex
	subs  map[chan *keeperv1.WatchResponse]struct{}
	isEnd bool
}

// end sends last to every watcher and closes the feeds: nothing follows.
func (w *watchers) end(last *keeperv1.WatchResponse) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.isEnd = true
	for c := range w.subs {
		select {
		case c <- last:
		default:
		}
		delete(w.subs, c)
		close(c)
	}
}

// count is the number of Watch calls following the changes.
func (w *watchers) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.subs)
}

func (w *watchers) ended() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.isEnd
}

// watchBuffer bounds the changes a watcher may lag behind by; one that
// lags further is cut off and reconciles when it watches again.
const watchBuffer = 4096

func (w *watchers) add() chan *keeperv1.WatchResponse {
	c := make(chan *keeperv1.WatchResponse, watchBuffer)
	w.mu.Lock()
	if w.subs == nil {
		w.subs = make(map[chan *keeperv1.WatchResponse]struct{})
	}
	w.subs[c] = struct{}{}
	w.mu.Unlock()
	return c
}

func (w *watchers) remove(c chan *keeperv1.WatchResponse) {
	w.mu.Lock()
	if _, ok := w.subs[c]; ok {
		delete(w.subs, c)
		close(c)
	}
	w.mu.Unlock()
}

func (w *watchers) publish(msg *keeperv1.WatchResponse) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for c := range w.subs {
		select {
		case c <- msg:
		default:
			delete(w.subs, c)
			close(c)
		}
	}
}

func (s *server) Stats(context.Context, *connect.Request[keeperv1.StatsRequest]) (*connect.Response[keeperv1.StatsResponse], error) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return connect.NewResponse(&keeperv1.StatsResponse{
		HeapLiveBytes: int64(ms.HeapAlloc),
		RssBytes:      rssBytes(),
		Running:       int64(s.runner().Running()),
	}), nil
}

// rssBytes is this process's resident set size (statm(5)), or 0.
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}
