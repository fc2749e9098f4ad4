package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestScriptSentWithTheJob runs the binaries: scripts sent with `baton
// run --script` on workers whose scripts directories are empty. A 100 KiB
// script prints what it was given and exits with its own code; a fan-out
// runs it on each worker; a 2 MiB script is refused, by the CLI before
// sending and by the scheduler's JSON API with invalid_argument, and
// leaves no job and no file on any worker.
func TestScriptSentWithTheJob(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{workers: []string{"w1", "w2"}})
	for _, w := range c.workers {
		scripts := filepath.Join(filepath.Dir(w.dataDir), "scripts")
		entries, _ := os.ReadDir(scripts)
		for _, e := range entries {
			if err := os.Remove(filepath.Join(scripts, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	e := newCLIEnv(t, c)
	dir := t.TempDir()
	head := "#!/bin/bash\necho \"$(basename \"$0\") got $# args: $1|$2 on $BATON_JOB_ID\" | cut -d' ' -f1-6\necho to-stderr >&2\nexit 7\n#"
	deploy := filepath.Join(dir, "deploy.sh")
	if err := os.WriteFile(deploy, []byte(head+strings.Repeat("x", 100<<10-len(head)-1)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.run(t, "run", "--worker", "w1", "--script", deploy, "a b", "c")
	if r.code != 7 || r.stdout != "deploy.sh got 2 args: a b|c\n" || r.stderr != "to-stderr\n" {
		t.Errorf("run --script: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	fan := filepath.Join(dir, "fan.sh")
	if err := os.WriteFile(fan, []byte("echo \"fan $1\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = e.run(t, "run", "--all", "--script", fan, "out")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	slices.Sort(lines)
	if r.code != 0 || !slices.Equal(lines, []string{"[w1] fan out", "[w2] fan out"}) {
		t.Errorf("run --all --script: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	id := strings.TrimSpace(e.run(t, "start", "--worker", "w2", "--script", fan).stdout)
	c.waitJobState(id, "JOB_STATE_SUCCEEDED", 30*time.Second)
	if r = e.run(t, "status", id); !strings.Contains(r.stdout, "fan.sh, sent with the job: 14 B, sha256 ") || !strings.Contains(r.stdout, "bash fan.sh") {
		t.Errorf("status of a job with a script:\n%s%s", r.stdout, r.stderr)
	}

	jobsBefore := len(c.listJobs())
	big := filepath.Join(dir, "big.sh")
	if err := os.WriteFile(big, bytes.Repeat([]byte("#"), 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if r = e.run(t, "run", "--script", big); r.code != 2 || !strings.Contains(r.stderr, "larger than 1 MiB") {
		t.Errorf("run --script of 2 MiB: exit %d, stderr %q", r.code, r.stderr)
	}
	body := fmt.Sprintf(`{"command":"bash","script":%q,"script_name":"big.sh"}`, base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("#"), 2<<20)))
	code, rpcErr, err := c.call("StartJob", body, nil)
	if err != nil || code != http.StatusBadRequest || rpcErr.Code != "invalid_argument" || !strings.Contains(rpcErr.Message, "at most 1048576 bytes") {
		t.Errorf("StartJob with a 2 MiB script: HTTP %d %+v, %v", code, rpcErr, err)
	}
	if n := len(c.listJobs()); n != jobsBefore {
		t.Errorf("%d jobs after the refused starts, want %d", n, jobsBefore)
	}
	for name, w := range c.workers {
		found, _ := filepath.Glob(filepath.Join(w.dataDir, "home", "*", "big.sh"))
		if len(found) != 0 {
			t.Errorf("worker %s has the refused script: %v", name, found)
		}
	}
}
