package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"
)

// newDevCommand starts a scheduler and two workers in one process, on
// loopback, for trying Baton out. Data persists between runs.
func newDevCommand() *cobra.Command {
	var dataDir, scriptsDir, addr, httpAddr, logLevel string
	var workerPort int
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local cluster: a scheduler and two workers on loopback",
		Args:  cobra.NoArgs,
	}
	flags := cmd.Flags()
	flags.StringVar(&dataDir, "data-dir", filepath.Join(stateDir(), "dev"), "where the cluster keeps its data")
	flags.StringVar(&scriptsDir, "scripts-dir", "examples/scripts", "the workers' scripts directory")
	flags.StringVar(&addr, "addr", "127.0.0.1:7070", "the scheduler's address")
	flags.StringVar(&httpAddr, "http-addr", "127.0.0.1:7080", "the scheduler's plain HTTP address")
	flags.IntVar(&workerPort, "worker-port", 7071, "the first worker's port (the second uses the next one)")
	flags.StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if info, err := os.Stat(scriptsDir); err != nil || !info.IsDir() {
			return fmt.Errorf("scripts directory %q not found: run from the repository root or pass --scripts-dir", scriptsDir)
		}
		return runDev(cmd.Context(), devConfig{
			dataDir: dataDir, scriptsDir: scriptsDir, addr: addr, httpAddr: httpAddr,
			workerPort: workerPort, logLevel: logLevel,
		})
	}
	return cmd
}

type devConfig struct {
	dataDir, scriptsDir, addr, httpAddr, logLevel string
	workerPort                                    int
}

// runDev runs the cluster until ctx ends. Workers shut down first, so they
// can stop their jobs and deregister while the scheduler still listens.
func runDev(ctx context.Context, dc devConfig) error {
	host, _, err := net.SplitHostPort(dc.addr)
	if err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	sched := defaultSchedulerConfig()
	sched.GRPCServer.Addr = dc.addr
	sched.HTTPServer.Addr = dc.httpAddr
	sched.Scheduler.DataDir = filepath.Join(dc.dataDir, "scheduler")
	sched.Log = LogConfig{Level: dc.logLevel, Format: "text"}
	if err := sched.validate(); err != nil {
		return err
	}

	schedCtx, stopSched := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSched()
	schedDone := make(chan error, 1)
	go func() { schedDone <- runScheduler(schedCtx, sched) }()
	if err, exited := waitForListener(ctx, dc.addr, schedDone); err != nil {
		stopSched()
		if !exited {
			<-schedDone
		}
		return err
	}

	var wg sync.WaitGroup
	errs := make([]error, 2)
	var names []string
	for i := range 2 {
		w := defaultWorkerConfig()
		name := "worker-" + strconv.Itoa(i+1)
		names = append(names, name+" "+net.JoinHostPort(host, strconv.Itoa(dc.workerPort+i)))
		w.GRPCServer.Addr = net.JoinHostPort(host, strconv.Itoa(dc.workerPort+i))
		w.Scheduler.Addr = dc.addr
		w.Worker.Name = name
		w.Worker.DataDir = filepath.Join(dc.dataDir, name)
		w.Worker.ScriptsDir = dc.scriptsDir
		w.Worker.Labels = map[string]string{"slot": strconv.Itoa(i + 1)}
		w.Worker.StopGrace = Duration(5 * time.Second)
		w.Log = sched.Log
		if err := w.validate(); err != nil {
			return err
		}
		wg.Go(func() { errs[i] = runWorker(ctx, w) })
	}

	fmt.Printf(`Baton dev cluster is running (h2c on loopback, no TLS: every caller is an anonymous admin).
  scheduler  http://%s   gRPC, gRPC-Web and Connect JSON
  web page   http://%s/   workers, jobs and live output in the browser
  http api   http://%s
  workers    %s, %s
  data       %s
Try:
  curl -s -H 'Content-Type: application/json' -d '{"command":"bash","path":"count.sh"}' http://%s/baton.v1.SchedulerService/StartJob
  curl -s -H 'Content-Type: application/json' -d '{}' http://%s/baton.v1.SchedulerService/ListWorkers
Press Ctrl-C to stop.
`, dc.addr, dc.httpAddr, dc.httpAddr, names[0], names[1], dc.dataDir, dc.httpAddr, dc.httpAddr)

	wg.Wait()
	stopSched()
	err = errors.Join(append(errs, <-schedDone)...)
	if err == nil {
		fmt.Println("Baton dev cluster stopped.")
	}
	return err
}

// waitForListener waits until addr accepts connections, the server fails,
// or ctx ends; exited says whether it took the server's result.
func waitForListener(ctx context.Context, addr string, failed <-chan error) (err error, exited bool) {
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			return c.Close(), false
		}
		select {
		case err := <-failed:
			if err == nil {
				err = errors.New("the scheduler stopped before it listened")
			}
			return err, true
		case <-ctx.Done():
			return ctx.Err(), false
		case <-time.After(50 * time.Millisecond):
		}
	}
}
