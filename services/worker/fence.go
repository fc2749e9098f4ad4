package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/services/internal/epoch"
)

// epochFile is the file in the worker's data directory that holds the
// highest leader epoch the worker has seen.
const epochFile = "epoch"

// errStaleLeader starts the refusal of a call from a deposed leader.
var errStaleLeader = errors.New("stale leader")

// fence refuses calls from a leader older than the newest one the worker
// has seen (HA.md, "Workers fence too"), and remembers that newest epoch
// across restarts in a file. It is a handler interceptor on WorkerService,
// after authorization: only the scheduler reaches it, and only the
// scheduler sets the epoch. Calls without an epoch (a scheduler running
// alone) pass unchecked. It is safe for concurrent use.
type fence struct {
	path string
	// seen is the newest epoch, always already in the file: a call it
	// admits cannot be forgotten by a crash that follows.
	seen atomic.Int64
	// mu serializes raising seen, so that the file ends with the highest
	// of concurrent epochs. It is held across the file's write, which is
	// rare (once per new leader) and must finish before the call acts.
	mu sync.Mutex
}

// openFence reads the epoch kept at path; a missing file is epoch 0.
func openFence(path string) (*fence, error) {
	f := &fence{path: path}
	n, err := readEpoch(path)
	if err != nil {
		return nil, err
	}
	f.seen.Store(n)
	return f, nil
}

// readEpoch reads an epoch file written by writeEpoch.
func readEpoch(path string) (int64, error) {
	file, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("worker: read the leader epoch: %w", err)
	}
	defer file.Close()
	b, err := io.ReadAll(io.LimitReader(file, 64))
	if err != nil {
		return 0, fmt.Errorf("worker: read the leader epoch: %w", err)
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil || n < 0 {
		// Starting from 0 would let a deposed leader in again.
		return 0, fmt.Errorf("worker: the leader epoch file %s is damaged (%q); remove it only if no deposed scheduler may still call", path, b)
	}
	return n, nil
}

// writeEpoch replaces the file at path with one holding n: a temporary
// file, synced, renamed over it, and the directory synced, so that a crash
// leaves either the old epoch or the new one (rename(2)).
func writeEpoch(path string, n int64) (err error) {
	tmp := path + ".tmp"
	file, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	_, err = file.WriteString(strconv.FormatInt(n, 10) + "\n")
	if err == nil {
		err = file.Sync()
	}
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// admit lets a call of epoch n through if no newer leader has been seen,
// recording n first when it is the newest yet.
func (f *fence) admit(n int64) error {
	if n == 0 {
		return nil
	}
	if seen := f.seen.Load(); n <= seen {
		return f.check(n, seen)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// Another call may have raised it meanwhile.
	if seen := f.seen.Load(); n <= seen {
		return f.check(n, seen)
	}
	if err := writeEpoch(f.path, n); err != nil {
		return fmt.Errorf("record leader epoch %d: %w", n, err)
	}
	f.seen.Store(n)
	return nil
}

// check refuses epoch n if it is older than seen.
func (f *fence) check(n, seen int64) error {
	if n < seen {
		return fmt.Errorf("%w: epoch %d is older than %d, the newest this worker has seen", errStaleLeader, n, seen)
	}
	return nil
}

// enter parses the epoch a call carries, admits it and returns ctx
// carrying it for the start log.
func (f *fence) enter(ctx context.Context, h http.Header) (context.Context, error) {
	n, err := epoch.Parse(h)
	if err != nil {
		return ctx, mapError(err)
	}
	if err := f.admit(n); err != nil {
		return ctx, mapError(err)
	}
	return context.WithValue(ctx, epochKey{}, n), nil
}

// WrapUnary implements connect.Interceptor.
func (f *fence) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, err := f.enter(ctx, req.Header())
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

// WrapStreamingClient implements connect.Interceptor.
func (f *fence) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (f *fence) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := f.enter(ctx, conn.RequestHeader())
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

type epochKey struct{}

// epochOf is the epoch of the leader whose call ctx serves: 0 for none.
func epochOf(ctx context.Context) int64 {
	n, _ := ctx.Value(epochKey{}).(int64)
	return n
}
