package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/baton-run/baton/cmd/baton/internal/daemon"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

func TestMain(m *testing.M) {
	code := m.Run()
	e2e.RemoveSharedBaton()
	os.Exit(code)
}

// benchBinary is the baton binary under a path of its own for one test,
// so that the processes it starts are told from those of other tests. It
// is a hard link, not a copy: a file being written while other tests fork
// is open for writing in their children until they exec, and executing it
// then fails with "text file busy" (golang/go#22315).
func benchBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "baton")
	if err := os.Link(e2e.SharedBaton(t), bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// checkNothingLeft fails t if a process of this test's bench is still
// there (a child of this process running bin, or anything whose command
// line names dir) or dir still holds anything.
func checkNothingLeft(t *testing.T, bin, dir string) {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		exe, _ := os.Readlink("/proc/" + e.Name() + "/exe")
		ppid := -1
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 {
			if f := strings.Fields(string(stat[i+1:])); len(f) > 1 {
				ppid, _ = strconv.Atoi(f[1])
			}
		}
		if (ppid == self && exe == bin) || bytes.Contains(cmdline, []byte(dir)) {
			t.Errorf("process %d left behind: %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		}
	}
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("left behind in the temporary directory: %s", e.Name())
	}
}

// checkProcesses checks that a local cluster's figures are all there, its
// scheduler processes named schedulers (default: "scheduler").
func checkProcesses(t *testing.T, name string, s *benchStats, jobs int, schedulers ...string) {
	t.Helper()
	if s == nil || s.Processes == nil {
		t.Fatalf("%s: no process figures", name)
	}
	p := s.Processes
	if len(schedulers) == 0 {
		schedulers = []string{"scheduler"}
	}
	for _, k := range append(schedulers, "bench-1", "bench-2", "baton", "client") {
		if p.CPUMsPerJob[k] <= 0 {
			t.Errorf("%s: CPU per job of %s is %v, want > 0 (all: %v)", name, k, p.CPUMsPerJob[k], p.CPUMsPerJob)
		}
		if k != "baton" && p.PeakRSSMiB[k] <= 0 {
			t.Errorf("%s: peak RSS of %s is %v, want > 0", name, k, p.PeakRSSMiB[k])
		}
	}
	finished := 0
	for w, f := range p.Workers {
		finished += f.FinishedJobs
		if f.FinishedJobs > 0 && f.DiskBytesPerJob <= 0 {
			t.Errorf("%s: %s's disk per job is %v, want > 0", name, w, f.DiskBytesPerJob)
		}
		if f.MemMeasure != "heap_marked" && f.MemMeasure != "rss" {
			t.Errorf("%s: %s's memory measure %q", name, w, f.MemMeasure)
		}
	}
	if len(p.Workers) != 2 || finished != jobs {
		t.Errorf("%s: workers %v finished %d jobs, want 2 workers and %d jobs", name, p.Workers, finished, jobs)
	}
}

// TestBenchLocal runs `baton bench --local` on a small load, over h2c and
// over mutual TLS, and checks the counts and that every figure is there,
// not what it is; then that the cluster's processes and directory are gone.
func TestBenchLocal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		mtls bool
		// targets is the cluster whose figures the targets judge.
		targets string
	}{
		{"h2c", false, "h2c"},
		{"mTLS", true, "mTLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bin, dir := benchBinary(t), e2e.JobsTempDir(t)
			// Enough jobs for every process to use a few ticks of CPU.
			const jobs = 100
			res, err := runBench(t.Context(), benchOptions{
				Local: true, MTLS: tc.mtls, Clients: 4, Jobs: jobs, Command: "true", Baseline: true,
				Binary: bin, TempDir: dir,
			})
			if err != nil {
				t.Fatal(err)
			}
			checkNothingLeft(t, bin, dir)
			if len(res.Errors) != 0 {
				t.Errorf("errors: %v", res.Errors)
			}
			stats := map[string]*benchStats{"baton": res.Baton, "exec": res.Exec}
			if tc.mtls {
				stats["mTLS"] = res.MTLS
			}
			for name, s := range stats {
				if s == nil {
					t.Fatalf("%s: no figures", name)
				}
				if s.Completed != jobs {
					t.Errorf("%s completed %d, want %d", name, s.Completed, jobs)
				}
				if s.P50Ms <= 0 || s.P90Ms <= 0 || s.P99Ms <= 0 || s.JobsPerSec <= 0 {
					t.Errorf("%s: zero figures: %+v", name, *s)
				}
				if name != "exec" {
					checkProcesses(t, name, s, jobs)
				}
			}
			if res.P50Ratio <= 0 || res.ThroughputRatio <= 0 {
				t.Errorf("ratios %v, %v; want positive", res.P50Ratio, res.ThroughputRatio)
			}
			if tc.mtls && (res.MTLSP50Ratio <= 0 || res.MTLSThroughputRatio <= 0) {
				t.Errorf("mTLS ratios %v, %v; want positive", res.MTLSP50Ratio, res.MTLSThroughputRatio)
			}
			if res.TargetsCluster != tc.targets {
				t.Errorf("targets judged on %q, want %q", res.TargetsCluster, tc.targets)
			}
			// The tables `baton bench` prints name every row it measured.
			var table bytes.Buffer
			printBench(&table, res)
			wantLines := []string{fmt.Sprintf("%d jobs of \"true\" from 4 clients", jobs), "os/exec", "baton/exec: p50", "errors: none"}
			if tc.mtls {
				wantLines = append(wantLines, "baton mTLS", "mTLS/h2c: p50")
			}
			for _, want := range wantLines {
				if !strings.Contains(table.String(), want) {
					t.Errorf("bench tables lack %q:\n%s", want, table.String())
				}
			}
			var names []string
			for _, tg := range res.Targets {
				names = append(names, tg.Name)
			}
			for _, want := range []string{"p50 baton/exec", "p99 baton/exec", "throughput baton/exec",
				"baton CPU per job (scheduler + workers + keepers)", "worker disk per finished job", "worker + keeper memory per retained job"} {
				if !slices.Contains(names, want) {
					t.Errorf("no target %q in %q", want, names)
				}
			}
		})
	}
}

// TestBenchReplicas runs the load on one scheduler on SQLite and on three
// replicas on embedded etcd, and checks that every job went through each,
// that each replica's process was measured, and that the ratios are
// printed; then that nothing is left behind.
func TestBenchReplicas(t *testing.T) {
	t.Parallel()
	bin, dir := benchBinary(t), e2e.JobsTempDir(t)
	const jobs = 60
	res, err := runBench(t.Context(), benchOptions{
		Local: true, Replicas: 3, Clients: 4, Jobs: jobs, Command: "true", Binary: bin, TempDir: dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, bin, dir)
	if len(res.Errors) != 0 {
		t.Errorf("errors: %v", res.Errors)
	}
	for name, s := range map[string]*benchStats{"SQLite": res.Baton, "replicated": res.Replicated} {
		if s == nil {
			t.Fatalf("%s: no figures", name)
		}
		if s.Completed != jobs || s.P50Ms <= 0 || s.P99Ms <= 0 || s.JobsPerSec <= 0 {
			t.Errorf("%s: %+v; want %d jobs completed and positive figures", name, *s, jobs)
		}
	}
	checkProcesses(t, "SQLite", res.Baton, jobs)
	checkProcesses(t, "replicated", res.Replicated, jobs, "scheduler-1", "scheduler-2", "scheduler-3")
	if _, ok := res.Replicated.Processes.CPUMsPerJob["scheduler"]; ok {
		t.Errorf("the replicated cluster has a process named scheduler: %v", res.Replicated.Processes.CPUMsPerJob)
	}
	if res.Replicas != 3 || res.ReplicatedP50Ratio <= 0 || res.ReplicatedP99Ratio <= 0 || res.ReplicatedThroughputRatio <= 0 {
		t.Errorf("replicas %d, ratios p50 %v, p99 %v, throughput %v; want 3 and positive ratios",
			res.Replicas, res.ReplicatedP50Ratio, res.ReplicatedP99Ratio, res.ReplicatedThroughputRatio)
	}
	var table bytes.Buffer
	printBench(&table, res)
	for _, want := range []string{"baton 3 replicas", "3 replicas (etcd)/one scheduler (SQLite): p50", "CPU replicated", "scheduler-3"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("bench tables lack %q:\n%s", want, table.String())
		}
	}
}

// TestBenchReplicaConfigs checks that the replicas' configurations name
// one cluster of members, each on ports of its own, with fsync left on.
func TestBenchReplicaConfigs(t *testing.T) {
	t.Parallel()
	base := daemon.DefaultSchedulerConfig()
	configs := replicaConfigs(base, "/d", []int{1000, 1001, 1002, 2000, 2001, 2002, 3000, 3001, 3002})
	if len(configs) != 3 {
		t.Fatalf("%d configurations, want 3", len(configs))
	}
	const initial = "scheduler-1=http://127.0.0.1:1002,scheduler-2=http://127.0.0.1:2002,scheduler-3=http://127.0.0.1:3002"
	for i, name := range []string{"scheduler-1", "scheduler-2", "scheduler-3"} {
		c, ok := configs[name]
		if !ok {
			t.Fatalf("no configuration for %s in %v", name, slices.Collect(maps.Keys(configs)))
		}
		m := c.Store.Etcd.Embedded
		port := 1000 * (i + 1)
		want := daemon.EmbeddedEtcd{
			Name:                name,
			ClientURL:           fmt.Sprintf("http://127.0.0.1:%d", port+1),
			PeerURL:             fmt.Sprintf("http://127.0.0.1:%d", port+2),
			InitialCluster:      initial,
			QuotaBytes:          base.Store.Etcd.Embedded.QuotaBytes,
			CompactionRetention: base.Store.Etcd.Embedded.CompactionRetention,
			ElectionTimeout:     base.Store.Etcd.Embedded.ElectionTimeout,
		}
		if m != want {
			t.Errorf("%s: embedded member %+v, want %+v", name, m, want)
		}
		if c.Store.Backend != daemon.BackendEtcd || c.GRPCServer.Addr != fmt.Sprintf("127.0.0.1:%d", port) || c.Scheduler.DataDir != "/d/"+name {
			t.Errorf("%s: backend %q, addr %q, data dir %q", name, c.Store.Backend, c.GRPCServer.Addr, c.Scheduler.DataDir)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestBenchCommandJSON runs the binary as a user would, and checks its
// JSON output and that it leaves nothing behind in its TMPDIR.
func TestBenchCommandJSON(t *testing.T) {
	t.Parallel()
	bin, dir := benchBinary(t), e2e.JobsTempDir(t)
	cmd := exec.Command(bin, "bench", "--local", "--mtls", "--clients", "2", "--jobs", "20", "-o", "json")
	cmd.Env = append(append(benchEnv(), "TMPDIR="+dir), e2e.CoverEnv()...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.Bytes())
	}
	checkNothingLeft(t, bin, dir)
	var res benchResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("%v in %s", err, out)
	}
	if res.Baton == nil || res.Baton.Completed != 20 || res.MTLS == nil || res.MTLS.Completed != 20 || res.Exec == nil || len(res.Errors) != 0 {
		t.Fatalf("result %s; want 20 jobs through each cluster and the baseline, no errors", out)
	}
	for _, key := range []string{`"cpu_ms_per_job"`, `"peak_rss_mib"`, `"disk_bytes_per_job"`, `"mem_bytes_per_job"`, `"targets"`, `"jobs_run_as"`} {
		if !bytes.Contains(out, []byte(key)) {
			t.Errorf("no %s in the output:\n%s", key, out)
		}
	}
}

// TestBenchStream follows a job's output through `baton run` into a file,
// against a pipe, on a mutual-TLS cluster: runStream itself checks each
// file's size.
func TestBenchStream(t *testing.T) {
	t.Parallel()
	bin, dir := benchBinary(t), e2e.JobsTempDir(t)
	res, err := runBench(t.Context(), benchOptions{Local: true, MTLS: true, StreamMiB: 2, StreamRuns: 2, Command: "true", Binary: bin, TempDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, bin, dir)
	s := res.Stream
	if s == nil || s.Cluster != "mTLS" || len(s.BatonSec) != 2 || len(s.PipeSec) != 2 || s.Ratio <= 0 {
		t.Fatalf("stream %+v; want 2 runs each on the mTLS cluster", s)
	}
	if s.CPUMsPerMiB["cli"] <= 0 {
		t.Errorf("CPU per MiB %v; want the CLI's > 0", s.CPUMsPerMiB)
	}
	if len(res.Targets) != 1 || res.Targets[0].Limit != targetStreamRatio {
		t.Errorf("targets %+v; want the stream's", res.Targets)
	}
	var out bytes.Buffer
	printBench(&out, res)
	for _, want := range []string{"baton run > file", "cat > file", "baton/pipe", "targets (mTLS cluster)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
}

// TestBenchFlags checks the combinations refused before anything starts.
func TestBenchFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts benchOptions
	}{
		{"mtls without local", benchOptions{MTLS: true, Clients: 1, Jobs: 1}},
		{"stream without local", benchOptions{StreamMiB: 1, StreamRuns: 1}},
		{"mtls and job uids", benchOptions{Local: true, MTLS: true, JobUIDs: true, Clients: 1, Jobs: 1}},
		{"stream and job uids", benchOptions{Local: true, JobUIDs: true, StreamMiB: 1, StreamRuns: 1}},
		{"stream without runs", benchOptions{Local: true, StreamMiB: 1}},
		{"no clients", benchOptions{Local: true, Jobs: 1}},
		{"queue without local", benchOptions{Queue: 10, Clients: 1, Jobs: 1}},
		{"queue and job uids", benchOptions{Local: true, JobUIDs: true, Queue: 10, Clients: 1, Jobs: 1}},
		{"negative queue", benchOptions{Local: true, Queue: -1, Clients: 1, Jobs: 1}},
		{"replicas without local", benchOptions{Replicas: 3, Clients: 1, Jobs: 1}},
		{"one replica", benchOptions{Local: true, Replicas: 1, Clients: 1, Jobs: 1}},
		{"too many replicas", benchOptions{Local: true, Replicas: 9, Clients: 1, Jobs: 1}},
		{"replicas and mtls", benchOptions{Local: true, Replicas: 3, MTLS: true, Clients: 1, Jobs: 1}},
		{"replicas and queue", benchOptions{Local: true, Replicas: 3, Queue: 10, Clients: 1, Jobs: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := runBench(t.Context(), tc.opts); err == nil {
				t.Errorf("%+v accepted", tc.opts)
			}
		})
	}
}

// TestBenchMetricSums parses the Prometheus text format as workers serve
// it.
func TestBenchMetricSums(t *testing.T) {
	t.Parallel()
	in := `# HELP baton_worker_jobs_finished_total Jobs.
# TYPE baton_worker_jobs_finished_total counter
baton_worker_jobs_finished_total{state="failed"} 2
baton_worker_jobs_finished_total{state="succeeded"} 40
go_memstats_next_gc_bytes 7.216362e+06
go_gc_duration_seconds{quantile="0.5"} 0.0001
go_gc_duration_seconds_count 3
odd{label="a } b"} 1.5 1700000000
`
	got, err := metricSums(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		metricFinished: 42, metricGoal: 7216362, metricGCs: 3, "odd": 1.5,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}

// TestBenchProcReaders reads this process's own figures.
func TestBenchProcReaders(t *testing.T) {
	t.Parallel()
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Error(err)
	}
	if rss, err := peakRSS("self"); err != nil || rss <= 0 {
		t.Errorf("peak RSS %d, %v", rss, err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), make([]byte, 10000), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := diskBytes(dir); err != nil || n < 10000 {
		t.Errorf("disk bytes %d, %v; want ≥ 10000", n, err)
	}
}
