package keeper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	keeperv1 "github.com/baton-run/baton/gen/baton/keeper/v1"
	"github.com/baton-run/baton/gen/baton/keeper/v1/keeperv1connect"
)

func absDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("keeper: data directory: %w", err)
	}
	return abs, nil
}

// start starts a keeper for dir from executable, in a session of its own
// (no terminal's signals reach it, and it outlives the worker), with its
// log in dir. A keeper that finds another one holding the lock exits; the
// caller then talks to that one.
func start(dir, executable string, options []byte) error {
	if !filepath.IsAbs(executable) {
		return fmt.Errorf("keeper: the executable %q is not an absolute path", executable)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keeper: data directory: %w", err)
	}
	if err := checkDataDir(dir); err != nil {
		return err
	}
	h, err := json.Marshal(handoff{Executable: executable, Options: options})
	if err != nil {
		return err
	}
	logFile, err := openOwn(filepath.Join(dir, logName), os.O_WRONLY|os.O_APPEND|os.O_CREATE)
	if err != nil {
		return fmt.Errorf("keeper: its log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(executable, "keeper", "--data-dir", dir)
	cmd.Stdin = bytes.NewReader(h)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("keeper: starting %s: %w", executable, err)
	}
	// Reaped here if it ends while this process lives; it is re-parented
	// otherwise.
	go func() { _ = cmd.Wait() }()
	return nil
}

// Stats are a keeper's memory figures.
type Stats struct {
	HeapLiveBytes, RSSBytes int64
	Running                 int
	Pid                     int
}

// ReadStats asks the keeper of dataDir for its figures.
func ReadStats(ctx context.Context, dataDir string) (Stats, error) {
	rpc, done, err := connectTo(dataDir)
	if err != nil {
		return Stats{}, err
	}
	defer done()
	h, err := rpc.Hello(ctx, connect.NewRequest(&keeperv1.HelloRequest{ProtocolVersion: ProtocolVersion}))
	if err != nil {
		return Stats{}, fromConnect(err)
	}
	res, err := rpc.Stats(ctx, connect.NewRequest(&keeperv1.StatsRequest{}))
	if err != nil {
		return Stats{}, fromConnect(err)
	}
	return Stats{HeapLiveBytes: res.Msg.GetHeapLiveBytes(), RSSBytes: res.Msg.GetRssBytes(), Running: int(res.Msg.GetRunning()), Pid: int(h.Msg.GetPid())}, nil
}

// newHTTPClient is an HTTP/2 client of the keeper socket in dir.
func newHTTPClient(dir string) *http.Client {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Protocols: &protocols,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx, dir)
		},
		// Output streams are bulk data: large frames and windows.
		HTTP2: &http.HTTP2Config{
			MaxReadFrameSize:              1 << 20,
			MaxReceiveBufferPerStream:     4 << 20,
			MaxReceiveBufferPerConnection: 16 << 20,
		},
		MaxIdleConnsPerHost: 4,
	}}
}

// connectTo returns a client of the keeper of dataDir.
func connectTo(dataDir string) (keeperv1connect.KeeperServiceClient, func(), error) {
	dir, err := absDir(dataDir)
	if err != nil {
		return nil, nil, err
	}
	hc := newHTTPClient(dir)
	return keeperv1connect.NewKeeperServiceClient(hc, "http://keeper", connect.WithAcceptCompression("gzip", nil, nil)), hc.CloseIdleConnections, nil
}

// Decommission asks the keeper of dataDir to stop every job and end, and
// waits until it has. It returns false if no keeper answers.
func Decommission(ctx context.Context, dataDir string) (bool, error) {
	rpc, done, err := connectTo(dataDir)
	if err != nil {
		return false, err
	}
	defer done()
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = rpc.Hello(hctx, connect.NewRequest(&keeperv1.HelloRequest{ProtocolVersion: ProtocolVersion}))
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if errors.Is(err, fs.ErrPermission) {
			return false, fmt.Errorf("keeper: %w: run this as the worker's user", err)
		}
		// No keeper answered: none runs, or one is ending.
		return false, awaitExit(ctx, dataDir)
	}
	if _, err := rpc.Shutdown(ctx, connect.NewRequest(&keeperv1.ShutdownRequest{})); err != nil && !errors.Is(err, context.Canceled) {
		return true, fmt.Errorf("keeper: %w", err)
	}
	return true, awaitExit(ctx, dataDir)
}

// awaitExit waits until no process holds the keeper lock of dataDir: the
// keeper that answered Shutdown has exited, not only said it will.
func awaitExit(ctx context.Context, dataDir string) error {
	dir, err := absDir(dataDir)
	if err != nil {
		return err
	}
	f, err := openOwn(filepath.Join(dir, lockName), os.O_RDONLY)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("keeper lock: %w", err)
	}
	defer f.Close()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if err == nil {
			_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("keeper lock: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("keeper: still running: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
