package serving_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/baton-run/baton/services/serving"
)

// TestLateFirstByte: a client that connects and writes its first bytes
// only after ReadHeaderTimeout (a process short of CPU between its connect
// and its first write, a browser's preconnect) is served over every
// transport, since the timeout counts from the first byte. Peers that
// start and then stall are still cut (TestSlowloris).
func TestLateFirstByte(t *testing.T) {
	t.Parallel()
	const readHeaderTimeout = time.Second
	limits := serving.Limits{ReadHeaderTimeout: readHeaderTimeout}
	plain := startServer(t, limits, time.Hour, nil)
	cert, pool := serving.SelfSigned(t)
	secure := startServer(t, limits, time.Hour, &tls.Config{Certificates: []tls.Certificate{cert}})

	// lateDial connects, then keeps the client from writing for twice
	// ReadHeaderTimeout.
	lateDial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		select {
		case <-time.After(2 * readHeaderTimeout):
			return conn, nil
		case <-ctx.Done():
			_ = conn.Close()
			return nil, ctx.Err()
		}
	}
	http1 := func() *http.Client {
		var p http.Protocols
		p.SetHTTP1(true)
		return &http.Client{Transport: &http.Transport{Protocols: &p}}
	}
	tests := []struct {
		name   string
		server *testServer
		client *http.Client
		opts   []connect.ClientOption
	}{
		{"http1", plain, http1(), nil},
		{"h2c", plain, serving.NewHTTPClient(nil), []connect.ClientOption{connect.WithGRPC()}},
		{"tls", secure, serving.NewHTTPClient(&tls.Config{RootCAs: pool}), []connect.ClientOption{connect.WithGRPC()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tr := tt.client.Transport.(*http.Transport)
			tr.DialContext = lateDial
			t.Cleanup(tr.CloseIdleConnections)
			if err := queryJob(t.Context(), tt.server.client(t, tt.client, tt.opts...), uuid.NewString()); err != nil {
				t.Fatalf("a call whose first bytes came after ReadHeaderTimeout: %v", err)
			}
		})
	}
}
