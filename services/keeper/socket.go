package keeper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Files of the keeper in the worker's data directory.
const (
	socketName = "keeper.sock"
	lockName   = "keeper.lock"
	logName    = "keeper.log"
)

// maxSocketPath is what fits in sockaddr_un's sun_path with its NUL.
const maxSocketPath = 107

// socketAddr returns a path to dir/keeper.sock short enough for a unix
// socket address. A longer one is reached through an O_PATH descriptor of
// dir (/proc/self/fd/N/keeper.sock); closeDir releases it.
func socketAddr(dir string) (addr string, closeDir func(), err error) {
	path := filepath.Join(dir, socketName)
	if len(path) <= maxSocketPath {
		return path, func() {}, nil
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("keeper socket: %w", err)
	}
	return "/proc/self/fd/" + strconv.Itoa(fd) + "/" + socketName, func() { _ = unix.Close(fd) }, nil
}

// listen serves on dir/keeper.sock, replacing a stale socket file; the
// caller holds the keeper lock, so no live keeper owns it. The socket is
// owner-only, and every connection is checked for the keeper's own uid.
func listen(dir string) (net.Listener, error) {
	addr, closeDir, err := socketAddr(dir)
	if err != nil {
		return nil, err
	}
	defer closeDir()
	if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("keeper socket: %w", err)
	}
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", addr)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("keeper socket: %w", err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // a re-executed keeper serves the same socket
	return &ownerListener{UnixListener: ul, uid: os.Geteuid()}, nil
}

// ownerListener accepts only connections of processes running as uid.
type ownerListener struct {
	*net.UnixListener
	uid int
}

func (l *ownerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		if peerUID(c) == l.uid {
			return c, nil
		}
		_ = c.Close()
	}
}

// peerUID returns the uid of the process at the other end of c, or -1.
func peerUID(c *net.UnixConn) int {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1
	}
	uid := -1
	_ = raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid = int(cred.Uid)
		}
	})
	return uid
}

// dial connects to the keeper of dir.
func dial(ctx context.Context, dir string) (net.Conn, error) {
	addr, closeDir, err := socketAddr(dir)
	if err != nil {
		return nil, err
	}
	defer closeDir()
	var d net.Dialer
	return d.DialContext(ctx, "unix", addr)
}
