package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// benchTarget is one of the fast path's targets judged on a run's figures.
type benchTarget struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Limit is the target: Value at most Limit, or at least Limit when
	// AtLeast.
	Limit   float64 `json:"limit"`
	AtLeast bool    `json:"at_least,omitempty"`
	Met     bool    `json:"met"`
	// Unclear says the figure may be off by more than the target itself.
	Unclear bool `json:"unclear,omitempty"`
	// Note says how the run differs from the conditions the target is set
	// for, or what was measured.
	Note string `json:"note,omitempty"`
}

func newTarget(name string, value float64, unit string, limit float64, atLeast bool, note string) benchTarget {
	met := value <= limit
	if atLeast {
		met = value >= limit
	}
	return benchTarget{Name: name, Value: value, Unit: unit, Limit: limit, AtLeast: atLeast, Met: met, Note: note}
}

// The fast path's targets.
const (
	targetP50Ratio        = 1.6 // one client, baton over os/exec
	targetP99Ratio        = 3.0 // one client, baton over os/exec
	targetThroughputRatio = 0.6 // 16 clients, baton over os/exec
	targetCPUMsPerJob     = 2.0 // scheduler + workers + their keepers
	targetDiskKiBPerJob   = 8.0 // a worker's data directory
	targetMemKiBPerJob    = 1.0 // a worker's heap
	targetStreamRatio     = 3.0 // baton run > file over a pipe
)

// fastPathTargets judges the targets on the figures of the mTLS cluster,
// the way a real cluster runs, or else of the h2c one, and names it.
func fastPathTargets(res *benchResult) (string, []benchTarget) {
	st, cluster := res.Baton, "h2c"
	if res.MTLS != nil {
		st, cluster = res.MTLS, "mTLS"
	}
	if st == nil {
		return "", nil
	}
	clientsNote := func(want int) string {
		if res.Clients == want {
			return ""
		}
		return fmt.Sprintf("set for %s; this run had %d", clientsText(want), res.Clients)
	}
	var ts []benchTarget
	if e := res.Exec; e != nil && e.P50Ms > 0 && e.P99Ms > 0 && e.JobsPerSec > 0 {
		ts = append(ts,
			newTarget("p50 baton/exec", st.P50Ms/e.P50Ms, "x", targetP50Ratio, false, clientsNote(1)),
			newTarget("p99 baton/exec", st.P99Ms/e.P99Ms, "x", targetP99Ratio, false, clientsNote(1)),
			newTarget("throughput baton/exec", st.JobsPerSec/e.JobsPerSec, "x", targetThroughputRatio, true, clientsNote(16)))
	}
	p := st.Processes
	if p == nil {
		return cluster, ts
	}
	ts = append(ts, newTarget("baton CPU per job (scheduler + workers + keepers)", p.CPUMsPerJob["baton"], "ms", targetCPUMsPerJob, false, ""))
	var jobs, disk, mem, spread float64
	measure := "heap_marked"
	for _, w := range p.Workers {
		n := float64(w.FinishedJobs)
		jobs += n
		disk += w.DiskBytesPerJob * n
		mem += (w.MemBytesPerJob + w.KeeperHeapBytesPerJob) * n
		spread += w.MemSpreadBytesPerJob * n
		if w.MemMeasure != "heap_marked" {
			measure = w.MemMeasure
		}
	}
	if jobs > 0 {
		ts = append(ts, newTarget("worker disk per finished job", disk/jobs/1024, "KiB", targetDiskKiBPerJob, false,
			"data directory growth, st_blocks, on "+p.Filesystem))
		note := fmt.Sprintf("worker: live heap marked by collections, before and after the load, ± %.2f KiB; keeper: heap after a collection", spread/jobs/1024)
		if measure != "heap_marked" {
			note = "resident set growth: no collection came about to read the heap after"
		}
		t := newTarget("worker + keeper memory per retained job", mem/jobs/1024, "KiB", targetMemKiBPerJob, false, note)
		if t.Unclear = spread/jobs/1024 > targetMemKiBPerJob; t.Unclear {
			t.Note += "; too few jobs to tell"
		}
		ts = append(ts, t)
	}
	return cluster, ts
}

// streamTargets judges the output stream's target.
func streamTargets(s *streamResult) []benchTarget {
	if s.Ratio == 0 {
		return nil
	}
	return []benchTarget{newTarget(fmt.Sprintf("%d MiB stream, baton run/pipe", s.MiB), s.Ratio, "x", targetStreamRatio, false, "")}
}

// printTargets writes the targets block.
func printTargets(w io.Writer, cluster string, clients int, ts []benchTarget) {
	if len(ts) == 0 {
		return
	}
	where := cluster + " cluster"
	if clients > 0 {
		where += ", " + clientsText(clients)
	}
	fmt.Fprintf(w, "\ntargets (%s):\n", where)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range ts {
		cmp := "≤"
		if t.AtLeast {
			cmp = "≥"
		}
		verdict := "met"
		switch {
		case t.Unclear:
			verdict = "unclear"
		case !t.Met:
			verdict = "NOT met"
		}
		line := fmt.Sprintf("  %s\t%s\ttarget %s %s\t%s", t.Name, formatValue(t.Value, t.Unit), cmp, formatValue(t.Limit, t.Unit), verdict)
		if t.Note != "" {
			line += "\t(" + t.Note + ")"
		}
		fmt.Fprintln(tw, line)
	}
	_ = tw.Flush()
}

func clientsText(n int) string {
	if n == 1 {
		return "1 client"
	}
	return fmt.Sprintf("%d clients", n)
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "x":
		return fmt.Sprintf("%.2fx", v)
	default:
		return fmt.Sprintf("%.2f %s", v, unit)
	}
}

// printProcesses writes the local clusters' CPU, memory and disk figures.
func printProcesses(w io.Writer, clusters []string, stats []*benchStats) {
	var names []string
	for _, s := range stats {
		if s == nil || s.Processes == nil {
			continue
		}
		for k := range s.Processes.CPUMsPerJob {
			if !slices.Contains(names, k) {
				names = append(names, k)
			}
		}
	}
	if len(names) == 0 {
		return
	}
	// The scheduler (or its replicas), the workers, baton (their sum),
	// client.
	rank := func(n string) int {
		switch {
		case strings.HasPrefix(n, "scheduler"):
			return 0
		case n == "baton":
			return 2
		case n == "client":
			return 3
		}
		return 1
	}
	slices.SortFunc(names, func(a, b string) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		if a < b {
			return -1
		}
		return 1
	})
	fmt.Fprintln(w, "\nCPU per job, ms (user+system of each process during the measured rounds; jobs are the workers' children, not counted),")
	fmt.Fprintln(w, "and peak RSS (VmHWM), MiB:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := "\t"
	for _, n := range names {
		header += n + "\t"
	}
	fmt.Fprintln(tw, header)
	for i, s := range stats {
		if s == nil || s.Processes == nil {
			continue
		}
		cpu, rss := "CPU "+clusters[i]+"\t", "RSS "+clusters[i]+"\t"
		for _, n := range names {
			cpu += fmt.Sprintf("%.3f\t", s.Processes.CPUMsPerJob[n])
			if v, ok := s.Processes.PeakRSSMiB[n]; ok {
				rss += fmt.Sprintf("%.1f\t", v)
			} else {
				rss += "-\t"
			}
		}
		fmt.Fprintln(tw, cpu)
		fmt.Fprintln(tw, rss)
	}
	_ = tw.Flush()
	for i, s := range stats {
		if s == nil || s.Processes == nil {
			continue
		}
		p := s.Processes
		fmt.Fprintf(w, "\n%s: per finished job, data directory growth (st_blocks on %s) and memory growth:\n", clusters[i], p.Filesystem)
		workers := slices.Sorted(func(yield func(string) bool) {
			for k := range p.Workers {
				if !yield(k) {
					return
				}
			}
		})
		for _, name := range workers {
			f := p.Workers[name]
			what := "live heap"
			if f.MemMeasure != "heap_marked" {
				what = "RSS (no collection came about)"
			}
			fmt.Fprintf(w, "  %s: %d jobs, disk %.2f KiB, %s %.2f ± %.2f KiB, keeper heap %.2f KiB\n", name, f.FinishedJobs, f.DiskBytesPerJob/1024, what, f.MemBytesPerJob/1024, f.MemSpreadBytesPerJob/1024, f.KeeperHeapBytesPerJob/1024)
		}
		sched := "scheduler"
		if _, ok := p.CPUMsPerJob["scheduler"]; !ok {
			sched = "schedulers (all replicas' data directories, etcd's WAL included)"
		}
		fmt.Fprintf(w, "  %s: disk %.2f KiB\n", sched, p.SchedulerDiskBytesPerJob/1024)
	}
}
