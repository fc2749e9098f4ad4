package main

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// The clients in other languages (clients/) are generated from proto/ with
// the pinned buf and their own toolchains, then run against `baton dev` as
// the README shows. Both are generated in a temporary copy, so the
// repository stays as it was.

// clientJob is a job the examples run: its output comes in pieces over
// both streams while the example follows it.
var clientJob = []string{"sh", "-c", "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three"}

// exampleResult is what an example run should end with: its exit code, its
// stdout when stdout is set, and lines its stderr holds.
type exampleResult struct {
	code   int
	stdout string
	stderr []string
}

// succeeded is clientJob's result: its stdout, its stderr among the
// example's own lines, and the final state.
var succeeded = exampleResult{code: 0, stdout: "one\nthree\n", stderr: []string{"two\n", "JOB_STATE_SUCCEEDED"}}

// TestClientsTypeScript generates the Connect-ES client with protoc-gen-es
// from package-lock.json and runs clients/typescript/run-job.mjs with Node
// over each protocol: it starts a job, follows its output to the end and
// exits with the job's status. Without Node 20 or later it skips, unless
// CI is set.
func TestClientsTypeScript(t *testing.T) {
	t.Parallel()
	node := requireNode(t)
	npm := requireTool(t, ciHasNode, "npm", "npm (it comes with Node)")
	repo := repoRoot(t)
	dir := copyClient(t, repo, "typescript")

	cache := npmCache(t)
	install := exec.Command(npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline")
	install.Dir = dir
	install.Env = append(os.Environ(), "npm_config_cache="+cache, "npm_config_update_notifier=false")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
	// npm puts node_modules/.bin on PATH for `npm run generate`; buf finds
	// protoc-gen-es there.
	bufGenerate(t, repo, dir, filepath.Join(dir, "node_modules", ".bin"))
	if _, err := os.Stat(filepath.Join(dir, "gen", "buf", "validate", "validate_pb.js")); err != nil {
		t.Fatalf("buf/validate is not generated: %v", err)
	}

	url := "http://" + startDevForClients(t)
	tests := []struct {
		name     string
		protocol string
		args     []string
		want     exampleResult
	}{
		{"connect", "connect", clientJob, succeeded},
		{"grpc", "grpc", clientJob, succeeded},
		{"grpc-web", "grpc-web", clientJob, succeeded},
		{"a failing job", "connect", []string{"sh", "-c", "exit 3"}, exampleResult{code: 3, stderr: []string{"JOB_STATE_FAILED"}}},
		{"a command off the allow-list", "grpc", []string{"no-such-command"}, exampleResult{code: 1, stderr: []string{"[permission_denied]"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(node, append([]string{"run-job.mjs", "--protocol", tt.protocol, "--"}, tt.args...)...)
			cmd.Dir = dir
			cmd.Env = append(environWithoutBaton(), "BATON_CLIENT_SCHEDULER="+url)
			checkExample(t, cmd, tt.want)
		})
	}
}

// TestClientsPython generates the grpcio client with protoc's python and
// pyi generators and grpc_python_plugin, and runs clients/python/run_job.py
// over gRPC. It skips where those are missing (Debian: apt-get install
// python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc);
// CI installs them (.ci/run), so it fails there instead.
func TestClientsPython(t *testing.T) {
	t.Parallel()
	python := requirePython(t)
	requireTool(t, ciHasGRPCIO, "protoc", "protoc (Debian: protobuf-compiler)")
	plugin := requireTool(t, ciHasGRPCIO, "grpc_python_plugin", "grpc_python_plugin (Debian: protobuf-compiler-grpc)")
	repo := repoRoot(t)
	dir := copyClient(t, repo, "python")
	bufGenerate(t, repo, dir, filepath.Dir(plugin))
	if _, err := os.Stat(filepath.Join(dir, "gen", "buf", "validate", "validate_pb2.py")); err != nil {
		t.Fatalf("buf/validate is not generated: %v", err)
	}

	url := "http://" + startDevForClients(t)
	cmd := exec.Command(python, append([]string{"run_job.py", "--"}, clientJob...)...)
	cmd.Dir = dir
	cmd.Env = append(environWithoutBaton(), "BATON_CLIENT_SCHEDULER="+url, "PYTHONDONTWRITEBYTECODE=1")
	checkExample(t, cmd, succeeded)
}

// What CI machines have: a test whose toolchain CI has must not skip there.
const (
	ciHasNode   = true // node and npm
	ciHasGRPCIO = true // grpcio, protobuf, protoc and grpc_python_plugin
)

// requireTool returns the path of a program on PATH; see toolchainMissing
// for what happens without it.
func requireTool(t *testing.T, ciHas bool, name, what string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		toolchainMissing(t, ciHas, what+" not found on PATH")
	}
	return p
}

// toolchainMissing ends a test whose toolchain is absent: it skips, unless
// CI is set and CI machines have the toolchain, where it fails rather than
// pass silently.
func toolchainMissing(t *testing.T, ciHas bool, why string) {
	t.Helper()
	if ciHas && os.Getenv("CI") != "" {
		t.Fatal(why + ", and CI is set")
	}
	t.Skip(why)
}

// requireNode returns node's path if it is version 20 or later, the oldest
// the pinned Connect-ES packages support.
func requireNode(t *testing.T) string {
	t.Helper()
	node := requireTool(t, ciHasNode, "node", "node (Node.js 20 or later)")
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		t.Fatalf("node --version: %v", err)
	}
	v := strings.TrimPrefix(strings.TrimSpace(string(out)), "v")
	major, _, _ := strings.Cut(v, ".")
	if n, err := strconv.Atoi(major); err != nil || n < 20 {
		toolchainMissing(t, ciHasNode, "node "+v+" is older than 20")
	}
	return node
}

// requirePython returns a python3 that imports grpc and protobuf: the one
// on PATH, or the system's, which is where Debian's packages go when a
// version manager's python3 comes first on PATH.
func requirePython(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"python3", "/usr/bin/python3"} {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		if exec.Command(p, "-c", "import grpc, google.protobuf").Run() == nil {
			return p
		}
	}
	toolchainMissing(t, ciHasGRPCIO, "no python3 with grpcio and protobuf (pip install grpcio protobuf, or Debian's python3-grpcio python3-protobuf)")
	return ""
}

// repoRoot is the repository root.
func repoRoot(t *testing.T) string {
	t.Helper()
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

// copyClient copies clients/<name> into a temporary directory, without
// what a developer may have generated or installed there.
func copyClient(t *testing.T, repo, name string) string {
	t.Helper()
	src := filepath.Join(repo, "clients", name)
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		switch {
		case rel == ".":
			return nil
		case d.IsDir() && (d.Name() == "node_modules" || d.Name() == "gen" || d.Name() == "__pycache__"):
			return filepath.SkipDir
		case d.IsDir():
			return os.Mkdir(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// npmCache is npm's cache for these tests: kept between runs in the user's
// cache directory, so that a warm run installs without the network.
func npmCache(t *testing.T) string {
	t.Helper()
	if dir, err := os.UserCacheDir(); err == nil {
		cache := filepath.Join(dir, "baton-tests", "npm")
		if os.MkdirAll(cache, 0o700) == nil {
			return cache
		}
	}
	return t.TempDir()
}

// protodeps runs tools/protodeps.sh once per test binary, when the
// symlink to validate.proto is missing (a fresh clone).
var protodeps = sync.OnceValues(func() ([]byte, error) {
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(repo, ".protodeps", "protovalidate", "buf", "validate", "validate.proto")); err == nil {
		return nil, nil
	}
	cmd := exec.Command(filepath.Join(repo, "tools", "protodeps.sh"))
	cmd.Dir = repo
	return cmd.CombinedOutput()
})

// bufGenerate runs the client's buf.gen.yaml from the repository root, as
// the README does, with the pinned buf, writing into dir/gen. pluginDir
// goes first on PATH.
func bufGenerate(t *testing.T, repo, dir, pluginDir string) {
	t.Helper()
	if out, err := protodeps(); err != nil {
		t.Fatalf("tools/protodeps.sh: %v\n%s", err, out)
	}
	cmd := exec.Command("go", "tool", "-modfile=tools/go.mod", "buf", "generate",
		"--template", filepath.Join(dir, "buf.gen.yaml"), "-o", dir)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "PATH="+pluginDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("buf generate: %v\n%s", err, out)
	}
}

// startDevForClients starts `baton dev` in a data directory of its own and
// returns its plain HTTP address once both workers are READY. Ctrl-C stops
// it when the test ends.
func startDevForClients(t *testing.T) string {
	t.Helper()
	bin := e2e.SharedBaton(t)
	home := e2e.JobsTempDir(t)
	addr, httpAddr, port := e2e.FreeAddr(t), e2e.FreeAddr(t), e2e.FreePortPair(t)
	out := &e2e.LockedBuffer{}
	dev := exec.Command(bin, "dev", "--data-dir", filepath.Join(home, "dev"),
		"--addr", addr, "--http-addr", httpAddr, "--worker-port", strconv.Itoa(port))
	dev.Dir = repoRoot(t)
	dev.Env = append([]string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	dev.Stdout, dev.Stderr = out, out
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = dev.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = dev.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Errorf("baton dev did not stop after Ctrl-C\n%s", out.String())
			_ = dev.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("baton dev:\n%s", out.String())
		}
	})

	url := "http://" + httpAddr + "/baton.v1.SchedulerService/ListWorkers"
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if readyWorkers(url) == 2 {
			return httpAddr
		}
		select {
		case <-done:
			t.Fatalf("baton dev exited\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dev cluster did not get two READY workers\n%s", out.String())
		}
	}
}

// readyWorkers counts the READY workers ListWorkers reports, or returns -1
// while the scheduler does not answer.
func readyWorkers(url string) int {
	res, err := http.Post(url, "application/json", strings.NewReader("{}"))
	if err != nil {
		return -1
	}
	defer res.Body.Close()
	var body struct {
		Workers []struct {
			State string `json:"state"`
		} `json:"workers"`
	}
	if res.StatusCode != http.StatusOK || json.NewDecoder(res.Body).Decode(&body) != nil {
		return -1
	}
	n := 0
	for _, w := range body.Workers {
		if w.State == "WORKER_STATE_READY" {
			n++
		}
	}
	return n
}

// environWithoutBaton is the test's environment without BATON_ variables,
// which would point the examples elsewhere (a developer's
// BATON_CLIENT_SCHEDULER, say).
func environWithoutBaton() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BATON_") {
			env = append(env, kv)
		}
	}
	return env
}

// checkExample runs an example client, bounded in time, and compares how
// it ends with want.
func checkExample(t *testing.T, cmd *exec.Cmd, want exampleResult) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(60*time.Second, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	code := e2e.ExitCode(t, cmd.Wait())
	ok := code == want.code && (want.stdout == "" || stdout.String() == want.stdout)
	for _, s := range want.stderr {
		ok = ok && strings.Contains(stderr.String(), s)
	}
	if !ok {
		t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr holding %q",
			strings.Join(cmd.Args, " "), code, stdout.String(), stderr.String(), want.code, want.stdout, want.stderr)
	}
}
