package jobrun

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// seededBytes returns n bytes of a ChaCha8 stream seeded with seed: binary
// output (NUL bytes, invalid UTF-8) that a test knows without reading
// anything the runner stored.
func seededBytes(seed byte, n int) []byte {
	var key [32]byte
	key[0] = seed
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// piecewiseCat is a script that writes the file named by its first argument
// to stdout in 64 KiB pieces, one dd per piece, so that followers read a job
// that is still writing; then it writes "done" to stderr.
func piecewiseCat(size int) string {
	return fmt.Sprintf("i=0\nwhile [ $i -lt %d ]; do dd if=\"$1\" bs=65536 skip=$i count=1 2>/dev/null || exit 1; i=$((i+1)); done\necho done >&2\n", (size+65535)/65536)
}

// TestFollowers100 is RELIABILITY.md O1: 100 followers (and one joining in
// the middle) of a job writing 10 MB of binary all get exactly the bytes the
// job wrote. The expected bytes come from the test's own seeded generator,
// not from the runner's output file.
func TestFollowers100(t *testing.T) {
	t.Parallel()
	const size = 10_000_000
	data := seededBytes(100, size)
	if bytes.IndexByte(data, 0) < 0 || utf8.Valid(data) {
		t.Fatal("the generated output should hold NUL bytes and invalid UTF-8")
	}
	want := sha256.Sum256(data)
	r, scripts := newRunner(t, nil)
	writeScript(t, scripts, "random.sh", piecewiseCat(size))
	input := filepath.Join(t.TempDir(), "random.bin")
	if err := os.WriteFile(input, data, 0o600); err != nil {
		t.Fatal(err)
	}
	mustStart(t, r, "rand", Spec{Command: "sh", Path: "random.sh", Args: []string{input}})

	const followers = 100
	sums := make(chan [32]byte, followers)
	var wg sync.WaitGroup
	for range followers {
		wg.Go(func() {
			h := sha256.New()
			next := int64(0)
			st, err := r.Output(t.Context(), "rand", OutputRequest{Follow: true, Streams: StreamStdout}, func(c Chunk) error {
				if c.Offset != next || c.Stream != StreamStdout {
					return errors.New("chunk out of order")
				}
				next += int64(len(c.Data))
				h.Write(c.Data)
				return nil
			})
			if err != nil || !st.State.Terminal() {
				t.Errorf("follower: state %v, err %v", st.State, err)
			}
			sums <- [32]byte(h.Sum(nil))
		})
	}
	// A follower joining in the middle, once half the output exists.
	const mid = 5_000_003
	eventually(t, "half the output", func() bool {
		st, _ := r.Status("rand")
		return st.StdoutBytes > mid
	})
	var tail bytes.Buffer
	if _, err := r.Output(t.Context(), "rand", OutputRequest{Offset: mid, Follow: true, Streams: StreamStdout}, func(c Chunk) error {
		tail.Write(c.Data)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(sums)
	st := waitDone(t, r, "rand")
	if st.State != StateSucceeded || st.StdoutBytes != size {
		t.Fatalf("job: %v, %d bytes", st.State, st.StdoutBytes)
	}
	n := 0
	for s := range sums {
		n++
		if s != want {
			t.Errorf("follower sha256 differs from the bytes the job wrote")
		}
	}
	if n != followers {
		t.Errorf("%d followers finished, want %d", n, followers)
	}
	if !bytes.Equal(tail.Bytes(), data[mid:]) {
		t.Errorf("mid-stream follower got %d bytes that differ from the %d the job wrote from offset %d", tail.Len(), len(data)-mid, mid)
	}
	// Both-streams view: each stream's bytes complete and in order, at
	// contiguous view offsets.
	var out, errb bytes.Buffer
	next := int64(0)
	if _, err := r.Output(t.Context(), "rand", OutputRequest{}, func(c Chunk) error {
		if c.Offset != next {
			return errors.New("gap in the both-streams view")
		}
		next += int64(len(c.Data))
		if c.Stream == StreamStderr {
			errb.Write(c.Data)
		} else {
			out.Write(c.Data)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) || errb.String() != "done\n" {
		t.Errorf("both-streams view differs from what the job wrote")
	}
}

// TestInterleaving makes the order deterministic: the job writes one line,
// then blocks on a FIFO that the test writes only after the follower saw the
// line.
func TestInterleaving(t *testing.T) {
	t.Parallel()
	r, scripts := newRunner(t, nil)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// O_RDWR never blocks on a FIFO (fifo(7), Linux), and keeping a writer
	// open means the job's reads block until a line arrives instead of
	// seeing EOF.
	ctl, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	writeScript(t, scripts, "ping.sh", `exec 3<"$1"; for i in 1 2 3; do echo out$i; read x <&3; echo err$i >&2; read x <&3; done`)
	mustStart(t, r, "ping", Spec{Command: "bash", Path: "ping.sh", Args: []string{fifo}})
	var got []string
	_, err = r.Output(t.Context(), "ping", OutputRequest{Follow: true}, func(c Chunk) error {
		got = append(got, c.Stream.String()+":"+strings.TrimSpace(string(c.Data)))
		_, err := ctl.WriteString("go\n")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "stdout:out1 stderr:err1 stdout:out2 stderr:err2 stdout:out3 stderr:err3"
	if strings.Join(got, " ") != want {
		t.Errorf("order %v, want %s", got, want)
	}
	// The single-stream views and offsets agree with the combined one.
	if s := string(readOutput(t, r, "ping", OutputRequest{Streams: StreamStderr, Offset: 5})); s != "err2\nerr3\n" {
		t.Errorf("stderr view from 5: %q", s)
	}
	if s := string(readOutput(t, r, "ping", OutputRequest{Offset: 7})); s != "r1\nout2\nerr2\nout3\nerr3\n" {
		t.Errorf("both view from 7: %q", s)
	}
}

func TestSlowFollowerDoesNotDelayJob(t *testing.T) {
	t.Parallel()
	r, scripts := newRunner(t, nil)
	writeScript(t, scripts, "burst.sh", "head -c 3000000 /dev/zero\n")
	mustStart(t, r, "burst", Spec{Command: "sh", Path: "burst.sh"})
	release := make(chan struct{})
	first := make(chan struct{})
	done := make(chan int64)
	go func() {
		var n int64
		_, _ = r.Output(context.Background(), "burst", OutputRequest{Follow: true}, func(c Chunk) error {
			if n == 0 {
				close(first)
				<-release // stuck reader
			}
			n += int64(len(c.Data))
			return nil
		})
		done <- n
	}()
	<-first
	st := waitDone(t, r, "burst") // ends while the follower is stuck
	close(release)
	select {
	case n := <-done:
		if n != st.StdoutBytes || n != 3_000_000 {
			t.Errorf("slow follower got %d bytes, job wrote %d", n, st.StdoutBytes)
		}
	case <-time.After(testWait):
		t.Fatal("slow follower never finished")
	}
}

// TestFollowerCancellation is not parallel: it compares process-wide
// goroutine and fd counts.
func TestFollowerCancellation(t *testing.T) {
	r, scripts := newRunner(t, nil)
	writeScript(t, scripts, "hold.sh", "echo hello\nexec sleep 1000\n")
	mustStart(t, r, "hold", Spec{Command: "sh", Path: "hold.sh"})
	waitForOutput(t, r, "hold", "hello")
	goroutines, fds := runtime.NumGoroutine(), fdCount(t)
	const n = 1000
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithCancel(t.Context())
			_, err := r.Output(ctx, "hold", OutputRequest{Follow: true}, func(Chunk) error {
				cancel() // the client goes away after the first chunk
				return nil
			})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Output after cancel: %v", err)
			}
		})
	}
	wg.Wait()
	eventually(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= goroutines })
	if got := fdCount(t); got > fds+5 {
		t.Errorf("fds: %d, baseline %d", got, fds)
	}
	if _, err := r.Stop(t.Context(), "hold", "test"); err != nil {
		t.Fatal(err)
	}
}

func TestOutputRequests(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, nil)
	mustStart(t, r, "o", Spec{Command: "sh", Args: []string{"-c", "printf abc; printf XY >&2; printf def"}})
	waitDone(t, r, "o")
	tests := []struct {
		name string
		req  OutputRequest
		want string
		err  error
	}{
		{"both", OutputRequest{}, "", nil},
		{"stdout", OutputRequest{Streams: StreamStdout}, "abcdef", nil},
		{"stderr", OutputRequest{Streams: StreamStderr}, "XY", nil},
		{"stdout from 4", OutputRequest{Streams: StreamStdout, Offset: 4}, "ef", nil},
		{"past the end", OutputRequest{Streams: StreamStdout, Offset: 100}, "", nil},
		{"past the end, following", OutputRequest{Offset: 100, Follow: true}, "", nil},
		{"negative offset", OutputRequest{Offset: -1}, "", ErrInvalidSpec},
		{"bad stream", OutputRequest{Streams: 4}, "", ErrInvalidSpec},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			_, err := r.Output(t.Context(), "o", tc.req, func(c Chunk) error {
				buf.Write(c.Data)
				return nil
			})
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if tc.name == "both" {
				// The writes may be read in any order; each stream's bytes
				// must be complete.
				if buf.Len() != 8 {
					t.Errorf("got %q", buf.String())
				}
				return
			}
			if buf.String() != tc.want {
				t.Errorf("got %q, want %q", buf.String(), tc.want)
			}
		})
	}
	if _, err := r.Output(t.Context(), "missing", OutputRequest{}, func(Chunk) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown job: %v", err)
	}
}

// TestOutputWriteError stores output on /dev/full: the write error is kept
// for the job's reason and the output is dropped; nothing panics.
func TestOutputWriteError(t *testing.T) {
	t.Parallel()
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	idx, err := os.CreateTemp(t.TempDir(), "index")
	if err != nil {
		t.Fatal(err)
	}
	l := &outputLog{stdout: full, stderr: full, index: idx, limit: 1 << 20}
	defer l.close()
	j := &job{notify: make(chan struct{})}
	if res := l.append(j, StreamStdout, []byte("hello"), time.Now()); res != writeFailed {
		t.Fatalf("append = %v, want writeFailed", res)
	}
	if res := l.append(j, StreamStdout, []byte("more"), time.Now()); res != dropped {
		t.Fatalf("append after failure = %v, want dropped", res)
	}
	if err := l.writeError(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write error %v, want ENOSPC", err)
	}
	if j.nrec != 0 {
		t.Errorf("published %d records of failed writes", j.nrec)
	}
}
