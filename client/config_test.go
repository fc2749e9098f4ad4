package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/client"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

func TestBaseURLs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		c       client.Config
		want    []string
		wantErr string
	}{
		{"h2c URL", client.Config{Schedulers: []string{"http://127.0.0.1:7070"}}, []string{"http://127.0.0.1:7070"}, ""},
		{"host:port is h2c", client.Config{Schedulers: []string{"sched:7070"}}, []string{"http://sched:7070"}, ""},
		{"host:port with a CA is TLS", client.Config{Schedulers: []string{"sched:7070"}, CAFile: "ca.pem"}, []string{"https://sched:7070"}, ""},
		{"https URL", client.Config{Schedulers: []string{"https://sched.example:443/"}}, []string{"https://sched.example:443"}, ""},
		{"replicas", client.Config{Schedulers: []string{"https://a:7070", "b:7070"}, CAFile: "ca.pem"}, []string{"https://a:7070", "https://b:7070"}, ""},
		{"http URL with a certificate", client.Config{Schedulers: []string{"http://sched:7070"}, CertFile: "c.pem"}, nil, "use https://"},
		{"other scheme", client.Config{Schedulers: []string{"ftp://sched:21"}}, nil, "http (h2c) or https"},
		{"no port", client.Config{Schedulers: []string{"sched"}}, nil, "host:port"},
		{"a bad replica", client.Config{Schedulers: []string{"a:7070", "b"}}, nil, `"b"`},
		{"mixed schemes", client.Config{Schedulers: []string{"http://a:7070", "https://b:7070"}}, nil, "same scheme"},
		{"empty", client.Config{}, nil, "empty"},
		{"empty address", client.Config{Schedulers: []string{" "}}, nil, "empty"},
		{"a comma-separated list", client.Config{Schedulers: []string{"a:7070, http://b:7070"}}, []string{"http://a:7070", "http://b:7070"}, ""},
		{"lists and elements", client.Config{Schedulers: []string{"a:7070,b:7070", "c:7070"}}, []string{"http://a:7070", "http://b:7070", "http://c:7070"}, ""},
		{"an empty member", client.Config{Schedulers: []string{"a:7070,,c:7070"}}, nil, "address 2 of 3 is empty"},
		{"a trailing comma", client.Config{Schedulers: []string{"a:7070,"}}, nil, "address 2 of 2 is empty"},
		{"mixed schemes in a list", client.Config{Schedulers: []string{"https://a:7070,http://b:7070"}}, nil, "same scheme"},
		{"host:port and https without TLS", client.Config{Schedulers: []string{"a:7070,https://b:7070"}}, nil, "same scheme"},
		{"different paths", client.Config{Schedulers: []string{"https://a:7070/baton,https://b:7070"}}, nil, "same path"},
	}
	for _, tt := range tests {
		got, err := tt.c.BaseURLs()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error %v, want one saying %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("%s: %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

// tokenRecorder is a scheduler that records the Authorization header of
// each call.
type tokenRecorder struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	mu   sync.Mutex
	seen []string
}

func (r *tokenRecorder) record(h http.Header) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, h.Get("Authorization"))
}

func (r *tokenRecorder) headers() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

func (r *tokenRecorder) QueryJob(_ context.Context, req *connect.Request[batonv1.QueryJobRequest]) (*connect.Response[batonv1.QueryJobResponse], error) {
	r.record(req.Header())
	return connect.NewResponse(&batonv1.QueryJobResponse{Status: &batonv1.JobStatus{}}), nil
}

func (r *tokenRecorder) StreamJobOutput(_ context.Context, req *connect.Request[batonv1.StreamJobOutputRequest], stream *connect.ServerStream[batonv1.StreamJobOutputResponse]) error {
	r.record(req.Header())
	return stream.Send(outEnd(&batonv1.JobStatus{}))
}

// TestBearerToken: the token goes on unary calls and streams alike.
func TestBearerToken(t *testing.T) {
	t.Parallel()
	rec := &tokenRecorder{}
	fs := serveFake(t, rec)
	c, err := client.New(client.Config{Schedulers: []string{fs.url}, Token: " s3cret "})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Query(t.Context(), fakeJobID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Follow(t.Context(), &batonv1.StreamJobOutputRequest{JobId: fakeJobID}, client.Handlers{}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"Bearer s3cret", "Bearer s3cret"}; !slices.Equal(rec.headers(), want) {
		t.Errorf("Authorization headers %q, want %q", rec.headers(), want)
	}
	if _, err := client.New(client.Config{Schedulers: []string{fs.url}, Token: "two words"}); err == nil {
		t.Error("a token with a space was accepted")
	}
}

// TestTokenNeverInCleartext: a token is never sent over h2c to an address
// that is not loopback, a replica's included: New refuses, naming what to
// change, and nothing is dialed: no connection reaches a listener there.
func TestTokenNeverInCleartext(t *testing.T) {
	t.Parallel()
	ip := nonLoopbackIPv4(t)
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted := make(chan string, 100) // remote address of each connection, in order
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c.RemoteAddr().String()
			c.Close()
		}
	}()
	at := l.Addr().String()
	for _, addrs := range [][]string{{at}, {"http://" + at}, {"127.0.0.1:7070", at}} {
		c, err := client.New(client.Config{Schedulers: addrs, Token: "s3cret"})
		if err == nil || !strings.Contains(err.Error(), "cleartext") || !strings.Contains(err.Error(), "https://") {
			t.Errorf("token to %q over h2c: %v", addrs, err)
		}
		if err == nil {
			// Were it accepted, a call is what would carry the token.
			_, _ = c.Query(t.Context(), fakeJobID)
			c.Close()
		}
	}
	// Connections are accepted in the order they arrive: once this one is,
	// any the client made has been too.
	mine, err := net.Dial("tcp", at)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	timeout := time.After(10 * time.Second)
wait:
	for {
		select {
		case from := <-accepted:
			if from == mine.LocalAddr().String() {
				break wait
			}
			t.Errorf("a connection from %s reached the listener at %s; want none", from, at)
		case <-timeout:
			t.Fatalf("the listener did not accept this test's own connection")
		}
	}
	for _, addr := range []string{"127.0.0.1:7070", "localhost:7070", "[::1]:7070", "https://" + at} {
		c, err := client.New(client.Config{Schedulers: []string{addr}, Token: "s3cret"})
		if err != nil {
			t.Errorf("token to %s: %v", addr, err)
			continue
		}
		c.Close()
	}
}

// nonLoopbackIPv4 returns an IPv4 address of this machine that is not
// loopback.
func nonLoopbackIPv4(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	t.Skip("this machine has no IPv4 address but loopback")
	return ""
}

// TestTLSFiles: the CA, certificate and key files are read by New; a key
// others may read, a certificate without its key and a CA file without a
// certificate are refused with what to do.
func TestTLSFiles(t *testing.T) {
	t.Parallel()
	cert, key := writeKeyPair(t, 0o600)
	openCert, openKey := writeKeyPair(t, 0o644)
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		c       client.Config
		wantErr string
	}{
		{"mTLS", client.Config{CAFile: cert, CertFile: cert, KeyFile: key}, ""},
		{"a key others may read", client.Config{CertFile: openCert, KeyFile: openKey}, "readable by others"},
		{"a certificate without its key", client.Config{CAFile: cert, CertFile: cert}, "go together"},
		{"a CA file without a certificate", client.Config{CAFile: notPEM}, "no PEM certificate"},
		{"a missing CA file", client.Config{CAFile: notPEM + ".missing"}, "CA file"},
	}
	for _, tt := range tests {
		tt.c.Schedulers = []string{"127.0.0.1:7070"}
		c, err := client.New(tt.c)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			} else {
				c.Close()
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: error %v, want one saying %q", tt.name, err, tt.wantErr)
		}
	}
	_, err := client.New(client.Config{Schedulers: []string{"127.0.0.1:7070"}, CAFile: cert}, client.WithTLSConfig(&tls.Config{MinVersion: tls.VersionTLS13}))
	if err == nil || !strings.Contains(err.Error(), "WithTLSConfig") {
		t.Errorf("WithTLSConfig with a CA file: %v", err)
	}
}

// writeKeyPair writes a self-signed certificate and its key, the key with
// the given mode.
func writeKeyPair(t *testing.T, keyMode os.FileMode) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "client"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), keyMode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(keyFile, keyMode); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
