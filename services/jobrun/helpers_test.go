package jobrun

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const testWait = 60 * time.Second

var testCommands = []string{"sh", "bash", "true", "env", "sleep", "yes", "head", "perl"}

// newRunner returns a Runner over fresh temporary directories, closed at the
// end of the test, and its scripts directory.
func newRunner(t testing.TB, mod func(*Options)) (*Runner, string) {
	t.Helper()
	opts := Options{
		DataDir:         t.TempDir(),
		ScriptsDir:      t.TempDir(),
		AllowedCommands: testCommands,
		StopGrace:       300 * time.Millisecond,
	}
	if mod != nil {
		mod(&opts)
	}
	r, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testWait)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r, opts.ScriptsDir
}

func writeScript(t testing.TB, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustStart(t testing.TB, r *Runner, id string, spec Spec) Status {
	t.Helper()
	st, created, err := r.Start(t.Context(), id, spec)
	if err != nil {
		t.Fatalf("Start(%s): %v", id, err)
	}
	if !created {
		t.Fatalf("Start(%s): created = false", id)
	}
	return st
}

// waitDone waits for the job to end and returns its final status.
func waitDone(t testing.TB, r *Runner, id string) Status {
	t.Helper()
	e, err := r.lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	if e.j == nil {
		return e.status()
	}
	select {
	case <-e.j.done:
	case <-time.After(testWait):
		t.Fatalf("job %s did not end", id)
	}
	return e.j.snapshot()
}

// readOutput returns everything the job wrote in the given view.
func readOutput(t testing.TB, r *Runner, id string, req OutputRequest) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := r.Output(t.Context(), id, req, func(c Chunk) error {
		buf.Write(c.Data)
		return nil
	}); err != nil {
		t.Fatalf("Output: %v", err)
	}
	return buf.Bytes()
}

type procInfo struct {
	pid, ppid, pgrp, session int
	state                    string
}

// processes lists every process visible in /proc.
func processes(t testing.TB) []procInfo {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []procInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 4 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		sess, _ := strconv.Atoi(f[3])
		out = append(out, procInfo{pid: pid, ppid: ppid, pgrp: pgrp, session: sess, state: f[0]})
	}
	return out
}

// liveChildren counts this test process's children and its zombie children.
func liveChildren(t testing.TB) (live, zombies int) {
	me := os.Getpid()
	for _, p := range processes(t) {
		if p.ppid != me {
			continue
		}
		if p.state == "Z" {
			zombies++
		} else {
			live++
		}
	}
	return live, zombies
}

// alive reports whether a non-zombie process with this pid or process group
// exists.
func aliveGroup(t testing.TB, pgid int) bool {
	for _, p := range processes(t) {
		if (p.pgrp == pgid || p.pid == pgid) && p.state != "Z" {
			return true
		}
	}
	return false
}

func fdCount(t testing.TB) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// eventually polls cond until it holds or the test wait expires.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(testWait)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// zombieClones counts zombie children that never exec'd: their command name
// is still this test binary's.
func zombieClones(t testing.TB) int {
	self, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range processes(t) {
		if p.ppid != os.Getpid() || p.state != "Z" {
			continue
		}
		if comm, err := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/comm"); err == nil && bytes.Equal(comm, self) {
			n++
		}
	}
	return n
}
