package jobrun

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFilesMadeLazily checks what a job leaves on disk: nothing when it
// prints nothing and leaves its home empty; its output directory with only
// the files it wrote to (over the remains of a failed cleanup under its
// name); its home only when it left something there, until it expires.
func TestFilesMadeLazily(t *testing.T) {
	t.Parallel()
	r, _ := newRunner(t, func(o *Options) { o.Retention = time.Hour })
	exists := func(path string) bool {
		_, err := os.Lstat(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return err == nil
	}

	mustStart(t, r, "quiet", Spec{Command: "true"})
	if st := waitDone(t, r, "quiet"); st.State != StateSucceeded {
		t.Fatalf("quiet: %v %s", st.State, st.Reason)
	}
	for _, dir := range []string{r.jobsDir, r.homesDir} {
		if exists(filepath.Join(dir, "quiet")) {
			t.Errorf("a job that printed nothing left %s", filepath.Join(dir, "quiet"))
		}
	}
	if got := readOutput(t, r, "quiet", OutputRequest{Follow: true}); len(got) != 0 {
		t.Errorf("quiet output %q", got)
	}

	// Remains of a failed cleanup under the job's name.
	junk := filepath.Join(r.jobsDir, "talks", "junk")
	if err := os.MkdirAll(junk, 0o700); err != nil {
		t.Fatal(err)
	}
	mustStart(t, r, "talks", Spec{Command: "sh", Args: []string{"-c", "pwd; echo kept > file"}})
	st := waitDone(t, r, "talks")
	if st.State != StateSucceeded {
		t.Fatalf("talks: %v %s", st.State, st.Reason)
	}
	home := filepath.Join(r.homesDir, "talks")
	if got := string(readOutput(t, r, "talks", OutputRequest{Streams: StreamStdout})); got != home+"\n" {
		t.Errorf("working directory %q, want %s", got, home)
	}
	if exists(junk) {
		t.Error("the job's output directory kept an old entry")
	}
	dir := filepath.Join(r.jobsDir, "talks")
	for name, want := range map[string]bool{stdoutFile: true, indexFile: true, stderrFile: false} {
		if exists(filepath.Join(dir, name)) != want {
			t.Errorf("%s exists: %v, want %v", name, !want, want)
		}
	}
	if !exists(filepath.Join(home, "file")) {
		t.Error("the home of a job that left a file in it was removed before the job expired")
	}
	r.expire(st.EndedAt.Add(2 * time.Hour))
	for _, path := range []string{dir, home} {
		if exists(path) {
			t.Errorf("%s left after the job expired", path)
		}
	}
}
