package worker

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/serving"
)

// recordingScheduler is a SchedulerService that admits every worker, tells
// the test when one heartbeats (so it has registered), and hands each
// deregistration it gets to the test.
type recordingScheduler struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	beating chan struct{}
	left    chan *batonv1.DeregisterWorkerRequest
}

func (s *recordingScheduler) RegisterWorker(_ context.Context, req *connect.Request[batonv1.RegisterWorkerRequest]) (*connect.Response[batonv1.RegisterWorkerResponse], error) {
	return connect.NewResponse(&batonv1.RegisterWorkerResponse{WorkerId: req.Msg.GetName(), HeartbeatInterval: durationpb.New(10 * time.Millisecond)}), nil
}

func (s *recordingScheduler) Heartbeat(context.Context, *connect.Request[batonv1.HeartbeatRequest]) (*connect.Response[batonv1.HeartbeatResponse], error) {
	select {
	case s.beating <- struct{}{}:
	default:
	}
	return connect.NewResponse(&batonv1.HeartbeatResponse{State: batonv1.WorkerState_WORKER_STATE_READY}), nil
}

func (s *recordingScheduler) DeregisterWorker(_ context.Context, req *connect.Request[batonv1.DeregisterWorkerRequest]) (*connect.Response[batonv1.DeregisterWorkerResponse], error) {
	s.left <- req.Msg
	return connect.NewResponse(&batonv1.DeregisterWorkerResponse{}), nil
}

// startRecordingScheduler serves a recordingScheduler over h2c on loopback
// and returns it with a generated client.
func startRecordingScheduler(t *testing.T) (*recordingScheduler, batonv1connect.SchedulerServiceClient) {
	t.Helper()
	s := &recordingScheduler{beating: make(chan struct{}, 1), left: make(chan *batonv1.DeregisterWorkerRequest, 1)}
	_, h := batonv1connect.NewSchedulerServiceHandler(s)
	srv, err := serving.Listen("127.0.0.1:0", h, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	client := serving.NewHTTPClient(nil)
	t.Cleanup(func() {
		client.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	return s, batonv1connect.NewSchedulerServiceClient(client, "http://"+srv.Addr().String())
}

// TestLeaveForRestart: the deregistration Run sends when its context ends
// says restarting only after LeaveForRestart.
func TestLeaveForRestart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		restart bool
	}{
		{"shutdown", false},
		{"restart", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sched, client := startRecordingScheduler(t)
			w := startWorker(t, nil, func(o *Options) {
				o.Address = "127.0.0.1:1"
				o.Scheduler = client
			})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			runDone := make(chan error, 1)
			go func() { runDone <- w.Run(ctx) }()
			select {
			case <-sched.beating:
			case <-time.After(20 * time.Second):
				t.Fatal("the worker never registered")
			}
			if tc.restart {
				w.LeaveForRestart()
			}
			cancel()
			select {
			case req := <-sched.left:
				if req.GetWorkerId() != "test-worker" || req.GetRestarting() != tc.restart {
					t.Errorf("deregistration %v, want worker test-worker restarting %v", req, tc.restart)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the worker never deregistered")
			}
			if err := <-runDone; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}
