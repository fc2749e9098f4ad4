package scheduler_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/jobrun"
	"github.com/baton-run/baton/services/metrics"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
	"github.com/baton-run/baton/services/worker"
)

// waitTimeout bounds every wait; machines are shared and noisy.
const waitTimeout = 20 * time.Second

// testScheduler is a Scheduler served over h2c on loopback, with its own
// store file.
type testScheduler struct {
	*scheduler.Scheduler
	url    string
	client batonv1connect.SchedulerServiceClient
	dbPath string
	// store is the scheduler's own store: a second one opened on dbPath
	// would begin a newer term and fence this one.
	store store.Store
	// kill stops it at once, without any graceful step; idempotent.
	kill func()
}

func startScheduler(t *testing.T, dbPath string, tune func(*scheduler.Options)) *testScheduler {
	t.Helper()
	if dbPath == "" {
		dbPath = filepath.Join(t.TempDir(), "baton.db")
	}
	st, err := store.Open(t.Context(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	workerHTTP := serving.NewHTTPClient(nil)
	opts := scheduler.Options{Store: st, HTTPClient: workerHTTP}
	if tune != nil {
		tune(&opts)
	}
	s, err := scheduler.New(t.Context(), opts)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	srv, err := serving.Listen("127.0.0.1:0", identity.AnonymousHandler(s.Handler()), nil, nil)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve() }()
	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = s.Run(runCtx)
	}()
	clientHTTP := serving.NewHTTPClient(nil)
	var once sync.Once
	kill := func() {
		once.Do(func() {
			stopRun()
			<-runDone
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // no grace: open calls are cut
			_ = srv.Shutdown(ctx)
			<-serveDone
			workerHTTP.CloseIdleConnections()
			clientHTTP.CloseIdleConnections()
			if err := st.Close(); err != nil {
				t.Errorf("close store: %v", err)
			}
		})
	}
	t.Cleanup(kill)
	url := "http://" + srv.Addr().String()
	return &testScheduler{
		Scheduler: s,
		url:       url,
		client:    batonv1connect.NewSchedulerServiceClient(clientHTTP, url),
		dbPath:    dbPath,
		store:     st,
		kill:      kill,
	}
}

// switchableClient is the SchedulerService client a test worker uses. It
// can be pointed at another scheduler, or paused: a paused client fails
// every call as an unreachable scheduler would, without the worker
// deregistering.
type switchableClient struct {
	batonv1connect.SchedulerServiceClient // only the worker-facing calls are used

	mu     sync.Mutex
	target batonv1connect.SchedulerServiceClient
	paused bool
}

func (c *switchableClient) current() (batonv1connect.SchedulerServiceClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.paused {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("scheduler unreachable (paused by the test)"))
	}
	return c.target, nil
}

func (c *switchableClient) pause(p bool) {
	c.mu.Lock()
	c.paused = p
	c.mu.Unlock()
}

func (c *switchableClient) point(to batonv1connect.SchedulerServiceClient) {
	c.mu.Lock()
	c.target = to
	c.mu.Unlock()
}

func (c *switchableClient) RegisterWorker(ctx context.Context, req *connect.Request[batonv1.RegisterWorkerRequest]) (*connect.Response[batonv1.RegisterWorkerResponse], error) {
	t, err := c.current()
	if err != nil {
		return nil, err
	}
	return t.RegisterWorker(ctx, req)
}

func (c *switchableClient) Heartbeat(ctx context.Context, req *connect.Request[batonv1.HeartbeatRequest]) (*connect.Response[batonv1.HeartbeatResponse], error) {
	t, err := c.current()
	if err != nil {
		return nil, err
	}
	return t.Heartbeat(ctx, req)
}

func (c *switchableClient) DeregisterWorker(ctx context.Context, req *connect.Request[batonv1.DeregisterWorkerRequest]) (*connect.Response[batonv1.DeregisterWorkerResponse], error) {
	t, err := c.current()
	if err != nil {
		return nil, err
	}
	return t.DeregisterWorker(ctx, req)
}

// testWorker is a real worker served over h2c, registered with a
// scheduler through a switchableClient.
type testWorker struct {
	name  string
	sched *switchableClient
	url   string
	// stop shuts the worker down gracefully; it also runs when the test
	// ends.
	stop func()
}

var scripts = map[string]string{
	"hello.sh": "#!/bin/sh\necho hello\n",
	"sleep.sh": "#!/bin/sh\nexec sleep \"${1:-100}\"\n",
	// mark.sh NAME FILE [SECONDS [CODE]] appends NAME (and the job's array
	// index, if any) to FILE, sleeps, and exits with CODE.
	// say.sh NAME FILE CODE prints "out NAME", appends NAME to FILE and
	// exits with CODE.
	"say.sh": "#!/bin/sh\necho \"out $1\"\necho \"$1\" >> \"$2\"\nexit \"${3:-0}\"\n",
	// wait.sh FILE waits until FILE exists.
	"wait.sh": "#!/bin/sh\nwhile [ ! -e \"$1\" ]; do sleep 0.05; done\n",
	"mark.sh": "#!/bin/sh\necho \"$1 ${BATON_ARRAY_INDEX:-}\" >> \"$2\"\nsleep \"${3:-0}\"\nexit \"${4:-0}\"\n",
}

func startWorker(t *testing.T, name string, sched *testScheduler, labels map[string]string) *testWorker {
	t.Helper()
	return startWorkerWith(t, name, sched, workerSetup{labels: labels})
}

// workerSetup is what tests vary about a test worker.
type workerSetup struct {
	labels       map[string]string
	interceptors []connect.Interceptor
	metrics      *metrics.Worker
	// dataDir, if set, is the worker's data directory (a restarted worker
	// gets the same one); otherwise a fresh one.
	dataDir string
	// capacity is the most jobs the worker runs at once; 0 means no limit.
	capacity int
}

// startWorkerWith starts a real worker served over h2c (anonymous, as in
// plain mode), registered with sched through a switchableClient; its
// metrics, if any, are served at /metrics as `baton worker` does. It stops
// with the test.
func startWorkerWith(t *testing.T, name string, sched *testScheduler, setup workerSetup) *testWorker {
	t.Helper()
	root := t.TempDir()
	scriptsDir := makeScripts(t, root)
	dataDir := setup.dataDir
	if dataDir == "" {
		dataDir = filepath.Join(root, "data")
	}
	var h http.Handler
	srv, err := serving.Listen("127.0.0.1:0", http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(rw, r)
	}), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	schedHTTP := serving.NewHTTPClient(nil)
	client := &switchableClient{target: batonv1connect.NewSchedulerServiceClient(schedHTTP, sched.url)}
	w, err := worker.New(worker.Options{
		Name:         name,
		Address:      srv.Addr().String(),
		Labels:       setup.labels,
		Scheduler:    client,
		Interceptors: setup.interceptors,
		Metrics:      setup.metrics,
		Runner: jobrun.Options{
			DataDir:         dataDir,
			ScriptsDir:      scriptsDir,
			AllowedCommands: []string{"sh", "bash"},
			StopGrace:       500 * time.Millisecond,
			Capacity:        setup.capacity,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	h = setup.metrics.Mount(identity.AnonymousHandler(w.Handler()))
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve() }()
	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = w.Run(runCtx)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stopRun()
			<-runDone
			_ = srv.Shutdown(ctx)
			<-serveDone
			if err := w.Close(ctx); err != nil {
				t.Errorf("close worker: %v", err)
			}
			schedHTTP.CloseIdleConnections()
		})
	}
	t.Cleanup(stop)
	return &testWorker{name: name, sched: client, url: "http://" + srv.Addr().String(), stop: stop}
}

// makeScripts writes the test scripts into root/scripts and returns that
// directory.
func makeScripts(t *testing.T, root string) string {
	t.Helper()
	dir := filepath.Join(root, "scripts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for n, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// waitFor polls cond until it holds, failing the test after waitTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// workerStates returns each worker's state by name.
func workerStates(t *testing.T, c batonv1connect.SchedulerServiceClient) map[string]batonv1.WorkerState {
	t.Helper()
	res, err := c.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
	if err != nil {
		t.Fatalf("ListWorkers: %v", err)
	}
	out := map[string]batonv1.WorkerState{}
	for _, w := range res.Msg.GetWorkers() {
		out[w.GetName()] = w.GetState()
	}
	return out
}

func waitWorkers(t *testing.T, c batonv1connect.SchedulerServiceClient, state batonv1.WorkerState, names ...string) {
	t.Helper()
	waitFor(t, "workers "+state.String(), func() bool {
		got := workerStates(t, c)
		for _, n := range names {
			if got[n] != state {
				return false
			}
		}
		return true
	})
}

func startJob(t *testing.T, c batonv1connect.SchedulerServiceClient, req *batonv1.StartJobRequest) *batonv1.StartJobResponse {
	t.Helper()
	res, err := c.StartJob(t.Context(), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("StartJob(%v): %v", req, err)
	}
	return res.Msg
}

func queryJob(t *testing.T, c batonv1connect.SchedulerServiceClient, id string) *batonv1.QueryJobResponse {
	t.Helper()
	res, err := c.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: id}))
	if err != nil {
		t.Fatalf("QueryJob(%s): %v", id, err)
	}
	return res.Msg
}

// storedState returns the job's state as ListJobs reports it.
func storedState(t *testing.T, c batonv1connect.SchedulerServiceClient, worker, id string) batonv1.JobState {
	t.Helper()
	res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{WorkerId: worker, PageSize: 1000}))
	if err != nil {
		t.Fatalf("ListJobs: %v", err)
	}
	for _, j := range res.Msg.GetJobs() {
		if j.GetJobId() == id {
			return j.GetState()
		}
	}
	return batonv1.JobState_JOB_STATE_UNSPECIFIED
}

func wantCode(t *testing.T, what string, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Errorf("%s: error %v, want code %v", what, err, code)
	}
}

// hungWorker is a "worker" that accepts connections and never answers. It
// returns its address and a channel that is sent on as connections come.
func hungWorker(t *testing.T) (string, <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 16)
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-acceptDone
		mu.Lock()
		for _, conn := range conns {
			conn.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String(), accepted
}
