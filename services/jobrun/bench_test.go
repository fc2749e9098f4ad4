package jobrun

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The runtime's benchmarks, without RPC. Each measures its baseline in the
// same run, in turns with the Runner, and reports the ratio:
//
//	go test -run '^$' -bench . -benchtime 200x -count 5 ./services/jobrun/
//
// (3x is enough for the 100 MB ones.)

// BenchmarkStartTrue is start→exit of /bin/true through the Runner (Start,
// then Output with Follow until it returns the final status), against
// os/exec starting and waiting for the same /bin/true. After each job it
// waits, untimed, until the Runner is done with it, so that none of the
// Runner's work runs while the baseline is timed.
func BenchmarkStartTrue(b *testing.B) {
	path, err := exec.LookPath("true")
	if err != nil {
		b.Skip(err)
	}
	r, _ := newRunner(b, nil)
	n := 0
	job := func() time.Duration {
		id := "b-" + itoa(int64(n))
		n++
		t0 := time.Now()
		if _, _, err := r.Start(b.Context(), id, Spec{Command: "true"}); err != nil {
			b.Fatal(err)
		}
		st, err := r.Output(b.Context(), id, OutputRequest{Follow: true}, func(Chunk) error { return nil })
		d := time.Since(t0)
		if err != nil || st.State != StateSucceeded {
			b.Fatalf("job ended %v: %v", st.State, err)
		}
		waitDone(b, r, id)
		return d
	}
	base := func() time.Duration {
		t0 := time.Now()
		if err := exec.Command(path).Run(); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	for range 5 {
		job()
		base()
	}
	jobs, bases := inTurns(b, job, base)
	p50, base50 := median(jobs), median(bases)
	b.ReportMetric(float64(p50)/1e6, "p50-ms")
	b.ReportMetric(float64(base50)/1e6, "exec-p50-ms")
	b.ReportMetric(float64(p50)/float64(base50), "ratio")
}

// BenchmarkStartTrue16 is BenchmarkStartTrue at 16 concurrent starts: each
// iteration runs 16 /bin/true jobs at once through the Runner (Start, then
// Output with Follow until the final status), and 16 os/exec runs of
// /bin/true at once, in turns. The ratio is of the median round times
// (Runner over os/exec), the inverse of the throughput ratio. With 16 jobs
// ending together, their end records share fdatasync(2) calls.
func BenchmarkStartTrue16(b *testing.B) {
	const conc = 16
	path, err := exec.LookPath("true")
	if err != nil {
		b.Skip(err)
	}
	r, _ := newRunner(b, nil)
	var n atomic.Int64
	round := func(one func()) time.Duration {
		var wg sync.WaitGroup
		t0 := time.Now()
		for range conc {
			wg.Go(one)
		}
		wg.Wait()
		return time.Since(t0)
	}
	var ids [conc]string
	job := func() time.Duration {
		var next atomic.Int32
		d := round(func() {
			id := "b-" + itoa(n.Add(1))
			ids[next.Add(1)-1] = id
			if _, _, err := r.Start(b.Context(), id, Spec{Command: "true"}); err != nil {
				b.Error(err)
				return
			}
			st, err := r.Output(b.Context(), id, OutputRequest{Follow: true}, func(Chunk) error { return nil })
			if err != nil || st.State != StateSucceeded {
				b.Errorf("job ended %v: %v", st.State, err)
			}
		})
		for _, id := range ids {
			waitDone(b, r, id)
		}
		return d
	}
	base := func() time.Duration {
		return round(func() {
			if err := exec.Command(path).Run(); err != nil {
				b.Error(err)
			}
		})
	}
	for range 3 {
		job()
		base()
	}
	jobs, bases := inTurns(b, job, base)
	p50, base50 := median(jobs), median(bases)
	b.ReportMetric(conc/p50.Seconds(), "jobs/s")
	b.ReportMetric(conc/base50.Seconds(), "exec-runs/s")
	b.ReportMetric(float64(p50)/float64(base50), "ratio")
}

func median[T int64 | float64 | time.Duration](v []T) T {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

const benchSize = 100 << 20

// finishedJob runs a job that writes benchSize bytes and returns the Runner.
func finishedJob(b *testing.B) *Runner {
	b.Helper()
	r, scripts := newRunner(b, func(o *Options) { o.OutputLimit = 1 << 30 })
	writeScript(b, scripts, "big.sh", "head -c "+itoa(benchSize)+" /dev/zero\n")
	if _, _, err := r.Start(b.Context(), "big", Spec{Command: "sh", Path: "big.sh"}); err != nil {
		b.Fatal(err)
	}
	if st := waitDone(b, r, "big"); st.StdoutBytes != benchSize {
		b.Fatalf("job wrote %d bytes", st.StdoutBytes)
	}
	return r
}

// BenchmarkFollow100MB is one follower reading a finished job's 100 MB
// through Output, against reading the output file directly with reads of
// the follower's own size (maxChunk), in turns.
func BenchmarkFollow100MB(b *testing.B) {
	r := finishedJob(b)
	path := filepath.Join(r.jobsDir, "big", stdoutFile)
	buf := make([]byte, maxChunk)
	follow := func() float64 {
		t0 := time.Now()
		var n int64
		if _, err := r.Output(b.Context(), "big", OutputRequest{Follow: true}, func(c Chunk) error {
			n += int64(len(c.Data))
			return nil
		}); err != nil || n != benchSize {
			b.Fatalf("read %d bytes: %v", n, err)
		}
		return benchSize / 1e6 / time.Since(t0).Seconds()
	}
	file := func() float64 {
		t0 := time.Now()
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		n, err := readAll(f, buf)
		_ = f.Close()
		if err != nil || n != benchSize {
			b.Fatalf("read %d bytes: %v", n, err)
		}
		return benchSize / 1e6 / time.Since(t0).Seconds()
	}
	follow()
	file()
	var follows, files []float64
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			follows = append(follows, follow())
			files = append(files, file())
		} else {
			files = append(files, file())
			follows = append(follows, follow())
		}
	}
	fo, fi := median(follows), median(files)
	b.ReportMetric(fo, "follow-MB/s")
	b.ReportMetric(fi, "file-MB/s")
	b.ReportMetric(fo/fi, "ratio")
}

// BenchmarkFollowers100 reports the aggregate throughput of 100 concurrent
// followers of a finished 100 MB job.
func BenchmarkFollowers100(b *testing.B) {
	r := finishedJob(b)
	const followers = 100
	b.SetBytes(benchSize * followers)
	for b.Loop() {
		var wg sync.WaitGroup
		for range followers {
			wg.Go(func() {
				if _, err := r.Output(b.Context(), "big", OutputRequest{Follow: true}, func(Chunk) error { return nil }); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
	}
}

// readAll reads r to its end in len(buf) reads and returns the byte count.
// (io.Copy to io.Discard would read in 8 KiB pieces whatever buf is.)
func readAll(r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// inTurns times job and base once each per iteration, alternating which
// goes first, so that a change in the machine's load weighs on both alike.
func inTurns(b *testing.B, job, base func() time.Duration) (jobs, bases []time.Duration) {
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			jobs = append(jobs, job())
			bases = append(bases, base())
		} else {
			bases = append(bases, base())
			jobs = append(jobs, job())
		}
	}
	return jobs, bases
}
