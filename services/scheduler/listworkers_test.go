package scheduler_test

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler"
	"github.com/baton-run/baton/services/serving"
)

// TestListWorkersPages lists a roster whole and page by page, over every
// protocol and both codecs: the whole answer is written from the roster
// view's cached bytes, pages are marshalled per call.
func TestListWorkersPages(t *testing.T) {
	t.Parallel()
	// The workers never heartbeat: a long grace keeps them READY (and
	// w-c DRAINING) however slowly a loaded machine runs the test.
	s := startScheduler(t, "", func(o *scheduler.Options) { o.HeartbeatGrace = time.Hour })
	// Registered out of order; listed by name.
	for _, n := range []string{"w-e", "w-a", "w-g", "w-c", "w-b", "w-f", "w-d"} {
		if _, err := s.client.RegisterWorker(t.Context(), connect.NewRequest(&batonv1.RegisterWorkerRequest{
			Name: n, Address: "127.0.0.1:1", Capacity: 1, Labels: map[string]string{"name": n},
		})); err != nil {
			t.Fatalf("RegisterWorker %s: %v", n, err)
		}
	}
	if _, err := s.client.DrainWorker(t.Context(), connect.NewRequest(&batonv1.DrainWorkerRequest{WorkerId: "w-c"})); err != nil {
		t.Fatalf("DrainWorker: %v", err)
	}
	all := []string{"w-a", "w-b", "w-c", "w-d", "w-e", "w-f", "w-g"}

	httpClient := serving.NewHTTPClient(nil)
	t.Cleanup(httpClient.CloseIdleConnections)
	for _, proto := range []struct {
		name string
		opts []connect.ClientOption
	}{
		{"connect", nil},
		{"connect-json", []connect.ClientOption{connect.WithProtoJSON()}},
		{"grpc", []connect.ClientOption{connect.WithGRPC()}},
		{"grpc-web", []connect.ClientOption{connect.WithGRPCWeb()}},
	} {
		t.Run(proto.name, func(t *testing.T) {
			t.Parallel()
			c := batonv1connect.NewSchedulerServiceClient(httpClient, s.url, proto.opts...)
			list := func(req *batonv1.ListWorkersRequest) ([]string, string) {
				t.Helper()
				res, err := c.ListWorkers(t.Context(), connect.NewRequest(req))
				if err != nil {
					t.Fatalf("ListWorkers(%v): %v", req, err)
				}
				var names []string
				for _, w := range res.Msg.GetWorkers() {
					if w.GetLabels()["name"] != w.GetName() {
						t.Errorf("worker %s has labels %v", w.GetName(), w.GetLabels())
					}
					names = append(names, w.GetName())
				}
				return names, res.Msg.GetNextPageToken()
			}

			if got, next := list(&batonv1.ListWorkersRequest{}); !slices.Equal(got, all) || next != "" {
				t.Errorf("whole roster: %v (next page %q), want %v and no next page", got, next, all)
			}
			var paged []string
			var sizes []int
			req := &batonv1.ListWorkersRequest{PageSize: 3}
			for {
				got, next := list(req)
				paged = append(paged, got...)
				sizes = append(sizes, len(got))
				if next == "" {
					break
				}
				if len(sizes) > len(all) {
					t.Fatalf("paging does not end: pages of %v", sizes)
				}
				req.PageToken = next
			}
			if !slices.Equal(paged, all) || !slices.Equal(sizes, []int{3, 3, 1}) {
				t.Errorf("pages of 3: %v in pages of %v, want %v in pages of [3 3 1]", paged, sizes, all)
			}
			ready, next := list(&batonv1.ListWorkersRequest{
				States:   []batonv1.WorkerState{batonv1.WorkerState_WORKER_STATE_DRAINING},
				PageSize: 1,
			})
			if !slices.Equal(ready, []string{"w-c"}) || next != "" {
				t.Errorf("draining, pages of 1: %v (next page %q), want [w-c] and no next page", ready, next)
			}
		})
	}
}

// TestListWorkersBadPage checks the paging fields' errors.
func TestListWorkersBadPage(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", nil)
	for _, tc := range []struct {
		name string
		req  *batonv1.ListWorkersRequest
	}{
		{"negative page size", &batonv1.ListWorkersRequest{PageSize: -1}},
		{"page size over 10000", &batonv1.ListWorkersRequest{PageSize: 10001}},
		{"token not base64url", &batonv1.ListWorkersRequest{PageToken: "a+b/"}},
		{"token too long", &batonv1.ListWorkersRequest{PageToken: strings.Repeat("A", 129)}},
		{"token not a worker name", &batonv1.ListWorkersRequest{PageToken: base64.RawURLEncoding.EncodeToString([]byte("../x"))}},
		{"token not decodable", &batonv1.ListWorkersRequest{PageToken: "A"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := s.client.ListWorkers(t.Context(), connect.NewRequest(tc.req))
			wantCode(t, "ListWorkers", err, connect.CodeInvalidArgument)
		})
	}
}
