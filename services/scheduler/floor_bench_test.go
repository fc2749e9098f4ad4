package scheduler_test

import (
	"context"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/serving"
)

// BenchmarkTwoHopFloor is the floor of the fast path's medium on this
// machine: a client's RunJob to a "scheduler" that relays it to a
// "worker's" RunJob, both over mutual TLS on loopback with the generated
// clients and handlers, where the worker runs the job with a bare os/exec
// and the scheduler keeps nothing: no store, no placement, no journal, no
// cgroup, no interceptors. Against os/exec alone, in turns in the same
// run. Whatever Baton does on top of this costs more; a target below this
// ratio cannot be met over this transport here.
func BenchmarkTwoHopFloor(b *testing.B) {
	b.Run("clients=1", func(b *testing.B) { twoHopFloor(b, 1) })
	b.Run("clients=16", func(b *testing.B) { twoHopFloor(b, 16) })
}

// twoHopFloor reports, for one client, the p50 of a run against os/exec's;
// for more, the jobs a second they complete together against os/exec's
// at the same concurrency.
func twoHopFloor(b *testing.B, clients int) {
	path, err := exec.LookPath("true")
	if err != nil {
		b.Skip("no true(1)")
	}
	ca, err := identity.NewAuthority("floor")
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if _, _, err := identity.WriteKeyPair(dir, "ca", ca.CertPEM(), must(ca.KeyPEM())); err != nil {
		b.Fatal(err)
	}
	creds := func(p identity.Principal) *identity.Credentials {
		crt, key, err := ca.Issue(p, identity.IssueOptions{Hosts: []string{"localhost", "127.0.0.1"}})
		if err != nil {
			b.Fatal(err)
		}
		certFile, keyFile, err := identity.WriteKeyPair(dir, identity.FileBase(p), crt, key)
		if err != nil {
			b.Fatal(err)
		}
		c, err := identity.LoadCredentials(caFile, certFile, keyFile)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	anyone := func(identity.Principal) error { return nil }
	schedCreds := creds(identity.Scheduler)
	workerCreds := creds(identity.Principal{Role: identity.RoleWorker, Name: "w1"})
	clientCreds := creds(identity.Principal{Role: identity.RoleAdmin, Name: "root"})

	serve := func(h http.Handler, c *identity.Credentials) string {
		srv, err := serving.Listen("127.0.0.1:0", h, c.ServerTLS(), nil)
		if err != nil {
			b.Fatal(err)
		}
		go func() { _ = srv.Serve() }()
		b.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
		return "https://" + srv.Addr().String()
	}
	wpath, wh := batonv1connect.NewWorkerServiceHandler(floorWorker{path: path})
	wmux := http.NewServeMux()
	wmux.Handle(wpath, wh)
	workerURL := serve(wmux, workerCreds)
	toWorker := batonv1connect.NewWorkerServiceClient(serving.NewHTTPClient(schedCreds.ClientTLS(anyone)), workerURL)
	spath, sh := batonv1connect.NewSchedulerServiceHandler(floorScheduler{worker: toWorker})
	smux := http.NewServeMux()
	smux.Handle(spath, sh)
	schedURL := serve(smux, schedCreds)
	client := batonv1connect.NewSchedulerServiceClient(serving.NewHTTPClient(clientCreds.ClientTLS(anyone)), schedURL)

	run := func() {
		stream, err := client.RunJob(context.Background(), connect.NewRequest(&batonv1.RunJobRequest{Job: &batonv1.StartJobRequest{Command: "true"}}))
		if err != nil {
			b.Fatal(err)
		}
		for stream.Receive() {
		}
		if err := stream.Err(); err != nil {
			b.Fatal(err)
		}
		stream.Close()
	}
	for range 20 {
		run() // connections and TLS sessions up
	}
	if clients > 1 {
		throughput := func(fn func()) float64 {
			jobs := make(chan struct{}, b.N)
			for range b.N {
				jobs <- struct{}{}
			}
			close(jobs)
			t0 := time.Now()
			var wg sync.WaitGroup
			for range clients {
				wg.Go(func() {
					for range jobs {
						fn()
					}
				})
			}
			wg.Wait()
			return float64(b.N) / time.Since(t0).Seconds()
		}
		b.ResetTimer()
		var hopRate, execRate []float64
		for turn := range 4 {
			if turn%2 == 0 {
				hopRate = append(hopRate, throughput(run))
			} else {
				execRate = append(execRate, throughput(func() { _ = exec.Command(path).Run() }))
			}
		}
		b.StopTimer()
		h, e := (hopRate[0]+hopRate[1])/2, (execRate[0]+execRate[1])/2
		b.ReportMetric(h, "two-hop-jobs/s")
		b.ReportMetric(e, "exec-jobs/s")
		b.ReportMetric(h/e, "ratio")
		return
	}
	var hops, bare []time.Duration
	b.ResetTimer()
	for i := range b.N {
		for turn := range 2 {
			t0 := time.Now()
			if (i+turn)%2 == 0 {
				run()
				hops = append(hops, time.Since(t0))
			} else {
				if err := exec.Command(path).Run(); err != nil {
					b.Fatal(err)
				}
				bare = append(bare, time.Since(t0))
			}
		}
	}
	b.StopTimer()
	slices.Sort(hops)
	slices.Sort(bare)
	p50 := func(d []time.Duration) float64 { return float64(d[len(d)/2].Microseconds()) / 1000 }
	b.ReportMetric(p50(hops), "two-hop-p50-ms")
	b.ReportMetric(p50(bare), "exec-p50-ms")
	b.ReportMetric(p50(hops)/p50(bare), "ratio")
}

// floorWorker runs each job with os/exec and says so: started, then the
// final status.
type floorWorker struct {
	batonv1connect.UnimplementedWorkerServiceHandler
	path string
}

func (w floorWorker) RunJob(_ context.Context, _ *connect.Request[batonv1.WorkerServiceRunJobRequest], stream *connect.ServerStream[batonv1.WorkerServiceRunJobResponse]) error {
	cmd := exec.Command(w.path)
	if err := cmd.Start(); err != nil {
		return err
	}
	running := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING}
	if err := stream.Send(&batonv1.WorkerServiceRunJobResponse{Event: &batonv1.WorkerServiceRunJobResponse_Started{Started: running}}); err != nil {
		return err
	}
	_ = cmd.Wait()
	done := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_SUCCEEDED}
	return stream.Send(&batonv1.WorkerServiceRunJobResponse{Event: &batonv1.WorkerServiceRunJobResponse_Status{Status: done}})
}

// floorScheduler relays a RunJob to its one worker, message for message.
type floorScheduler struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	worker batonv1connect.WorkerServiceClient
}

func (s floorScheduler) RunJob(ctx context.Context, req *connect.Request[batonv1.RunJobRequest], stream *connect.ServerStream[batonv1.RunJobResponse]) error {
	ws, err := s.worker.RunJob(ctx, connect.NewRequest(&batonv1.WorkerServiceRunJobRequest{Job: &batonv1.WorkerServiceStartJobRequest{Command: req.Msg.GetJob().GetCommand()}}))
	if err != nil {
		return err
	}
	defer ws.Close()
	for ws.Receive() {
		msg := &batonv1.RunJobResponse{}
		switch {
		case ws.Msg().GetStarted() != nil:
			msg.Event = &batonv1.RunJobResponse_Started{Started: ws.Msg().GetStarted()}
		case ws.Msg().GetStatus() != nil:
			msg.Event = &batonv1.RunJobResponse_Status{Status: ws.Msg().GetStatus()}
		default:
			continue
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	return ws.Err()
}
