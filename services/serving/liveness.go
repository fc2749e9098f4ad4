package serving

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// HTTP/2 keepalive, for servers and clients alike: a PING goes out on a
// connection that has read nothing for pingAfter, and the connection is
// closed when the answer takes longer than pingAckTimeout. The peer's Go
// runtime answers a PING, not its kernel, so a live peer short of CPU
// answers late and the wait is long (README, Operations); a peer that is
// gone is still found within pingAfter + pingAckTimeout.
const (
	pingAfter      = 15 * time.Second
	pingAckTimeout = time.Minute
)

// listenTCP listens on addr with TCP_DEFER_ACCEPT (tcp(7)): the kernel
// hands a connection over only once its first bytes have arrived, or once
// it has stayed silent for about silence. ReadHeaderTimeout thus counts
// from the peer's first byte rather than from its connect, so a client
// slow to write its first bytes (a TLS ClientHello, the h2c preface) is
// not cut as a slowloris peer. A connection that has not spoken yet costs
// the process nothing: no descriptor, no goroutine.
func listenTCP(addr string, silence time.Duration) (net.Listener, error) {
	secs := max(int(silence/time.Second), 1)
	lc := net.ListenConfig{
		Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			if cerr := c.Control(func(fd uintptr) {
				err = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, secs)
			}); cerr != nil {
				return cerr
			}
			if err != nil {
				return fmt.Errorf("set TCP_DEFER_ACCEPT: %w", err)
			}
			return nil
		},
	}
	return lc.Listen(context.Background(), "tcp", addr)
}
