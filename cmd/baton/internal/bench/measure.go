package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/baton-run/baton/services/keeper"
)

// benchProcesses is where a local cluster's CPU, memory and disk went
// during the load.
type benchProcesses struct {
	// CPUMsPerJob is the CPU time (user + system) used during the measured
	// rounds, per job, in ms: "scheduler", each worker by name, each
	// worker's keeper ("NAME-keeper"), "baton" (all of those) and "client"
	// (the bench process).
	// A worker's jobs are its children and are not counted.
	CPUMsPerJob map[string]float64 `json:"cpu_ms_per_job"`
	// PeakRSSMiB is each process's peak resident set (VmHWM) after the
	// load, same keys but "baton".
	PeakRSSMiB map[string]float64 `json:"peak_rss_mib"`
	// Workers are each worker's disk and memory per job it finished.
	Workers map[string]workerFootprint `json:"workers"`
	// SchedulerDiskBytesPerJob is the growth of the scheduler's data
	// directory per job (all replicas' together).
	SchedulerDiskBytesPerJob float64 `json:"scheduler_disk_bytes_per_job"`
	// Filesystem holds the data directories ("ext4", "tmpfs", ...).
	Filesystem string `json:"filesystem"`
}

// workerFootprint is what a worker keeps per finished job.
type workerFootprint struct {
	// FinishedJobs is the growth of baton_worker_jobs_finished_total over
	// the load; the worker retains all of them.
	FinishedJobs int `json:"finished_jobs"`
	// DiskBytesPerJob is the growth of the data directory (the sum of
	// st_blocks×512) per finished job.
	DiskBytesPerJob float64 `json:"disk_bytes_per_job"`
	// MemBytesPerJob is the growth of the worker's memory per retained
	// job, measured as MemMeasure says.
	MemBytesPerJob float64 `json:"mem_bytes_per_job"`
	// MemSpreadBytesPerJob is what MemBytesPerJob may be off by: how far
	// the live heap differed between collections, before and after.
	MemSpreadBytesPerJob float64 `json:"mem_spread_bytes_per_job"`
	// MemMeasure is "heap_marked" (the live heap collections marked, from
	// the heap goal they set, before and after the load) or "rss"
	// (resident set) when no collection could be brought about.
	MemMeasure string `json:"mem_measure"`
	// KeeperHeapBytesPerJob is the growth of the keeper's live heap (after
	// a collection) per retained job: the job table is the keeper's.
	KeeperHeapBytesPerJob float64 `json:"keeper_heap_bytes_per_job"`
}

// Names of the metrics the bench reads from a worker's /metrics.
const (
	metricFinished = "baton_worker_jobs_finished_total"
	metricGCs      = "go_gc_duration_seconds_count"
	metricGoal     = "go_memstats_next_gc_bytes"
	metricStack    = "go_memstats_stack_inuse_bytes"
	metricGOGC     = "go_gc_gogc_percent"
	metricRSS      = "process_resident_memory_bytes"
)

// clusterLoad is a local cluster and what the load measured on it. It is
// not safe for concurrent use.
type clusterLoad struct {
	lc     *localCluster
	sample loadSample
	jobs   int
	cpu    map[string]time.Duration
	before clusterFootprint
}

// clusterFootprint is a cluster's disk and memory at one moment.
type clusterFootprint struct {
	workers   map[string]workerState
	schedDisk int64
}

type workerState struct {
	finished float64
	disk     int64
	// keeperHeap is the keeper's live heap after a collection.
	keeperHeap float64
	// mem is the live heap when heap, else the resident set, as rss;
	// spread is what the live heap may be off by.
	mem    float64
	spread float64
	rss    float64
	heap   bool
}

// round runs n jobs through the cluster and adds the CPU its processes and
// this one used meanwhile.
func (c *clusterLoad) round(ctx context.Context, opts benchOptions, n int, res *benchResult, retries *atomic.Int64) error {
	before, err := c.lc.cpu()
	if err != nil {
		return err
	}
	s, err := loadThrough(ctx, opts, n, c.lc.addrs, c.lc.clientTLS, res, retries)
	if err != nil {
		return err
	}
	after, err := c.lc.cpu()
	if err != nil {
		return err
	}
	if c.cpu == nil {
		c.cpu = map[string]time.Duration{}
	}
	for k, v := range after {
		c.cpu[k] += v - before[k]
	}
	c.sample.merge(s)
	c.jobs += n
	return nil
}

// stats are the load's figures, with the processes' measured after it.
func (c *clusterLoad) stats(ctx context.Context) (benchStats, error) {
	st := c.sample.stats()
	after, err := c.lc.footprint(ctx)
	if err != nil {
		return st, err
	}
	p := &benchProcesses{
		CPUMsPerJob: map[string]float64{},
		PeakRSSMiB:  map[string]float64{},
		Workers:     map[string]workerFootprint{},
		Filesystem:  filesystemType(c.lc.dir),
	}
	perJob := func(d time.Duration) float64 {
		return float64(d) / float64(time.Millisecond) / float64(max(c.jobs, 1))
	}
	var baton time.Duration
	for k, v := range c.cpu {
		p.CPUMsPerJob[k] = perJob(v)
		if k != "client" {
			baton += v
		}
	}
	p.CPUMsPerJob["baton"] = perJob(baton)
	for _, d := range c.lc.daemons() {
		if err := d.running(); err != nil {
			return st, err
		}
		if rss, err := peakRSS(strconv.Itoa(d.pid())); err == nil {
			p.PeakRSSMiB[d.name] = float64(rss) / (1 << 20)
		}
	}
	if rss, err := peakRSS("self"); err == nil {
		p.PeakRSSMiB["client"] = float64(rss) / (1 << 20)
	}
	var finished float64
	for name, a := range after.workers {
		b := c.before.workers[name]
		n := a.finished - b.finished
		finished += n
		f := workerFootprint{FinishedJobs: int(n), MemMeasure: "rss"}
		if a.heap && b.heap {
			f.MemMeasure = "heap_marked"
		} else {
			a.mem, b.mem, a.spread, b.spread = a.rss, b.rss, 0, 0
		}
		if n > 0 {
			f.KeeperHeapBytesPerJob = (a.keeperHeap - b.keeperHeap) / n
			f.DiskBytesPerJob = float64(a.disk-b.disk) / n
			f.MemBytesPerJob = (a.mem - b.mem) / n
			f.MemSpreadBytesPerJob = (a.spread + b.spread) / n
		}
		p.Workers[name] = f
	}
	if finished > 0 {
		p.SchedulerDiskBytesPerJob = float64(after.schedDisk-c.before.schedDisk) / finished
	}
	st.Processes = p
	return st, nil
}

// cpu reads the CPU time of each of the cluster's processes, by name, and
// this process's as "client".
func (lc *localCluster) cpu() (map[string]time.Duration, error) {
	m := map[string]time.Duration{"client": selfCPU()}
	for _, d := range lc.daemons() {
		if err := d.running(); err != nil {
			return nil, err
		}
		t, err := procCPU(d.pid())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.name, err)
		}
		m[d.name] = t
	}
	for _, w := range lc.workers {
		pid, err := KeeperPID(w.dataDir)
		if err != nil {
			return nil, fmt.Errorf("%s's keeper: %w", w.name, err)
		}
		t, err := procCPU(pid)
		if err != nil {
			return nil, fmt.Errorf("%s's keeper: %w", w.name, err)
		}
		m[w.name+"-keeper"] = t
	}
	return m, nil
}

// KeeperPID reads the pid of the keeper of a worker's data directory from
// its lock file.
func KeeperPID(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "keeper.lock"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// footprint measures the data directories and the workers' memory.
func (lc *localCluster) footprint(ctx context.Context) (clusterFootprint, error) {
	fp := clusterFootprint{workers: map[string]workerState{}}
	for _, w := range lc.workers {
		live, spread, heap, m, err := w.liveHeap(ctx)
		if err != nil {
			return fp, fmt.Errorf("%s metrics: %w", w.name, err)
		}
		s := workerState{finished: m[metricFinished], mem: m[metricRSS], rss: m[metricRSS], heap: heap}
		ks, err := keeper.ReadStats(ctx, w.dataDir)
		if err != nil {
			return fp, fmt.Errorf("%s's keeper: %w", w.name, err)
		}
		s.keeperHeap = float64(ks.HeapLiveBytes)
		if heap {
			s.mem, s.spread = live, spread
		}
		if s.disk, err = diskBytes(w.dataDir); err != nil {
			return fp, err
		}
		fp.workers[w.name] = s
	}
	for _, d := range lc.schedulers {
		n, err := diskBytes(d.dataDir)
		if err != nil {
			return fp, err
		}
		fp.schedDisk += n
	}
	return fp, nil
}

// heapCollections is how many collections liveHeap brings about and
// takes the smallest figure of: a collection that runs during a scrape
// marks that scrape's buffers too.
const heapCollections = 3

// liveHeap has the daemon collect its garbage heapCollections times, by
// scraping its /metrics (a scrape allocates and keeps nothing), and returns
// the smallest live heap they marked, up to a constant (it is for
// differences), and the next smallest less it as spread. The live heap is
// read off the heap goal a collection sets, marked + (marked + stacks +
// globals)·GOGC/100: the heap in use would count unswept garbage. ok is
// false when the collections did not come in time; m is the last scrape.
func (d *benchDaemon) liveHeap(ctx context.Context) (live, spread float64, ok bool, m map[string]float64, err error) {
	if m, err = d.scrape(ctx); err != nil {
		return 0, 0, false, nil, err
	}
	// The collection under way at the first scrape may have begun before
	// it, and is not counted.
	last := m[metricGCs] + 1
	seen, next := 0, 0.0
	deadline := time.Now().Add(30 * time.Second)
	for seen < heapCollections && time.Now().Before(deadline) {
		if m, err = d.scrape(ctx); err != nil {
			return 0, 0, false, nil, err
		}
		if m[metricGCs] <= last {
			continue
		}
		last = m[metricGCs]
		g := m[metricGOGC] / 100
		if g <= 0 {
			return 0, 0, false, m, nil
		}
		v := (m[metricGoal] - m[metricStack]*g) / (1 + g)
		switch {
		case seen == 0:
			live, next = v, math.Inf(1)
		case v < live:
			live, next = v, live
		case v < next:
			next = v
		}
		seen++
	}
	if seen < heapCollections {
		return 0, 0, false, m, nil
	}
	return live, next - live, true, m, nil
}

// scrape reads the daemon's /metrics and sums the samples of each metric
// over its label sets.
func (d *benchDaemon) scrape(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.metricsURL, nil)
	if err != nil {
		return nil, err
	}
	res, err := d.metrics.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", d.metricsURL, res.Status)
	}
	return metricSums(io.LimitReader(res.Body, 16<<20))
}

// metricSums parses the Prometheus text format into the sum of each
// metric's samples.
func metricSums(r io.Reader) (map[string]float64, error) {
	sums := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		end := strings.IndexAny(line, "{ ")
		if end <= 0 {
			continue
		}
		rest := line[end:]
		if rest[0] == '{' {
			labelsEnd := strings.LastIndexByte(rest, '}')
			if labelsEnd < 0 {
				continue
			}
			rest = rest[labelsEnd+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sums[line[:end]] += v
	}
	return sums, sc.Err()
}

// userHZ is the unit of the times in /proc/PID/stat: ticks of USER_HZ,
// which Linux fixes at 100 a second (times(2)).
const userHZ = 100

// procCPU is the CPU time (user + system) the process has used, all its
// threads and none of its children: utime and stime of proc_pid_stat(5).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The second field, the command in parentheses, may hold anything.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	utime, uerr := strconv.ParseInt(f[11], 10, 64)
	stime, serr := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(uerr, serr); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * (time.Second / userHZ), nil
}

// selfCPU is this process's CPU time, user + system (getrusage(2)).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peakRSS is VmHWM from /proc/PID/status ("self" for this process), in
// bytes.
func peakRSS(pid string) (int64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%s/status: no VmHWM", pid)
}

// diskBytes is the space the files and directories under dir take: the
// sum of their st_blocks×512 (stat(2)). Files removed during the walk are
// skipped.
func diskBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil {
			var info fs.FileInfo
			if info, err = d.Info(); err == nil {
				if st, ok := info.Sys().(*syscall.Stat_t); ok {
					total += st.Blocks * 512
				}
			}
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	})
	return total, err
}

// filesystemType names the type of the filesystem holding path
// (statfs(2)), or gives its magic number.
func filesystemType(path string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return "unknown"
	}
	switch st.Type {
	case 0xef53:
		return "ext2/3/4"
	case 0x01021994:
		return "tmpfs"
	case 0x58465342:
		return "xfs"
	case 0x9123683e:
		return "btrfs"
	case 0x794c7630:
		return "overlayfs"
	}
	return fmt.Sprintf("0x%x", st.Type)
}
