package jobrun

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// BenchmarkStartTrue measures start-to-end of /bin/true through the Runner;
// compare with BenchmarkExecTrue, the bare os/exec cost.
func BenchmarkStartTrue(b *testing.B) {
	r, _ := newRunner(b, nil)
	i := 0
	for b.Loop() {
		id := "b-" + itoa(int64(i))
		i++
		if _, _, err := r.Start(b.Context(), id, Spec{Command: "true"}); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Output(b.Context(), id, OutputRequest{Follow: true}, func(Chunk) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkExecTrue(b *testing.B) {
	path, err := exec.LookPath("true")
	if err != nil {
		b.Skip(err)
	}
	for b.Loop() {
		if err := exec.Command(path).Run(); err != nil {
			b.Fatal(err)
		}
	}
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

func BenchmarkFollow100MB(b *testing.B) {
	r := finishedJob(b)
	b.SetBytes(benchSize)
	for b.Loop() {
		var n int64
		if _, err := r.Output(b.Context(), "big", OutputRequest{Follow: true}, func(c Chunk) error {
			n += int64(len(c.Data))
			return nil
		}); err != nil || n != benchSize {
			b.Fatalf("read %d bytes: %v", n, err)
		}
	}
}

// BenchmarkReadFile100MB is the baseline for BenchmarkFollow100MB: the same
// file read sequentially with a 32 KiB buffer.
func BenchmarkReadFile100MB(b *testing.B) {
	r := finishedJob(b)
	path := filepath.Join(r.jobsDir, "big", stdoutFile)
	buf := make([]byte, copyBufferSize)
	b.SetBytes(benchSize)
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
		_ = f.Close()
		if err != nil || n != benchSize {
			b.Fatalf("read %d bytes: %v", n, err)
		}
	}
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
