package serving_test

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/serving"
)

// TestReflectionListsEveryService asks reflection what a server serves, as
// grpcurl does, over v1 and over v1alpha (all that grpcurl before 1.8.8
// and other older clients know): the answer names the application service
// and the health and reflection services beside it, and each one's schema
// can be fetched (grpcurl describe).
func TestReflectionListsEveryService(t *testing.T) {
	t.Parallel()
	ts := startServer(t, serving.Limits{}, 0, nil)
	want := []protoreflect.FullName{
		batonv1connect.WorkerServiceName,
		grpchealth.HealthV1ServiceName,
		grpcreflect.ReflectV1ServiceName,
		grpcreflect.ReflectV1AlphaServiceName,
	}
	slices.Sort(want)
	tests := []struct {
		name string
		// hide is the path prefix answered 404, as a server without it
		// would: the client then falls back to the other version.
		hide string
	}{
		{"v1", ""},
		{"v1alpha", "/" + grpcreflect.ReflectV1ServiceName + "/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hc := serving.NewHTTPClient(nil)
			t.Cleanup(hc.CloseIdleConnections)
			hidden := &hidingClient{next: hc, prefix: tt.hide}
			client := grpcreflect.NewClient(hidden, ts.url, connect.WithGRPC())
			stream := client.NewStream(t.Context())
			t.Cleanup(func() { _, _ = stream.Close() })

			got, err := stream.ListServices()
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("reflection lists %v, want %v", got, want)
			}
			for _, name := range want {
				files, err := stream.FileContainingSymbol(name)
				if err != nil || len(files) == 0 {
					t.Errorf("schema of %s: %d files, %v", name, len(files), err)
				}
			}
			wantPath := "/grpc.reflection." + tt.name + ".ServerReflection/"
			if asked := hidden.paths(); !slices.ContainsFunc(asked, func(p string) bool { return strings.HasPrefix(p, wantPath) }) {
				t.Errorf("no request reached %s; requests: %v", wantPath, asked)
			}
		})
	}
}

// hidingClient answers 404 itself for paths under prefix (none if prefix
// is empty), passes the rest to next, and records every path it is asked
// for. Safe for concurrent use.
type hidingClient struct {
	next   *http.Client
	prefix string

	mu    sync.Mutex
	asked []string
}

func (c *hidingClient) Do(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.asked = append(c.asked, req.URL.Path)
	c.mu.Unlock()
	if c.prefix == "" || !strings.HasPrefix(req.URL.Path, c.prefix) {
		return c.next.Do(req)
	}
	return &http.Response{
		Status:     "404 Not Found",
		StatusCode: http.StatusNotFound,
		Proto:      "HTTP/2.0",
		ProtoMajor: 2,
		Header:     http.Header{},
		Body:       http.NoBody,
		Request:    req,
	}, nil
}

// paths returns the paths asked for so far.
func (c *hidingClient) paths() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.asked)
}
