package worker

import (
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
)

// The worker's benchmarks compare against a baseline in the same run:
//
//	go test -run '^$' -bench 'True$' -benchtime 200x ./services/worker/
//	go test -run '^$' -bench '100MB|Followers' -benchtime 3x ./services/worker/
//
// Each reports p50 (ns) besides the mean, since start latency has a tail.

// BenchmarkStartToExitTrue is start→exit of /bin/true through WorkerService
// (StartJob, then StreamJobOutput until the final status) over h2c.
func BenchmarkStartToExitTrue(b *testing.B) {
	tw := startWorker(b, nil, nil)
	c := tw.client()
	var lat []time.Duration
	for b.Loop() {
		t0 := time.Now()
		res, err := c.StartJob(b.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "true"}))
		if err != nil {
			b.Fatal(err)
		}
		stream, err := c.StreamJobOutput(b.Context(), connect.NewRequest(&batonv1.WorkerServiceStreamJobOutputRequest{JobId: res.Msg.GetJobId(), Follow: true}))
		if err != nil {
			b.Fatal(err)
		}
		for stream.Receive() {
		}
		if err := stream.Close(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	reportP50(b, lat)
}

// BenchmarkExecTrue is the baseline: os/exec start and wait of /bin/true.
func BenchmarkExecTrue(b *testing.B) {
	path, err := exec.LookPath("true")
	if err != nil {
		b.Skip(err)
	}
	var lat []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := exec.Command(path).Run(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	reportP50(b, lat)
}

func reportP50(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
}

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

// BenchmarkStream100MB is one follower reading a finished job's 100 MB
// through StreamJobOutput (Connect protocol, binary protobuf).
func BenchmarkStream100MB(b *testing.B) {
	tw, id := bigJob(b)
	c := tw.client()
	b.SetBytes(bigOutput)
	for b.Loop() {
		stream, err := c.StreamJobOutput(b.Context(), connect.NewRequest(&batonv1.WorkerServiceStreamJobOutputRequest{JobId: id}))
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for stream.Receive() {
			n += len(stream.Msg().GetChunk().GetData())
		}
		if err := stream.Close(); err != nil || n != bigOutput {
			b.Fatalf("read %d bytes: %v", n, err)
		}
	}
}

// BenchmarkReadFile100MB is the baseline: reading the same output file
// directly in 32 KiB reads.
func BenchmarkReadFile100MB(b *testing.B) {
	tw, id := bigJob(b)
	path := filepath.Join(tw.dataDir, "jobs", id, "stdout")
	buf := make([]byte, 32<<10)
	b.SetBytes(bigOutput)
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for {
			m, err := f.Read(buf)
			n += m
			if err != nil {
				break
			}
		}
		f.Close()
		if n != bigOutput {
			b.Fatalf("read %d bytes", n)
		}
	}
}

// BenchmarkFollowers100 is 100 followers streaming the same 10 MB job at
// once through StreamJobOutput; MB/s is the aggregate delivered.
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
