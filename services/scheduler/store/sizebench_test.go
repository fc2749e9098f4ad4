package store_test

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baton-run/baton/services/etcdmember"
	"github.com/baton-run/baton/services/scheduler/store"
)

// BenchmarkStoreSize writes b.N finished jobs (each through its life:
// PENDING, RUNNING, SUCCEEDED, from 16 goroutines) into a one-member
// embedded etcd that syncs every write, and into SQLite, and reports what
// the stores grew by per job. For etcd: the backend database in use with
// the history of those writes kept (as for an hour after them, the
// compaction retention), and its file once compacted to the last revision
// and defragmented; and the member's whole directory (WAL and snapshots
// included). For SQLite: its files once closed. Bytes per job are also
// megabytes (10^6) per million jobs. Run it with -benchtime Nx, N the jobs.
func BenchmarkStoreSize(b *testing.B) {
	ctx := b.Context()
	dir := b.TempDir()
	m, cli := startFsyncMember(b, filepath.Join(dir, "etcd"))
	endpoint := m.ClientURL()
	s, err := store.OpenEtcd(ctx, cli, store.EtcdOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	empty := compactedSize(b, cli, endpoint)
	emptyDir := dirBytes(b, filepath.Join(dir, "etcd"))

	sqlitePath := filepath.Join(dir, "sqlite", "baton.db")
	if err := os.MkdirAll(filepath.Dir(sqlitePath), 0o700); err != nil {
		b.Fatal(err)
	}
	sq, err := store.Open(ctx, sqlitePath)
	if err != nil {
		b.Fatal(err)
	}
	if err := sq.Close(); err != nil {
		b.Fatal(err)
	}
	sqliteEmpty := dirBytes(b, filepath.Dir(sqlitePath))

	b.ResetTimer()
	liveJobs(b, s, 16, 0, b.N)
	b.StopTimer()

	st, err := cli.Status(ctx, endpoint)
	if err != nil {
		b.Fatal(err)
	}
	withHistory := st.DbSizeInUse
	memberDir := dirBytes(b, filepath.Join(dir, "etcd"))
	compacted := compactedSize(b, cli, endpoint)

	if sq, err = store.Open(ctx, sqlitePath); err != nil {
		b.Fatal(err)
	}
	liveJobs(b, sq, 16, 0, b.N)
	if err := sq.Close(); err != nil {
		b.Fatal(err)
	}
	sqliteSize := dirBytes(b, filepath.Dir(sqlitePath))

	perJob := func(after, before int64) float64 { return float64(after-before) / float64(b.N) }
	b.ReportMetric(perJob(compacted, empty), "etcd-compacted-B/job")
	b.ReportMetric(perJob(withHistory, empty), "etcd-with-history-B/job")
	b.ReportMetric(perJob(memberDir, emptyDir), "etcd-dir-B/job")
	b.ReportMetric(perJob(sqliteSize, sqliteEmpty), "sqlite-B/job")
	b.ReportMetric(float64(compacted)/(1<<20), "etcd-compacted-MiB")
	b.ReportMetric(float64(memberDir)/(1<<20), "etcd-dir-MiB")
	b.ReportMetric(float64(sqliteSize)/(1<<20), "sqlite-MiB")
}

// startFsyncMember starts a one-member etcd cluster in dir on loopback
// ports, writes synced to disk as in production, and connects to it. A
// port taken between its pick and etcd's bind costs a new attempt.
func startFsyncMember(tb testing.TB, dir string) (*etcdmember.Member, *clientv3.Client) {
	tb.Helper()
	var err error
	for attempt := range 5 {
		var ports []string
		if ports, err = loopbackPorts(2); err != nil {
			break
		}
		var m *etcdmember.Member
		m, err = etcdmember.Start(tb.Context(), etcdmember.Config{
			Name:      "size",
			Dir:       filepath.Join(dir, fmt.Sprint(attempt)),
			ClientURL: "http://" + ports[0],
			PeerURL:   "http://" + ports[1],
			// Its shutdown logs closed listeners as errors.
			LogLevel: "fatal",
		})
		if err != nil {
			if strings.Contains(err.Error(), "address already in use") {
				continue
			}
			break
		}
		cli, err := m.Client(nil)
		if err != nil {
			m.Close()
			tb.Fatal(err)
		}
		tb.Cleanup(func() {
			cli.Close()
			m.Close()
		})
		return m, cli
	}
	tb.Fatalf("start etcd: %v", err)
	return nil, nil
}

func loopbackPorts(n int) ([]string, error) {
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, l.Addr().String())
		// Free for etcd to take; another process may take it first, and
		// the start is then tried again.
		l.Close()
	}
	return addrs, nil
}

// compactedSize compacts the member's history up to its last revision,
// defragments its database, and returns the file's size.
func compactedSize(tb testing.TB, cli *clientv3.Client, endpoint string) int64 {
	tb.Helper()
	ctx := tb.Context()
	st, err := cli.Status(ctx, endpoint)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := cli.Compact(ctx, st.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		tb.Fatal(err)
	}
	if _, err := cli.Defragment(ctx, endpoint); err != nil {
		tb.Fatal(err)
	}
	if st, err = cli.Status(ctx, endpoint); err != nil {
		tb.Fatal(err)
	}
	return st.DbSize
}

// dirBytes is the space the files under dir take: the sum of their
// st_blocks×512 (stat(2)).
func dirBytes(tb testing.TB, dir string) int64 {
	tb.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return total
}
