package serving

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// lockedBuffer is a log destination safe for the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines(substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

// TestRefusedHandshakesAreLoggedOnceWithTheirReason: a client without a
// certificate, three times over, gives one warning naming the peer and the
// same reason; plain HTTP to the TLS port gives its own.
func TestRefusedHandshakesAreLoggedOnceWithTheirReason(t *testing.T) {
	t.Parallel()
	cert, pool := selfSigned(t)
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv, err := Listen("127.0.0.1:0", http.NotFoundHandler(), conf, logger)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	url := "https://" + srv.Addr().String() + "/"
	for range 3 {
		c := NewHTTPClient(&tls.Config{RootCAs: pool})
		if _, err := c.Get(url); err == nil {
			t.Fatal("a client without a certificate was served")
		}
		c.CloseIdleConnections()
	}
	wait := func(substr string) []string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if l := logs.lines(substr); len(l) > 0 || time.Now().After(deadline) {
				return l
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	got := wait("refused a TLS handshake")
	if len(got) != 1 || !strings.Contains(got[0], "sent no certificate") || !strings.Contains(got[0], "peer=127.0.0.1:") {
		t.Fatalf("three refused handshakes from one peer logged as %q; want one line with the peer and the reason", got)
	}
	if r := handshakeReason("remote error: tls: certificate required"); r != handshakeReason("tls: client didn't provide a certificate") {
		t.Errorf("one cause, two reasons: %q", r)
	}
	if r := handshakeReason("tls: first record does not look like a TLS handshake"); !strings.Contains(r, "plain HTTP") {
		t.Errorf("plain HTTP to a TLS port reads as %q", r)
	}
}

func TestHandshakeLogForgetsAfterAMinute(t *testing.T) {
	t.Parallel()
	logs := &lockedBuffer{}
	h := newHandshakeLog(slog.New(slog.NewTextHandler(logs, nil)))
	now := time.Unix(1000, 0)
	h.now = func() time.Time { return now }
	line := []byte("http: TLS handshake error from 10.0.0.9:5555: tls: client didn't provide a certificate\n")
	for range 5 {
		_, _ = h.Write(line)
	}
	now = now.Add(handshakeLogEvery)
	_, _ = h.Write(line)
	got := logs.lines("refused a TLS handshake")
	if len(got) != 2 || !strings.Contains(got[1], "refused_since_last_logged=4") {
		t.Fatalf("logged %q; want the first and, a minute later, one saying 4 were not logged", got)
	}
}

// TestHandshakeLogBoundsWhatPeersSay: a peer that offers a huge list of
// protocols, or bytes that are not UTF-8, gets a bounded, valid line; a
// flood of peers does not grow the rate limit's memory past its bound.
func TestHandshakeLogBoundsWhatPeersSay(t *testing.T) {
	t.Parallel()
	logs := &lockedBuffer{}
	h := newHandshakeLog(slog.New(slog.NewTextHandler(logs, nil)))
	huge := "http: TLS handshake error from 10.0.0.7:5555: tls: client requested unsupported application protocols ([" +
		strings.Repeat("\xff\"x\" ", 50000) + "])\n"
	_, _ = h.Write([]byte(huge))
	got := logs.lines("refused a TLS handshake")
	if len(got) != 1 || len(got[0]) > 2*maxHandshakeLine || !utf8.ValidString(got[0]) {
		t.Fatalf("logged %d lines, the first %d bytes (valid UTF-8: %v)", len(got), len(got[0]), utf8.ValidString(got[0]))
	}
	for i := range 3 * maxHandshakePeers {
		_, _ = h.Write(fmt.Appendf(nil, "http: TLS handshake error from [2001:db8::%x]:443: EOF\n", i))
		if n := len(h.last); n > maxHandshakePeers+1 {
			t.Fatalf("remembers %d peers after %d, want at most %d", n, i+1, maxHandshakePeers+1)
		}
	}
}
