package serving

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzLocalOnly feeds the guard Host and Origin values an attacker
// controls and checks, with net/url as the independent parser, that what
// it lets through names this machine: a loopback address, localhost or the
// allowed name, and an Origin of that same host.
func FuzzLocalOnly(f *testing.F) {
	for _, seed := range [][2]string{
		{"127.0.0.1:7080", ""},
		{"127.0.0.1:7080", "http://127.0.0.1:7080"},
		{"localhost", "http://localhost"},
		{"[::1]:7080", "http://[::1]:7080"},
		{"[::ffff:127.0.0.1]:1", ""},
		{"baton.internal:7080", "http://baton.internal:7080"},
		{"attacker.example:7080", "http://attacker.example:7080"},
		{"127.0.0.1:7080", "http://attacker.example:7080"},
		{"127.0.0.1:7080@attacker.example", ""},
		{"127.0.0.1:7080", "http://127.0.0.1:7080@attacker.example"},
		{"[::1%25lo]:7080", ""},
		{"10.1.2.3:7080", ""},
		{"10.1.2.3:7080", "null"},
		{"[127.0.0.1]", ""},
	} {
		f.Add(seed[0], seed[1])
	}
	g := &localOnly{allowed: map[string]bool{"baton.internal": true}}
	f.Fuzz(func(t *testing.T, host, origin string) {
		r := &http.Request{Host: host, Header: http.Header{}}
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		if status, _ := g.check(r); status != 0 {
			return
		}
		u, err := url.Parse("http://" + host + "/")
		if err != nil || u.User != nil || u.Path != "/" {
			t.Fatalf("let Host %q through; net/url reads it as %v, %v", host, u, err)
		}
		name := u.Hostname()
		ip := net.ParseIP(name)
		if !strings.EqualFold(name, "localhost") && !strings.EqualFold(name, "baton.internal") && (ip == nil || !ip.IsLoopback()) {
			t.Fatalf("let Host %q (%q) through", host, name)
		}
		if origin == "" {
			return
		}
		o, err := url.Parse(origin)
		if err != nil || o.Scheme != "http" || !strings.EqualFold(o.Hostname(), name) {
			t.Fatalf("let Origin %q through for Host %q", origin, host)
		}
	})
}
