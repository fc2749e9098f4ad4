package worker

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/jobrun"
	"github.com/baton-run/baton/services/serving"
)

// protocols are the wire protocols every endpoint must speak.
var protocols = []struct {
	name string
	opts []connect.ClientOption
}{
	{"connect-proto", nil},
	{"connect-json", []connect.ClientOption{connect.WithProtoJSON()}},
	{"grpc", []connect.ClientOption{connect.WithGRPC()}},
	{"grpc-web", []connect.ClientOption{connect.WithGRPCWeb()}},
}

// testWorker is a Worker served over real HTTP/2 (h2c) on loopback.
type testWorker struct {
	*Worker
	url        string
	http       *http.Client
	scriptsDir string
	dataDir    string
}

// startWorker serves a worker with a scripts directory holding scripts
// (name → body, made executable) and returns it with its clients.
func startWorker(t testing.TB, scripts map[string]string, tune func(*Options)) *testWorker {
	t.Helper()
	root := t.TempDir()
	scriptsDir := filepath.Join(root, "scripts")
	dataDir := filepath.Join(root, "data")
	if err := os.MkdirAll(scriptsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(scriptsDir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := Options{
		Name: "test-worker",
		Runner: jobrun.Options{
			DataDir:         dataDir,
			ScriptsDir:      scriptsDir,
			AllowedCommands: []string{"sh", "bash", "true"},
			StopGrace:       500 * time.Millisecond,
		},
	}
	if tune != nil {
		tune(&opts)
	}
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := serving.Listen("127.0.0.1:0", identity.AnonymousHandler(w.Handler()), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	client := serving.NewHTTPClient(nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		client.CloseIdleConnections()
		_ = srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if err := w.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return &testWorker{Worker: w, url: "http://" + srv.Addr().String(), http: client, scriptsDir: scriptsDir, dataDir: dataDir}
}

// client returns a generated WorkerService client speaking one protocol.
func (tw *testWorker) client(opts ...connect.ClientOption) batonv1connect.WorkerServiceClient {
	return batonv1connect.NewWorkerServiceClient(tw.http, tw.url, opts...)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}
