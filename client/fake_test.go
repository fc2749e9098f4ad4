package client_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/baton-run/baton/client"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

// fakeServer serves a SchedulerService handler over h2c on loopback, as
// a scheduler's plain listener does, and can cut every connection it has
// accepted, as a scheduler killed in the middle of a call would.
type fakeServer struct {
	url string

	mu    sync.Mutex
	conns []net.Conn
}

func serveFake(t *testing.T, h batonv1connect.SchedulerServiceHandler) *fakeServer {
	t.Helper()
	_, handler := batonv1connect.NewSchedulerServiceHandler(h)
	srv := httptest.NewUnstartedServer(handler)
	fs := &fakeServer{}
	_ = srv.Listener.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = &trackingListener{Listener: ln, fs: fs}
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	fs.url = srv.URL
	return fs
}

// cut closes every connection accepted so far.
func (fs *fakeServer) cut() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, c := range fs.conns {
		_ = c.Close()
	}
	fs.conns = nil
}

// client returns a Client of the fake, closed when the test ends.
func (fs *fakeServer) client(t *testing.T, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Schedulers: []string{fs.url}}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

type trackingListener struct {
	net.Listener
	fs *fakeServer
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.fs.mu.Lock()
		l.fs.conns = append(l.fs.conns, c)
		l.fs.mu.Unlock()
	}
	return c, err
}
