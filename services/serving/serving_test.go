package serving

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

func TestPlaintextOnlyOnLoopback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:0", true},
		{"localhost:0", true},
		{"[::1]:0", true},
		{"0.0.0.0:0", false},
		{":0", false},
		{"[::]:0", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			t.Parallel()
			srv, err := Listen(tt.addr, http.NotFoundHandler(), nil, nil)
			if tt.ok {
				if err != nil {
					// [::1] may be missing on a host without IPv6.
					var opErr *net.OpError
					if errors.As(err, &opErr) {
						t.Skipf("cannot bind %s here: %v", tt.addr, err)
					}
					t.Fatal(err)
				}
				_ = srv.ln.Close()
				return
			}
			if !errors.Is(err, ErrPlaintextNotLoopback) {
				t.Fatalf("Listen(%s) = %v, want ErrPlaintextNotLoopback", tt.addr, err)
			}
		})
	}
}

// selfSigned makes a throwaway server certificate for 127.0.0.1.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestTLSListener: TLS 1.3 only (RELIABILITY.md T3), HTTP/2 negotiated, and
// plaintext to the TLS port reaches no handler (T6).
func TestTLSListener(t *testing.T) {
	t.Parallel()
	cert, pool := selfSigned(t)
	var handled atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handled.Add(1)
		_, _ = w.Write([]byte(r.Proto))
	})
	srv, err := Listen("127.0.0.1:0", h, &tls.Config{Certificates: []tls.Certificate{cert}}, nil)
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

	c := NewHTTPClient(&tls.Config{RootCAs: pool})
	defer c.CloseIdleConnections()
	res, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.ProtoMajor != 2 {
		t.Errorf("negotiated %s, want HTTP/2", res.Proto)
	}

	old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12}}}
	if _, err := old.Get(url); err == nil {
		t.Error("a TLS 1.2 client was served")
	}
	plain := NewHTTPClient(nil)
	if _, err := plain.Get("http://" + srv.Addr().String() + "/"); err == nil {
		t.Error("plaintext HTTP/2 to the TLS port was served")
	}
	if n := handled.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1 (only the TLS 1.3 call)", n)
	}
}

// TestSlowHeadersAreCut is RELIABILITY.md H1 in small: a connection that
// never finishes its request headers is closed after ReadHeaderTimeout.
func TestSlowHeadersAreCut(t *testing.T) {
	t.Parallel()
	srv, err := Listen("127.0.0.1:0", http.NotFoundHandler(), nil, nil)
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
	conn, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	// The server must hang up on its own; the generous bound only keeps a
	// broken server from hanging the test.
	_ = conn.SetReadDeadline(time.Now().Add(DefaultReadHeaderTimeout + 20*time.Second))
	buf := make([]byte, 512)
	for {
		if _, err := conn.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the server kept a connection with unfinished headers open")
			}
			return
		}
	}
}
