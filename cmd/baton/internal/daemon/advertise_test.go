package daemon

import (
	"net"
	"strings"
	"testing"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// TestAdvertiseAddr: a worker listening on every address advertises the
// address it reaches its scheduler from, never its hostname; a loopback
// address the scheduler could not dial is a start-up error.
func TestAdvertiseAddr(t *testing.T) {
	t.Parallel()
	ip := e2e.NonLoopbackIPv4(t)
	sched := net.JoinHostPort(ip, "7070")
	tests := []struct {
		listen, scheduler, want, err string
	}{
		{"0.0.0.0:7071", sched, net.JoinHostPort(ip, "7071"), ""},
		{"0.0.0.0:7071", "https://" + sched, net.JoinHostPort(ip, "7071"), ""},
		{"[::]:7071", "127.0.0.1:7070", "127.0.0.1:7071", ""},
		{":7071", "127.0.0.1:7070", "127.0.0.1:7071", ""},
		{"127.0.0.1:7071", "127.0.0.1:7070", "127.0.0.1:7071", ""},
		{"0.0.0.0:7071", sched + ",127.0.0.1:7070", net.JoinHostPort(ip, "7071"), ""},
		{"127.0.0.1:7071", sched + ",127.0.0.1:7070", "", "loopback"},
		{ip + ":7071", sched, net.JoinHostPort(ip, "7071"), ""},
		{"127.0.0.1:7071", sched, "", "loopback"},
		{"localhost:7071", sched, "", "loopback"},
	}
	for _, tc := range tests {
		got, err := AdvertiseAddr(tc.listen, tc.scheduler)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "worker.advertise_addr")):
			t.Errorf("AdvertiseAddr(%q, %q) = %q, %v; want an error about %s", tc.listen, tc.scheduler, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("AdvertiseAddr(%q, %q) = %q, %v; want %q", tc.listen, tc.scheduler, got, err, tc.want)
		}
	}
	// Without a scheduler the hostname stands for every address.
	if got, err := AdvertiseAddr("0.0.0.0:7071", ""); err != nil || strings.HasPrefix(got, "0.0.0.0") {
		t.Errorf("without a scheduler: %q, %v", got, err)
	}
}
