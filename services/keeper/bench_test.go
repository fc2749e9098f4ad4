package keeper

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/baton-run/baton/services/jobrun"
)

// BenchmarkKeeperMemoryPerRunningJob reports what the keeper holds per
// running job: its Go heap (after a collection) and its resident set, with
// 500 jobs running against none.
func BenchmarkKeeperMemoryPerRunningJob(b *testing.B) {
	const jobs = 500
	for b.Loop() {
		b.StopTimer()
		opts := jobrun.Options{
			DataDir: b.TempDir(), ScriptsDir: b.TempDir(), AllowedCommands: []string{"sleep"},
			Capacity: jobs, CgroupParent: "-",
		}
		c := openB(b, opts)
		idle, err := ReadStats(b.Context(), opts.DataDir)
		if err != nil {
			b.Fatal(err)
		}
		for i := range jobs {
			if _, _, err := c.Start(b.Context(), fmt.Sprintf("job-%d", i), jobrun.Spec{Command: "sleep", Args: []string{"1000"}}); err != nil {
				b.Fatal(err)
			}
		}
		busy, err := ReadStats(b.Context(), opts.DataDir)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(busy.HeapLiveBytes-idle.HeapLiveBytes)/jobs/1024, "heap-KiB/job")
		b.ReportMetric(float64(busy.RSSBytes-idle.RSSBytes)/jobs/1024, "rss-KiB/job")
		if _, err := Decommission(context.Background(), opts.DataDir); err != nil {
			b.Fatal(err)
		}
		_ = c.Close(context.Background())
		b.StartTimer()
	}
}

func openB(b *testing.B, opts jobrun.Options) *Client {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	c, err := Open(b.Context(), Config{Options: opts, Executable: exe})
	if err != nil {
		b.Fatal(err)
	}
	return c
}
