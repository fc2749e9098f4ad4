package keeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	keeperv1 "github.com/baton-run/baton/gen/baton/keeper/v1"
	"github.com/baton-run/baton/gen/baton/keeper/v1/keeperv1connect"
	"github.com/baton-run/baton/services/jobrun"
)

// How long a worker waits for a keeper to answer after starting or
// upgrading it.
const answerTimeout = 15 * time.Second

// Client is a worker's connection to its keeper. It offers the job
// runtime's operations, follows the keeper's changes (passing them to
// OnChange) and, when the keeper goes away, starts a new one: a keeper that
// was killed leaves its jobs LOST, and the new one says so. Its methods are
// safe for concurrent use.
type Client struct {
	dir        string
	executable string
	options    []byte
	log        *slog.Logger
	onChange   func(jobrun.Status)
	http       *http.Client
	rpc        keeperv1connect.KeeperServiceClient

	running  atomic.Int64
	protocol atomic.Int32 // the keeper's ProtocolVersion
	mu       sync.Mutex
	live     map[string]bool // jobs seen not over, to reconcile after a gap

	ending   chan struct{} // closed when the keeper decommissions
	endOnce  sync.Once
	stop     context.CancelFunc
	watching chan struct{}
}

// Config is what a worker opens its keeper with.
type Config struct {
	// Options are the runtime options; their Logger and OnChange are not
	// sent. DataDir is required.
	Options jobrun.Options
	// Executable is the absolute path of the baton binary a new keeper is
	// started from and an older one upgraded to.
	Executable string
	// OnChange receives every change of a job's state, as
	// jobrun.Options.OnChange would, and the ends of jobs that ended while
	// the worker was not following.
	OnChange func(jobrun.Status)
	Logger   *slog.Logger
}

// Open connects to the keeper of cfg.Options.DataDir, starting one when
// none answers and upgrading it (in place, jobs kept) when its build or
// options differ from the caller's, and starts following its changes.
func Open(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func(jobrun.Status) {}
	}
	dir, options, err := encodeOptions(cfg.Options)
	if err != nil {
		return nil, err
	}
	hc := newHTTPClient(dir)
	c := &Client{
		dir:        dir,
		executable: cfg.Executable,
		options:    options,
		log:        cfg.Logger,
		onChange:   cfg.OnChange,
		http:       hc,
		rpc:        keeperv1connect.NewKeeperServiceClient(hc, "http://keeper", connect.WithAcceptCompression("gzip", nil, nil)),
		live:       make(map[string]bool),
		ending:     make(chan struct{}),
		watching:   make(chan struct{}),
	}
	if err := c.attach(ctx); err != nil {
		hc.CloseIdleConnections()
		return nil, err
	}
	live, _, err := c.Page(ctx, jobrun.Query{Live: true})
	if err != nil {
		hc.CloseIdleConnections()
		return nil, err
	}
	for _, st := range live {
		c.live[st.ID] = true
	}
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	c.stop = stop
	feed, err := c.subscribe(ctx, wctx)
	if err != nil {
		stop()
		hc.CloseIdleConnections()
		return nil, err
	}
	go c.watch(wctx, feed)
	return c, nil
}

// encodeOptions returns the data directory and the options as a keeper
// reads them.
func encodeOptions(opts jobrun.Options) (string, []byte, error) {
	if opts.DataDir == "" {
		return "", nil, errors.New("keeper: Options.DataDir is required")
	}
	dir, err := absDir(opts.DataDir)
	if err != nil {
		return "", nil, err
	}
	opts.DataDir = dir
	// The keeper's environment is the first worker's; the values jobs
	// inherit are this worker's.
	opts.InheritedValues = map[string]string{}
	for _, name := range opts.InheritEnv {
		if v, ok := os.LookupEnv(name); ok {
			opts.InheritedValues[name] = v
		}
	}
	b, err := json.Marshal(opts)
	if err != nil {
		return "", nil, fmt.Errorf("keeper: encoding the options: %w", err)
	}
	return dir, b, nil
}

// attach makes sure a keeper of this build and these options answers:
// it starts one if none does, and upgrades one that differs.
func (c *Client) attach(ctx context.Context) error {
	hello, err := c.hello(ctx)
	if err != nil {
		if err := start(c.dir, c.executable, c.options); err != nil {
			return err
		}
		if hello, err = c.awaitHello(ctx, nil); err != nil {
			return err
		}
	}
	// The keeper is to run what the worker would start: the executable as
	// it is on disk now, which may be newer than the worker's own image.
	want, err := fileBuild(c.executable)
	if err != nil {
		return fmt.Errorf("keeper: %w", err)
	}
	if hello.GetBuild() == want && hello.GetOptionsDigest() == digest(c.options) {
		c.running.Store(hello.GetRunning())
		c.protocol.Store(hello.GetProtocolVersion())
		return nil
	}
	c.log.Info("upgrading the keeper in place", "keeper_build", hello.GetBuild(), "build", want,
		"options_changed", hello.GetOptionsDigest() != digest(c.options), "keeper_pid", hello.GetPid())
	if _, err := c.rpc.Upgrade(ctx, connect.NewRequest(&keeperv1.UpgradeRequest{
		Executable: c.executable, Options: c.options,
	})); err != nil {
		return fmt.Errorf("keeper: upgrading the keeper (pid %d): %w", hello.GetPid(), err)
	}
	hello, err = c.awaitHello(ctx, func(h *keeperv1.HelloResponse) bool { return h.GetBuild() == want })
	if err != nil {
		return err
	}
	c.running.Store(hello.GetRunning())
	c.protocol.Store(hello.GetProtocolVersion())
	return nil
}

func (c *Client) hello(ctx context.Context) (*keeperv1.HelloResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := c.rpc.Hello(ctx, connect.NewRequest(&keeperv1.HelloRequest{ProtocolVersion: ProtocolVersion}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// awaitHello polls until the keeper answers (and, with ok, until its
// answer is the one expected).
func (c *Client) awaitHello(ctx context.Context, ok func(*keeperv1.HelloResponse) bool) (*keeperv1.HelloResponse, error) {
	deadline := time.Now().Add(answerTimeout)
	var last error
	for time.Now().Before(deadline) {
		h, err := c.hello(ctx)
		if err == nil && (ok == nil || ok(h)) {
			return h, nil
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("the keeper still runs build %s", h.GetBuild())
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("keeper: no answer from the keeper of %s within %s (see %s): %w", c.dir, answerTimeout, logName, last)
}

// subscribe opens the change feed and waits for its first message, so
// that no change after it is missed.
func (c *Client) subscribe(ctx, wctx context.Context) (*connect.ServerStreamForClient[keeperv1.WatchResponse], error) {
	feed, err := c.rpc.Watch(wctx, connect.NewRequest(&keeperv1.WatchRequest{}))
	if err != nil {
		return nil, err
	}
	if !feed.Receive() {
		err := feed.Err()
		_ = feed.Close()
		if err == nil {
			err = errors.New("the keeper ended the change feed")
		}
		return nil, err
	}
	c.running.Store(feed.Msg().GetRunning())
	return feed, nil
}

// watch follows the change feed until Close. When the feed breaks, the
// keeper is attached again (started anew if it is gone) and the jobs that
// changed meanwhile are reported.
func (c *Client) watch(ctx context.Context, feed *connect.ServerStreamForClient[keeperv1.WatchResponse]) {
	defer close(c.watching)
	retry := 50 * time.Millisecond
	for {
		for feed.Receive() {
			msg := feed.Msg()
			c.running.Store(msg.GetRunning())
			if st := msg.GetStatus(); st != nil {
				c.changed(statusFromProto(st))
			}
			if msg.GetEnding() {
				_ = feed.Close()
				c.endOnce.Do(func() { close(c.ending) })
				return
			}
		}
		err := feed.Err()
		_ = feed.Close()
		for {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("lost the keeper; attaching again", "error", err)
			if err = c.attach(ctx); err == nil {
				if feed, err = c.subscribe(ctx, ctx); err == nil {
					break
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(retry):
			}
			retry = min(2*retry, 2*time.Second)
		}
		retry = 50 * time.Millisecond
		c.reconcile(ctx)
	}
}

// changed tracks a job's change and passes it on.
func (c *Client) changed(st jobrun.Status) {
	c.mu.Lock()
	if st.State.Terminal() {
		delete(c.live, st.ID)
	} else {
		c.live[st.ID] = true
	}
	c.mu.Unlock()
	c.onChange(st)
}

// reconcile reports the jobs that ended while the feed was broken, and
// learns the ones that started.
func (c *Client) reconcile(ctx context.Context) {
	c.mu.Lock()
	ids := make([]string, 0, len(c.live))
	for id := range c.live {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		st, err := c.Status(ctx, id)
		switch {
		case err == nil && st.State.Terminal():
			c.changed(st)
		case errors.Is(err, jobrun.ErrNotFound):
			c.mu.Lock()
			delete(c.live, id)
			c.mu.Unlock()
		}
	}
	live, _, err := c.Page(ctx, jobrun.Query{Live: true})
	if err != nil {
		return
	}
	c.mu.Lock()
	for _, st := range live {
		c.live[st.ID] = true
	}
	c.mu.Unlock()
}

// Ending is closed when the keeper ends with its jobs (a decommission).
func (c *Client) Ending() <-chan struct{} { return c.ending }

// Close stops following the keeper. The keeper and its jobs run on.
func (c *Client) Close(context.Context) error {
	c.stop()
	<-c.watching
	c.http.CloseIdleConnections()
	return nil
}

// Running returns the number of jobs starting or running, as of the
// keeper's last change.
func (c *Client) Running() int { return int(c.running.Load()) }

// Start starts a job (see jobrun.Runner.Start).
func (c *Client) Start(ctx context.Context, id string, spec jobrun.Spec) (jobrun.Status, bool, error) {
	if err := c.checkScript(&spec); err != nil {
		return jobrun.Status{}, false, err
	}
	res, err := unary(c, ctx, c.rpc.Start, &keeperv1.StartRequest{Id: id, Spec: specToProto(spec)})
	if err != nil {
		return jobrun.Status{}, false, err
	}
	st := statusFromProto(res.GetStatus())
	c.track(st)
	return st, res.GetCreated(), nil
}

// checkScript refuses a script a keeper of an older protocol would drop,
// running the command without it.
func (c *Client) checkScript(spec *jobrun.Spec) error {
	if v := c.protocol.Load(); len(spec.Script) > 0 && v < 3 {
		return fmt.Errorf("%w: the worker's keeper (protocol %d) cannot run a script sent with the job; restart the worker to upgrade it", jobrun.ErrExec, v)
	}
	return nil
}

// track notes a job the worker saw started, in case its end comes while
// the feed is broken.
func (c *Client) track(st jobrun.Status) {
	if st.State.Terminal() {
		return
	}
	c.mu.Lock()
	c.live[st.ID] = true
	c.mu.Unlock()
}

// Run starts a job and follows its output to the end: started is called
// with the started job's status, fn with each chunk; it returns the final
// status. A keeper that restarts meanwhile (an upgrade) is waited for and
// the follow resumed where it broke.
func (c *Client) Run(ctx context.Context, id string, spec jobrun.Spec, streams jobrun.Stream, started func(jobrun.Status) error, fn func(jobrun.Chunk) error) (jobrun.Status, error) {
	if err := c.checkScript(&spec); err != nil {
		return jobrun.Status{}, err
	}
	var (
		last    jobrun.Status
		isStart bool
		offset  int64
	)
	send := func(ch jobrun.Chunk) error {
		offset = ch.Offset + int64(len(ch.Data))
		if err := fn(ch); err != nil {
			return &callerError{err}
		}
		return nil
	}
	files := c.protocol.Load() >= 2
	var reader *jobrun.OutputReader
	if files {
		var err error
		if reader, err = jobrun.NewOutputReader(c.dir, id, jobrun.OutputRequest{Streams: streams}, send); err != nil {
			return jobrun.Status{}, err
		}
		defer reader.Close()
	}
	err := c.resume(ctx, func() error {
		stream, err := c.rpc.Run(ctx, connect.NewRequest(&keeperv1.RunRequest{Id: id, Spec: specToProto(spec), Streams: int32(streams), PositionsOnly: files}))
		if err != nil {
			return fromConnect(err)
		}
		defer stream.Close()
		for stream.Receive() {
			switch ev := stream.Msg().GetEvent().(type) {
			case *keeperv1.RunResponse_Started:
				last = statusFromProto(ev.Started)
				c.track(last)
				isStart = true
				if err := started(last); err != nil {
					return &callerError{err}
				}
			case *keeperv1.RunResponse_WrittenRecords:
				if err := reader.Send(ctx, ev.WrittenRecords); err != nil {
					return err
				}
			case *keeperv1.RunResponse_Chunk:
				if err := send(chunkFromProto(ev.Chunk)); err != nil {
					return err
				}
			case *keeperv1.RunResponse_Status:
				last = statusFromProto(ev.Status)
				return nil
			}
		}
		return brokenStream(stream.Err())
	}, func() bool { return !isStart })
	if err != nil || !isStart || last.State.Terminal() {
		return last, unwrapCaller(err)
	}
	// Started, and the stream broke: the rest is a follow from there.
	return c.Output(ctx, last.ID, jobrun.OutputRequest{Offset: offset, Follow: true, Streams: streams}, fn)
}

// Output sends a job's output to fn (see jobrun.Runner.Output). A keeper
// that restarts meanwhile (an upgrade) is waited for and the stream resumed
// from the last offset sent.
func (c *Client) Output(ctx context.Context, id string, req jobrun.OutputRequest, fn func(jobrun.Chunk) error) (jobrun.Status, error) {
	if c.protocol.Load() >= 2 {
		return c.outputFromFiles(ctx, id, req, fn)
	}
	var final jobrun.Status
	err := c.resume(ctx, func() error {
		stream, err := c.rpc.Output(ctx, connect.NewRequest(&keeperv1.OutputRequest{
			Id: id, Offset: req.Offset, Follow: req.Follow, Streams: int32(req.Streams),
		}))
		if err != nil {
			return fromConnect(err)
		}
		defer stream.Close()
		for stream.Receive() {
			switch ev := stream.Msg().GetEvent().(type) {
			case *keeperv1.OutputResponse_Chunk:
				ch := chunkFromProto(ev.Chunk)
				req.Offset = ch.Offset + int64(len(ch.Data))
				if err := fn(ch); err != nil {
					return &callerError{err}
				}
			case *keeperv1.OutputResponse_Status:
				final = statusFromProto(ev.Status)
				return nil
			}
		}
		return brokenStream(stream.Err())
	}, func() bool { return true })
	return final, unwrapCaller(err)
}

// outputFromFiles is Output reading the job's files itself, the keeper
// saying only how far they are written: the bytes are not copied through
// the socket.
func (c *Client) outputFromFiles(ctx context.Context, id string, req jobrun.OutputRequest, fn func(jobrun.Chunk) error) (jobrun.Status, error) {
	reader, err := jobrun.NewOutputReader(c.dir, id, req, func(ch jobrun.Chunk) error {
		if err := fn(ch); err != nil {
			return &callerError{err}
		}
		return nil
	})
	if err != nil {
		return jobrun.Status{}, err
	}
	defer reader.Close()
	var final jobrun.Status
	err = c.resume(ctx, func() error {
		stream, err := c.rpc.Output(ctx, connect.NewRequest(&keeperv1.OutputRequest{Id: id, Follow: req.Follow, PositionsOnly: true}))
		if err != nil {
			return fromConnect(err)
		}
		defer stream.Close()
		for stream.Receive() {
			switch ev := stream.Msg().GetEvent().(type) {
			case *keeperv1.OutputResponse_WrittenRecords:
				if err := reader.Send(ctx, ev.WrittenRecords); err != nil {
					return err
				}
			case *keeperv1.OutputResponse_Status:
				final = statusFromProto(ev.Status)
				return nil
			}
		}
		return brokenStream(stream.Err())
	}, func() bool { return true })
	return final, unwrapCaller(err)
}

// resume runs call again while it fails because the keeper is not
// reachable and again says so, for up to answerTimeout from the first
// failure: the keeper is being upgraded, or started anew.
func (c *Client) resume(ctx context.Context, call func() error, again func() bool) error {
	var deadline time.Time
	for {
		err := call()
		if err == nil || !errors.Is(err, ErrUnavailable) || ctx.Err() != nil || !again() {
			return err
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(answerTimeout)
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// callerError is an error of the caller's callback, passed back as it is.
type callerError struct{ err error }

func (e *callerError) Error() string { return e.err.Error() }
func (e *callerError) Unwrap() error { return e.err }

func unwrapCaller(err error) error {
	var ce *callerError
	if errors.As(err, &ce) {
		return ce.err
	}
	return err
}

// brokenStream is the error of a stream that ended before its status.
func brokenStream(err error) error {
	if err == nil {
		err = connect.NewError(connect.CodeUnavailable, errors.New("the keeper ended the stream early"))
	}
	return fromConnect(err)
}

// Stop stops a job (see jobrun.Runner.Stop).
func (c *Client) Stop(ctx context.Context, id, by string) (jobrun.Status, error) {
	res, err := unary(c, ctx, c.rpc.Stop, &keeperv1.StopRequest{Id: id, StoppedBy: by})
	if err != nil {
		return jobrun.Status{}, err
	}
	st := statusFromProto(res.GetStatus())
	if !st.State.Terminal() && ctx.Err() != nil {
		return st, ctx.Err()
	}
	return st, nil
}

// Status reports a job.
func (c *Client) Status(ctx context.Context, id string) (jobrun.Status, error) {
	res, err := unary(c, ctx, c.rpc.Status, &keeperv1.StatusRequest{Id: id})
	if err != nil {
		return jobrun.Status{}, err
	}
	return statusFromProto(res.GetStatus()), nil
}

// Page returns one page of jobs (see jobrun.Runner.Page).
func (c *Client) Page(ctx context.Context, q jobrun.Query) ([]jobrun.Status, bool, error) {
	req := &keeperv1.ListRequest{
		AfterCreatedUnixNanos: unixNanos(q.AfterCreated),
		AfterId:               q.AfterID,
		Owner:                 q.Owner,
		LiveOnly:              q.Live,
		Limit:                 int32(q.Limit),
	}
	for _, s := range q.States {
		req.States = append(req.States, keeperv1.JobState(s+1))
	}
	res, err := unary(c, ctx, c.rpc.List, req)
	if err != nil {
		return nil, false, err
	}
	out := make([]jobrun.Status, len(res.GetJobs()))
	for i, st := range res.GetJobs() {
		out[i] = statusFromProto(st)
	}
	return out, res.GetMore(), nil
}

// unary makes a call of the keeper, again while the keeper is not
// reachable (see resume): every call a worker makes is idempotent (Start
// is, on the job's id).
func unary[Req, Res any](c *Client, ctx context.Context, call func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error), req *Req) (*Res, error) {
	var res *connect.Response[Res]
	err := c.resume(ctx, func() error {
		var err error
		res, err = call(ctx, connect.NewRequest(req))
		return fromConnect(err)
	}, func() bool { return true })
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}
