package serving_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/baton-run/baton/services/serving"
)

// guarded starts a listener serving a handler that counts the requests
// reaching it, and returns its address and the counter.
func guarded(t *testing.T, tlsConf *tls.Config, opts ...serving.Option) (string, *atomic.Int64) {
	t.Helper()
	var reached atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		reached.Add(1)
		_, _ = io.WriteString(w, "served")
	})
	srv, err := serving.Listen("127.0.0.1:0", h, tlsConf, nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv.Addr().String(), &reached
}

// send makes a POST to base with the given Host and Origin headers (none
// when empty) and returns the status and body.
func send(t *testing.T, client *http.Client, base, host string, origins ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/baton.v1.SchedulerService/StartJob", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for _, o := range origins {
		req.Header.Add("Origin", o)
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(body)
}

// TestPlaintextListenerAnswersOnlyItsOwnHost plays a DNS rebinding attack
// and a cross-site request against a plaintext listener, over HTTP/1.1
// and h2c: a page whose name now points at 127.0.0.1 sends its own name as
// Host and Origin; another local page sends its origin with a loopback
// Host. Neither reaches the handler. Loopback names, configured names and
// clients without Origin do.
func TestPlaintextListenerAnswersOnlyItsOwnHost(t *testing.T) {
	t.Parallel()
	addr, reached := guarded(t, nil, serving.WithAllowedHosts("baton.internal", "10.9.8.7", "fd00::1"))
	_, port, _ := strings.Cut(addr, ":")
	tests := []struct {
		name    string
		host    string
		origins []string
		want    int
	}{
		{"rebound name with its origin", "attacker.example:" + port, []string{"http://attacker.example:" + port}, http.StatusMisdirectedRequest},
		{"rebound name without origin", "attacker.example:" + port, nil, http.StatusMisdirectedRequest},
		{"rebound name on the default port", "attacker.example", []string{"http://attacker.example"}, http.StatusMisdirectedRequest},
		{"name ending in localhost", "localhost.attacker.example:" + port, nil, http.StatusMisdirectedRequest},
		{"subdomain of an allowed name", "x.baton.internal:" + port, nil, http.StatusMisdirectedRequest},
		{"address that is not loopback", "10.1.2.3:7080", nil, http.StatusMisdirectedRequest},
		{"unspecified address", "0.0.0.0:" + port, nil, http.StatusMisdirectedRequest},
		{"IPv6 address that is not loopback", "[2001:db8::1]:" + port, nil, http.StatusMisdirectedRequest},
		{"malformed port", "127.0.0.1:80x", nil, http.StatusMisdirectedRequest},
		{"loopback host, foreign origin", "127.0.0.1:" + port, []string{"http://attacker.example:" + port}, http.StatusForbidden},
		{"loopback host, another local port's origin", "127.0.0.1:" + port, []string{"http://127.0.0.1:1"}, http.StatusForbidden},
		{"loopback host, other loopback name's origin", "127.0.0.1:" + port, []string{"http://localhost:" + port}, http.StatusForbidden},
		{"loopback host, https origin", "127.0.0.1:" + port, []string{"https://127.0.0.1:" + port}, http.StatusForbidden},
		{"loopback host, null origin", "127.0.0.1:" + port, []string{"null"}, http.StatusForbidden},
		{"loopback host, origin with a path", "127.0.0.1:" + port, []string{"http://127.0.0.1:" + port + "/x"}, http.StatusForbidden},
		{"loopback host, two origins", "127.0.0.1:" + port, []string{"http://127.0.0.1:" + port, "http://attacker.example"}, http.StatusForbidden},
		{"allowed name, foreign origin", "baton.internal:" + port, []string{"http://attacker.example:" + port}, http.StatusForbidden},

		{"127.0.0.1 without origin", "127.0.0.1:" + port, nil, http.StatusOK},
		{"127.0.0.1 with its own origin", "127.0.0.1:" + port, []string{"http://127.0.0.1:" + port}, http.StatusOK},
		{"other 127/8 address", "127.1.2.3:" + port, nil, http.StatusOK},
		{"localhost", "localhost:" + port, nil, http.StatusOK},
		{"LOCALHOST with its own origin", "LOCALHOST:" + port, []string{"http://localhost:" + port}, http.StatusOK},
		{"localhost without port", "localhost", []string{"http://localhost"}, http.StatusOK},
		{"IPv6 loopback", "[::1]:" + port, []string{"http://[::1]:" + port}, http.StatusOK},
		{"allowed name", "baton.internal:" + port, nil, http.StatusOK},
		{"allowed name in capitals, own origin", "Baton.Internal:" + port, []string{"http://baton.internal:" + port}, http.StatusOK},
		{"allowed name on another port", "baton.internal:8443", nil, http.StatusOK},
		{"allowed IPv4 address", "10.9.8.7:" + port, nil, http.StatusOK},
		{"allowed IPv6 address, other spelling", "[fd00:0::1]:" + port, nil, http.StatusOK},
	}
	clients := []struct {
		name   string
		client *http.Client
	}{
		{"http1", &http.Client{Transport: &http.Transport{}}},
		{"h2c", serving.NewHTTPClient(nil)},
	}
	for _, c := range clients {
		t.Cleanup(c.client.CloseIdleConnections)
	}
	// The cases run one after the other, so that the counter tells
	// whether this request reached the handler.
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, c := range clients {
				before := reached.Load()
				code, body := send(t, c.client, "http://"+addr, tt.host, tt.origins...)
				if code != tt.want {
					t.Errorf("%s: HTTP %d %q, want %d", c.name, code, body, tt.want)
				}
				wantReached := int64(0)
				if tt.want == http.StatusOK {
					wantReached = 1
				}
				if got := reached.Load() - before; got != wantReached {
					t.Errorf("%s: the handler ran %d times, want %d", c.name, got, wantReached)
				}
				if tt.want != http.StatusOK && strings.Contains(body, "attacker") {
					t.Errorf("%s: refusal body %q echoes the request", c.name, body)
				}
			}
		})
	}
}

// TestTLSListenerTakesNoHostList: the guard is for plaintext listeners. A
// TLS listener answers whatever name its certificate gets a client to
// accept, and refuses an allowed-hosts list rather than ignore it.
func TestTLSListenerTakesNoHostList(t *testing.T) {
	t.Parallel()
	cert, pool := serving.SelfSigned(t)
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}}
	if _, err := serving.Listen("127.0.0.1:0", http.NotFoundHandler(), tlsConf, nil, serving.WithAllowedHosts("baton.internal")); err == nil {
		t.Error("a TLS listener took allowed hosts")
	}
	addr, _ := guarded(t, tlsConf)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	t.Cleanup(client.CloseIdleConnections)
	if code, body := send(t, client, "https://"+addr, "sched.example.net", "https://sched.example.net"); code != http.StatusOK {
		t.Errorf("TLS listener with its public name: HTTP %d %q", code, body)
	}
}

func TestCheckAllowedHosts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		hosts []string
		ok    bool
	}{
		{"none", nil, true},
		{"DNS names", []string{"baton.internal", "Sched-1.example.net", "dev_box"}, true},
		{"IP addresses", []string{"10.1.2.3", "fd00::1", "[fd00::2]"}, true},
		{"with port", []string{"baton.internal:7080"}, false},
		{"with scheme", []string{"http://baton.internal"}, false},
		{"wildcard", []string{"*.example.net"}, false},
		{"everything", []string{"*"}, false},
		{"empty", []string{""}, false},
		{"space", []string{"baton internal"}, false},
		{"too long", []string{strings.Repeat("a", 254)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := serving.CheckAllowedHosts(tt.hosts); (err == nil) != tt.ok {
				t.Errorf("CheckAllowedHosts(%q) = %v, want ok=%v", tt.hosts, err, tt.ok)
			}
			srv, err := serving.Listen("127.0.0.1:0", http.NotFoundHandler(), nil, nil, serving.WithAllowedHosts(tt.hosts...))
			if err == nil {
				done := make(chan error, 1)
				go func() { done <- srv.Serve() }()
				_ = srv.Shutdown(t.Context())
				<-done
			}
			if (err == nil) != tt.ok {
				t.Errorf("Listen with allowed hosts %q: %v, want ok=%v", tt.hosts, err, tt.ok)
			}
		})
	}
}
