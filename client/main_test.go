package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/jobrun"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
	"github.com/baton-run/baton/services/worker"
)

// schedulerAddr is the host:port of the in-process cluster's scheduler,
// which the examples and the tests against a real cluster call. Its
// workers: "main", which runs any number of jobs, and "small", which runs
// one at a time.
var schedulerAddr string

func TestMain(m *testing.M) {
	stop, err := startCluster()
	if err != nil {
		fmt.Fprintln(os.Stderr, "in-process cluster:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// startCluster starts a scheduler and two workers in this process, each
// served over h2c on loopback as in plain mode, with their data in a
// temporary directory, and waits for both workers to be READY. stop shuts
// them down and removes the directory.
func startCluster() (stop func(), err error) {
	dir, err := os.MkdirTemp("", "baton-client-test-")
	if err != nil {
		return nil, err
	}
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		os.RemoveAll(dir)
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()

	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, "baton.db"))
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() { st.Close() })
	workerHTTP := serving.NewHTTPClient(nil)
	sched, err := scheduler.New(ctx, scheduler.Options{Store: st, HTTPClient: workerHTTP})
	if err != nil {
		return nil, err
	}
	srv, err := serving.Listen("127.0.0.1:0", identity.AnonymousHandler(sched.Handler()), nil, nil)
	if err != nil {
		return nil, err
	}
	stops = append(stops, serve(srv, sched.Run, workerHTTP))
	schedulerAddr = srv.Addr().String()

	for _, w := range []struct {
		name     string
		capacity int
	}{{"main", 0}, {"small", 1}} {
		s, err := startWorker(filepath.Join(dir, w.name), w.name, w.capacity)
		if err != nil {
			return nil, fmt.Errorf("worker %s: %w", w.name, err)
		}
		stops = append(stops, s)
	}

	admin := serving.NewHTTPClient(nil)
	defer admin.CloseIdleConnections()
	sc := batonv1connect.NewSchedulerServiceClient(admin, "http://"+schedulerAddr)
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := sc.ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{States: []batonv1.WorkerState{batonv1.WorkerState_WORKER_STATE_READY}}))
		if err == nil && len(res.Msg.GetWorkers()) == 2 {
			return stop, nil
		}
		if time.Now().After(deadline) {
			return nil, errors.New("the workers did not become READY within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startWorker starts a worker that runs sh jobs, registered with the
// scheduler at schedulerAddr; the returned function stops it.
func startWorker(dir, name string, capacity int) (func(), error) {
	scripts := filepath.Join(dir, "scripts")
	if err := os.MkdirAll(scripts, 0o755); err != nil {
		return nil, err
	}
	var h http.Handler
	srv, err := serving.Listen("127.0.0.1:0", http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(rw, r)
	}), nil, nil)
	if err != nil {
		return nil, err
	}
	schedHTTP := serving.NewHTTPClient(nil)
	w, err := worker.New(worker.Options{
		Name:      name,
		Address:   srv.Addr().String(),
		Scheduler: batonv1connect.NewSchedulerServiceClient(schedHTTP, "http://"+schedulerAddr),
		Runner: jobrun.Options{
			DataDir:         filepath.Join(dir, "data"),
			ScriptsDir:      scripts,
			AllowedCommands: []string{"sh"},
			StopGrace:       500 * time.Millisecond,
			Capacity:        capacity,
		},
	})
	if err != nil {
		return nil, err
	}
	h = identity.AnonymousHandler(w.Handler())
	stopServing := serve(srv, w.Run, schedHTTP)
	return func() {
		stopServing()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = w.Close(ctx)
	}, nil
}

// serve runs srv and run (a scheduler's or a worker's loop) until the
// returned function stops both, then closes idle's connections.
func serve(srv *serving.Server, run func(context.Context) error, idle *http.Client) func() {
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve() }()
	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = run(runCtx)
	}()
	return func() {
		stopRun()
		<-runDone
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-serveDone
		idle.CloseIdleConnections()
	}
}
