package keeper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

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

// dial connects to the keeper of dir, and makes sure it runs as this
// process's uid: a socket someone else put there gets no job spec.
func dial(ctx context.Context, dir string) (net.Conn, error) {
	addr, closeDir, err := socketAddr(dir)
	if err != nil {
		return nil, err
	}
	defer closeDir()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		return nil, err
	}
	if uid := peerUID(c.(*net.UnixConn)); uid != os.Geteuid() {
		_ = c.Close()
		return nil, fmt.Errorf("keeper socket: served by uid %d, not this process's %d", uid, os.Geteuid())
	}
	return c, nil
}

// checkDataDir refuses a data directory that is a symlink, is not this
// process's own, or that others may write to: they could plant the
// keeper's socket, lock or log there.
func checkDataDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("keeper: data directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("keeper: data directory %s is not a directory (a symlink?)", dir)
	case !ok || int(st.Uid) != os.Geteuid():
		return fmt.Errorf("keeper: data directory %s belongs to another user", dir)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("keeper: data directory %s is writable by others (mode %v)", dir, fi.Mode().Perm())
	}
	return nil
}

// openOwn opens a file of the data directory without following a symlink.
func openOwn(path string, flag int) (*os.File, error) {
	return os.OpenFile(path, flag|syscall.O_NOFOLLOW, 0o600)
}
