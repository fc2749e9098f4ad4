package store_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/baton-run/baton/services/scheduler/store"
)

// testEtcd is the one-member etcd cluster of the test binary, started by
// TestMain; every test keeps its keys under a prefix of its own.
var testEtcd struct {
	cli      *clientv3.Client
	prefixes atomic.Int64
}

// startEtcd starts an in-process etcd member on loopback and connects to
// it. The ports are picked free and the start tried again if another
// process took one meanwhile.
func startEtcd() (stop func(), err error) {
	dir, err := os.MkdirTemp("", "store-etcd-")
	if err != nil {
		return nil, err
	}
	for attempt := range 5 {
		var e *embed.Etcd
		e, err = startMember(filepath.Join(dir, fmt.Sprint(attempt)))
		if err != nil {
			if strings.Contains(err.Error(), "address already in use") {
				continue
			}
			break
		}
		cli, cerr := clientv3.New(clientv3.Config{
			Endpoints:   []string{e.Config().ListenClientUrls[0].String()},
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		})
		if cerr != nil {
			e.Close()
			err = cerr
			break
		}
		testEtcd.cli = cli
		return func() {
			cli.Close()
			e.Close()
			os.RemoveAll(dir)
		}, nil
	}
	os.RemoveAll(dir)
	return nil, fmt.Errorf("start etcd: %w", err)
}

func startMember(dir string) (*embed.Etcd, error) {
	var ports []string
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		_, port, _ := net.SplitHostPort(l.Addr().String())
		ports = append(ports, port)
		// Free for etcd to take; another process may take it first, and
		// the start is then tried again.
		l.Close()
	}
	peer, _ := url.Parse("http://127.0.0.1:" + ports[0])
	client, _ := url.Parse("http://127.0.0.1:" + ports[1])
	cfg := embed.NewConfig()
	cfg.Name = "store-test"
	cfg.Dir = dir
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// Unit tests need no durability across a machine crash.
	cfg.UnsafeNoFsync = true
	// The member starts in TestMain, before testing's M.Run swaps
	// os.Stderr (with -json); the gateway's websocket proxy makes a
	// logger that reads os.Stderr from the member's goroutine, which the
	// race detector rightly reports. The tests use gRPC only.
	cfg.EnableGRPCGateway = false
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(time.Minute):
		e.Close()
		return nil, errors.New("etcd not ready after a minute")
	}
}

// testStore is what the contract tests use of a store.
type testStore interface {
	store.Store
	store.JobEndObserver
	// ScriptsKept counts the scripts the store keeps for queued jobs.
	ScriptsKept(ctx context.Context) (int, error)
}

// backend opens stores of one kind for the contract tests.
type backend struct {
	name string
	// open opens a new, empty store, closed when the test ends, and
	// returns it with the handle that reopens it.
	open func(tb testing.TB) (testStore, string)
	// reopen opens the store of handle again, after its Close.
	reopen func(tb testing.TB, handle string) (testStore, error)
}

var backends = []backend{
	{
		name: "sqlite",
		open: func(tb testing.TB) (testStore, string) { return openStore(tb) },
		reopen: func(tb testing.TB, path string) (testStore, error) {
			return store.Open(tb.Context(), path)
		},
	},
	{
		name: "etcd",
		open: func(tb testing.TB) (testStore, string) {
			prefix := fmt.Sprintf("/test/%d/", testEtcd.prefixes.Add(1))
			return openEtcd(tb, prefix, nil), prefix
		},
		reopen: func(tb testing.TB, prefix string) (testStore, error) {
			return store.OpenEtcd(tb.Context(), testEtcd.cli, store.EtcdOptions{Prefix: prefix})
		},
	},
}

// openEtcd opens the etcd store under prefix, closed when the test ends.
func openEtcd(tb testing.TB, prefix string, fence *store.Fence) *store.Etcd {
	tb.Helper()
	s, err := store.OpenEtcd(tb.Context(), testEtcd.cli, store.EtcdOptions{Prefix: prefix, Fence: fence})
	if err != nil {
		tb.Fatalf("OpenEtcd: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// forBackends runs fn as a parallel subtest for each backend.
func forBackends(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Helper()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			fn(t, b)
		})
	}
}
