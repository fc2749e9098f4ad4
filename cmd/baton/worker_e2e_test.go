package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	"github.com/baton-run/baton/services/keeper"
)

// buildBaton compiles the binary once per test run.
func buildBaton(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "baton")
	cmd := e2e.BuildCommand(bin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestWorkerBinaryServesJSON runs `baton worker` as a real process and
// drives it the way the README does: JSON StartJob, a Connect-JSON stream of
// the output, then QueryJob; SIGTERM stops it cleanly.
func TestWorkerBinaryServesJSON(t *testing.T) {
	t.Parallel()
	bin := buildBaton(t)
	dir := e2e.JobsTempDir(t)
	scripts := filepath.Join(dir, "scripts")
	if err := os.MkdirAll(scripts, 0o755); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/bash\nfor i in 1 2 3; do echo $i; sleep 0.1; done\necho done\n"
	if err := os.WriteFile(filepath.Join(scripts, "count.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	w := startPlainWorker(t, bin, dir, "e2e", scripts)
	logs, exited := w.logs, w.exited
	base := "http://" + w.addr + "/baton.v1.WorkerService/"

	var started struct {
		JobID string `json:"jobId"`
	}
	if code := e2e.PostJSON(t, base+"StartJob", `{"command":"bash","path":"count.sh"}`, &started); code != 200 || started.JobID == "" {
		t.Fatalf("StartJob: HTTP %d, job %q\n%s", code, started.JobID, logs.String())
	}

	out, final := streamJSON(t, base+"StreamJobOutput", `{"job_id":"`+started.JobID+`","follow":true}`)
	if out != "1\n2\n3\ndone\n" {
		t.Errorf("streamed %q", out)
	}
	if final["state"] != "JOB_STATE_SUCCEEDED" {
		t.Errorf("final status %v", final)
	}

	var q struct {
		Done   bool `json:"done"`
		Error  bool `json:"error"`
		Status struct {
			State    string `json:"state"`
			ExitCode *int   `json:"exitCode"`
		} `json:"status"`
	}
	e2e.PostJSON(t, base+"QueryJob", `{"jobId":"`+started.JobID+`"}`, &q)
	if !q.Done || q.Error || q.Status.State != "JOB_STATE_SUCCEEDED" || q.Status.ExitCode == nil || *q.Status.ExitCode != 0 {
		t.Errorf("QueryJob = %+v", q)
	}

	var bad struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if code := e2e.PostJSON(t, base+"StartJob", `{"command":"bash","path":"../../etc/passwd"}`, &bad); code != 400 || bad.Code != "invalid_argument" {
		t.Errorf("escaping path: HTTP %d %+v", code, bad)
	}

	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("worker exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("worker did not exit after SIGTERM")
	}
	if !strings.Contains(logs.String(), `"procedure":"/baton.v1.WorkerService/StartJob"`) {
		t.Errorf("no access-log line for StartJob in:\n%s", logs.String())
	}
}

// plainWorker is a `baton worker` process in plain mode (h2c, no
// scheduler), with its log on stderr in logs; exited gets its end.
type plainWorker struct {
	addr   string
	cmd    *exec.Cmd
	exited chan error
	logs   *bytes.Buffer
}

// startPlainWorker starts bin as worker name with its data in dir/data and
// the scripts in scripts, and waits until it listens. It is stopped with
// SIGTERM when the test ends; a test that waits for its end itself puts
// the result back on exited.
func startPlainWorker(t *testing.T, bin, dir, name, scripts string) *plainWorker {
	t.Helper()
	w := &plainWorker{addr: e2e.FreeAddr(t), exited: make(chan error, 1), logs: &bytes.Buffer{}}
	config := fmt.Sprintf("[grpc_server]\naddr = %q\nuse_tls = false\n\n[worker]\nname = %q\ndata_dir = %q\nscripts_dir = %q\n\n[log]\nformat = \"json\"\n",
		w.addr, name, filepath.Join(dir, "data"), scripts)
	cfgFile := filepath.Join(dir, "worker.toml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	w.cmd = exec.Command(bin, "worker", "--config", cfgFile)
	w.cmd.Env = append([]string{"HOME=" + dir, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	w.cmd.Stderr = w.logs
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.exited <- w.cmd.Wait() }()
	t.Cleanup(func() {
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
		<-w.exited
		// SIGTERM leaves the jobs to the keeper; this ends them and it.
		if _, err := keeper.Decommission(context.Background(), filepath.Join(dir, "data")); err != nil {
			t.Errorf("decommission of %s: %v", name, err)
		}
	})
	e2e.WaitListening(t, w.addr)
	return w
}

// streamJSON calls a server-streaming procedure over the Connect protocol
// with JSON (the 5-byte envelope a browser would send) and returns the
// concatenated output and the final status.
func streamJSON(t *testing.T, url, body string) (string, map[string]any) {
	t.Helper()
	var frame bytes.Buffer
	frame.WriteByte(0)
	_ = binary.Write(&frame, binary.BigEndian, uint32(len(body)))
	frame.WriteString(body)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, &frame)
	req.Header.Set("Content-Type", "application/connect+json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	r := bufio.NewReader(res.Body)
	var out strings.Builder
	var final map[string]any
	for {
		var head [5]byte
		if _, err := io.ReadFull(r, head[:]); err != nil {
			t.Fatalf("stream ended without end-of-stream frame: %v", err)
		}
		msg := make([]byte, binary.BigEndian.Uint32(head[1:]))
		if _, err := io.ReadFull(r, msg); err != nil {
			t.Fatal(err)
		}
		if head[0]&2 != 0 { // end-of-stream: {} or {"error":…}
			if bytes.Contains(msg, []byte(`"error"`)) {
				t.Fatalf("stream error: %s", msg)
			}
			return out.String(), final
		}
		var ev struct {
			Chunk *struct {
				Data []byte `json:"data"`
			} `json:"chunk"`
			Status map[string]any `json:"status"`
		}
		if err := json.Unmarshal(msg, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Chunk != nil {
			out.Write(ev.Chunk.Data)
		}
		if ev.Status != nil {
			final = ev.Status
		}
	}
}
