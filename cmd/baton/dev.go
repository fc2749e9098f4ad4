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

	"github.com/baton-run/baton/services/identity"
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

// devAdmin is the client identity `baton dev` issues for its user.
var devAdmin = identity.Principal{Role: identity.RoleAdmin, Name: "dev"}

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
	// The cluster runs over mutual TLS, like a real one: its own CA and
	// certificates, made on the first run and reused afterwards.
	workerNames := []string{"worker-1", "worker-2"}
	principals := []identity.Principal{identity.Scheduler, devAdmin}
	for _, n := range workerNames {
		principals = append(principals, identity.Principal{Role: identity.RoleWorker, Name: n})
	}
	caFile, certs, err := ensureCerts(filepath.Join(dc.dataDir, "certs"), "dev", principals...)
	if err != nil {
		return fmt.Errorf("dev certificates: %w", err)
	}
	tlsFor := func(p identity.Principal, addr string) GRPCServerConfig {
		return GRPCServerConfig{Addr: addr, UseTLS: true, CAFile: caFile, CrtFile: certs[p][0], KeyFile: certs[p][1]}
	}

	sched := defaultSchedulerConfig()
	sched.GRPCServer = tlsFor(identity.Scheduler, dc.addr)
	sched.Scheduler.AuditFile = filepath.Join(dc.dataDir, "scheduler", "audit.log")
	sched.HTTPServer.Addr = dc.httpAddr
	sched.Scheduler.DataDir = filepath.Join(dc.dataDir, "scheduler")
	sched.Log = LogConfig{Level: dc.logLevel, Format: "text"}
	if err := sched.validate(); err != nil {
		return err
	}
	if err := writeClientConfig(filepath.Join(dc.dataDir, "client.toml"), ClientSection{
		Scheduler: "https://" + dc.addr, CAFile: caFile, CertFile: certs[devAdmin][0], KeyFile: certs[devAdmin][1],
	}); err != nil {
		return err
	}

	schedCtx, stopSched := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSched()
	// Refuse addresses something else holds: waitForListener below would
	// take that something for our scheduler.
	addrs := []string{dc.addr, dc.httpAddr}
	for i := range workerNames {
		addrs = append(addrs, net.JoinHostPort(host, strconv.Itoa(dc.workerPort+i)))
	}
	for _, a := range addrs {
		if a == "" {
			continue
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("%s is taken (another baton dev?); pick other ports with --addr, --http-addr and --worker-port: %w", a, err)
		}
		_ = ln.Close()
	}

	schedDone := make(chan error, 1)
	go func() { schedDone <- runScheduler(schedCtx, sched, nil) }()
	if err, exited := waitForListener(ctx, dc.addr, schedDone); err != nil {
		stopSched()
		if !exited {
			<-schedDone
		}
		return err
	}

	// A worker that fails (say, its port was taken meanwhile) stops the
	// whole cluster, rather than leaving half of it running.
	ctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	var names []string
	for i, name := range workerNames {
		w := defaultWorkerConfig()
		names = append(names, name+" "+net.JoinHostPort(host, strconv.Itoa(dc.workerPort+i)))
		w.GRPCServer = tlsFor(identity.Principal{Role: identity.RoleWorker, Name: name}, net.JoinHostPort(host, strconv.Itoa(dc.workerPort+i)))
		w.Scheduler.Addr = dc.addr
		w.Worker.Name = name
		w.Worker.DataDir = filepath.Join(dc.dataDir, name)
		w.Worker.ScriptsDir = dc.scriptsDir
		w.Worker.Labels = map[string]string{"slot": strconv.Itoa(i + 1)}
		w.Worker.StopGrace = Duration(5 * time.Second)
		w.Log = sched.Log
		w.sharesProcess = true
		if err := w.validate(); err != nil {
			return err
		}
		wg.Go(func() {
			if errs[i] = runWorker(ctx, w); errs[i] != nil {
				stopWorkers()
			}
		})
	}

	certDir := filepath.Dir(caFile)
	fmt.Printf(`Baton dev cluster is running.
  web page   http://%[2]s/   workers, jobs and live output in the browser
  scheduler  https://%[1]s   mutual TLS: gRPC, gRPC-Web and Connect JSON
  http api   http://%[2]s    plain HTTP on loopback, no tokens: every caller is an anonymous admin
  workers    %[3]s, %[4]s
  certs      %[5]s   (ca.crt, admin-dev.crt/.key for clients)
  data       %[6]s
Try:
  go run ./cmd/baton run -- bash count.sh
  curl -s -H 'Content-Type: application/json' -d '{"command":"bash","path":"count.sh"}' http://%[2]s/baton.v1.SchedulerService/StartJob
  curl -s --cacert %[5]s/ca.crt --cert %[5]s/admin-dev.crt --key %[5]s/admin-dev.key -H 'Content-Type: application/json' -d '{}' https://%[1]s/baton.v1.SchedulerService/ListWorkers
Press Ctrl-C to stop.
`, dc.addr, dc.httpAddr, names[0], names[1], certDir, dc.dataDir)

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
