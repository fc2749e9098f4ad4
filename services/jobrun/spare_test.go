package jobrun

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestSpareDirectories checks the life of the spare job directories: built
// by New, taken by Start (even over the remains of a failed cleanup),
// rebuilt after the job, gone after Close.
func TestSpareDirectories(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, nil)
	spares := func() int {
		entries, _ := os.ReadDir(r.sparesDir)
		return len(entries)
	}
	if n := spares(); n != spareDirs {
		t.Fatalf("%d spares after New, want %d", n, spareDirs)
	}
	// Remains of a failed cleanup under the job's name.
	junk := filepath.Join(r.jobsDir, "s1", "junk")
	if err := os.MkdirAll(junk, 0o700); err != nil {
		t.Fatal(err)
	}
	mustStart(t, r, "s1", Spec{Command: "sh", Args: []string{"-c", "pwd; echo oops >&2"}})
	st := waitDone(t, r, "s1")
	if st.State != StateSucceeded {
		t.Fatalf("job: %v %s", st.State, st.Reason)
	}
	dir := filepath.Join(r.jobsDir, "s1")
	if _, err := os.Stat(junk); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the job directory kept an old entry: %v", err)
	}
	if got := string(readOutput(t, r, "s1", OutputRequest{Streams: StreamStdout})); got != filepath.Join(r.homesDir, "s1")+"\n" {
		t.Errorf("working directory %q", got)
	}
	for _, name := range []string{stdoutFile, stderrFile, indexFile, recordFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 || fi.Size() == 0 {
			t.Errorf("%s: mode %v, %d bytes", name, fi.Mode().Perm(), fi.Size())
		}
	}
	if n := spares(); n != spareDirs {
		t.Errorf("%d spares after a job, want %d", n, spareDirs)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.sparesDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spares left after Close: %v", err)
	}
}
