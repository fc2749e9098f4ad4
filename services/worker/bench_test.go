package worker

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

// The worker's benchmarks measure their baseline in the same run, in turns
// with the worker (job, baseline, baseline, job, ...), so that load from
// elsewhere on the machine hits both alike, and report the ratio:
//
//	go test -run '^$' -bench 'StartToExit|Stream100MB|Followers' -benchtime 200x -count 5 ./services/worker/
//
// (-benchtime 200x suits the start benchmark; 3x is enough for the others.)

// BenchmarkStartToExitTrue is start→exit of /bin/true through WorkerService
// over h2c (StartJob, then StreamJobOutput with follow until the final
// status), against os/exec starting and waiting for the same /bin/true.
// After each job an untimed StopJob waits until the worker is done with it
// (end record synced, cgroup removed, home directory gone), so none of
// the worker's work runs while the baseline is timed.
func BenchmarkStartToExitTrue(b *testing.B) {
	path, err := exec.LookPath("true")
	if err != nil {
		b.Skip(err)
	}
	tw := startWorker(b, nil, nil)
	c := tw.client()
	job := func() time.Duration {
		t0 := time.Now()
		id := startAndFollowTrue(b, c)
		d := time.Since(t0)
		if _, err := c.StopJob(b.Context(), connect.NewRequest(&batonv1.WorkerServiceStopJobRequest{JobId: id})); err != nil {
			b.Fatal(err)
		}
		return d
	}
	base := func() time.Duration {
		t0 := time.Now()
		if err := exec.Command(path).Run(); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	for range 5 { // connection, first-use allocations, page cache
		job()
		base()
	}
	var jobs, bases []time.Duration
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			jobs = append(jobs, job())
			bases = append(bases, base())
		} else {
			bases = append(bases, base())
			jobs = append(jobs, job())
		}
		i++
	}
	p50, base50 := median(jobs), median(bases)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(base50), "exec-p50-ms")
	b.ReportMetric(float64(p50)/float64(base50), "ratio")
}

// startAndFollowTrue starts /bin/true and follows its output to the final
// status, which must say it succeeded.
func startAndFollowTrue(b *testing.B, c batonv1connect.WorkerServiceClient) string {
	res, err := c.StartJob(b.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "true"}))
	if err != nil {
		b.Fatal(err)
	}
	id := res.Msg.GetJobId()
	stream, err := c.StreamJobOutput(b.Context(), connect.NewRequest(&batonv1.WorkerServiceStreamJobOutputRequest{JobId: id, Follow: true}))
	if err != nil {
		b.Fatal(err)
	}
	var final *batonv1.JobStatus
	for stream.Receive() {
		if st := stream.Msg().GetStatus(); st != nil {
			final = st
		}
	}
	if err := stream.Close(); err != nil {
		b.Fatal(err)
	}
	if final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || final.GetExitCode() != 0 {
		b.Fatalf("job ended %v, exit code %d", final.GetState(), final.GetExitCode())
	}
	return id
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

const bigOutput = 100 << 20

// bigJob runs a job that writes bigOutput bytes and waits for its end.
func bigJob(b *testing.B) (*testWorker, string) {
	tw := startWorker(b, map[string]string{
		"big.sh": "#!/bin/sh\nhead -c " + strconv.Itoa(bigOutput) + " /dev/urandom\n",
	}, func(o *Options) { o.Runner.OutputLimit = 1 << 30 })
	c := tw.client()
	res, err := c.StartJob(b.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "big.sh"}))
	if err != nil {
		b.Fatal(err)
	}
	id := res.Msg.GetJobId()
	_, _, final := collect(b.Context(), b, c, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: id, Follow: true, Offset: bigOutput - 1})
	if final.GetStdoutBytes() != bigOutput {
		b.Fatalf("job wrote %d bytes", final.GetStdoutBytes())
	}
	return tw, id
}

// readSize is the read size of the file baseline: the worker's own reads
// of an output file are this large (jobrun's maxChunk), so both read the
// page cache the same way.
const readSize = 256 << 10

// BenchmarkStream100MB is one follower reading a finished job's 100 MB
// through StreamJobOutput (Connect protocol, binary protobuf, h2c), against
// reading the same output file directly, from the page cache, in turns.
// tcp-MB/s is a reference, not a baseline: the same bytes over a bare
// loopback TCP connection, the ceiling of any protocol on top of it.
func BenchmarkStream100MB(b *testing.B) {
	tw, id := bigJob(b)
	c := tw.client()
	path := filepath.Join(tw.dataDir, "jobs", id, "stdout")
	buf := make([]byte, readSize)
	stream := func() float64 {
		t0 := time.Now()
		s, err := c.StreamJobOutput(b.Context(), connect.NewRequest(&batonv1.WorkerServiceStreamJobOutputRequest{JobId: id}))
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for s.Receive() {
			n += len(s.Msg().GetChunk().GetData())
		}
		if err := s.Close(); err != nil || n != bigOutput {
			b.Fatalf("read %d bytes: %v", n, err)
		}
		return mbps(bigOutput, time.Since(t0))
	}
	file := func() float64 {
		t0 := time.Now()
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		n, err := readAll(f, buf)
		_ = f.Close()
		if err != nil || n != bigOutput {
			b.Fatalf("read %d bytes: %v", n, err)
		}
		return mbps(bigOutput, time.Since(t0))
	}
	tcp := loopbackCopier(b, path)
	stream() // warm the connection and the page cache
	file()
	var streams, files, tcps []float64
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			streams = append(streams, stream())
			files = append(files, file())
		} else {
			files = append(files, file())
			streams = append(streams, stream())
		}
		tcps = append(tcps, tcp())
		i++
	}
	s, f := medianF(streams), medianF(files)
	b.ReportMetric(s, "stream-MB/s")
	b.ReportMetric(f, "file-MB/s")
	b.ReportMetric(s/f, "ratio")
	b.ReportMetric(medianF(tcps), "tcp-MB/s")
}

// loopbackCopier returns a function that sends the file over a fresh
// loopback TCP connection, read and written in readSize pieces, and returns
// the receiver's MB/s.
func loopbackCopier(b *testing.B, path string) func() float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ln.Close() })
	return func() float64 {
		var wg sync.WaitGroup
		wg.Go(func() {
			conn, err := ln.Accept()
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close()
			f, err := os.Open(path)
			if err != nil {
				b.Error(err)
				return
			}
			defer f.Close()
			// Plain reads and writes: io.Copy would use sendfile(2) and
			// skip the copies any RPC has to make.
			buf := make([]byte, readSize)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					if _, err := conn.Write(buf[:n]); err != nil {
						b.Error(err)
						return
					}
				}
				if err != nil {
					return
				}
			}
		})
		t0 := time.Now()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		n, err := readAll(conn, make([]byte, readSize))
		d := time.Since(t0)
		_ = conn.Close()
		wg.Wait()
		if err != nil || n != bigOutput {
			b.Fatalf("tcp read %d bytes: %v", n, err)
		}
		return mbps(n, d)
	}
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

func medianF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkFollowers100 is 100 followers streaming the same 10 MB job at
// once through StreamJobOutput, from its start; MB/s is the aggregate
// delivered. There is no baseline: the job itself writes at the rate of
// head -c from /dev/urandom.
func BenchmarkFollowers100(b *testing.B) {
	const size, followers = 10 << 20, 100
	tw := startWorker(b, map[string]string{
		"ten.sh": "#!/bin/sh\nhead -c " + strconv.Itoa(size) + " /dev/urandom\n",
	}, nil)
	c := tw.client()
	b.SetBytes(size * followers)
	for b.Loop() {
		b.StopTimer()
		res, err := c.StartJob(b.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "ten.sh"}))
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		var wg sync.WaitGroup
		for range followers {
			wg.Go(func() {
				stream, err := c.StreamJobOutput(b.Context(), connect.NewRequest(&batonv1.WorkerServiceStreamJobOutputRequest{JobId: res.Msg.GetJobId(), Follow: true}))
				if err != nil {
					b.Error(err)
					return
				}
				n := 0
				for stream.Receive() {
					n += len(stream.Msg().GetChunk().GetData())
				}
				if err := stream.Close(); err != nil || n != size {
					b.Errorf("follower read %d bytes: %v", n, err)
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
