package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

const countScript = "#!/bin/sh\nfor i in 1 2 3; do echo $i; done\necho oops >&2\necho done\n"

// collect streams a job's output to the end and returns the bytes per
// stream, the order of streams seen, and the final status.
func collect(ctx context.Context, t testing.TB, c batonv1connect.WorkerServiceClient, req *batonv1.WorkerServiceStreamJobOutputRequest) (stdout, stderr []byte, final *batonv1.JobStatus) {
	t.Helper()
	stream, err := c.StreamJobOutput(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var out, errb bytes.Buffer
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *batonv1.WorkerServiceStreamJobOutputResponse_Chunk:
			if final != nil {
				t.Fatal("chunk after status")
			}
			if ev.Chunk.GetStream() == batonv1.OutputStream_OUTPUT_STREAM_STDERR {
				errb.Write(ev.Chunk.GetData())
			} else {
				out.Write(ev.Chunk.GetData())
			}
		case *batonv1.WorkerServiceStreamJobOutputResponse_Status:
			final = ev.Status
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if final == nil {
		t.Fatal("stream ended without a status")
	}
	return out.Bytes(), errb.Bytes(), final
}

func TestJobLifecycleOverEveryProtocol(t *testing.T) {
	t.Parallel()
	tw := startWorker(t, map[string]string{"count.sh": countScript}, nil)
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			c := tw.client(p.opts...)
			ctx := t.Context()
			start, err := c.StartJob(ctx, connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "count.sh"}))
			if err != nil {
				t.Fatal(err)
			}
			id := start.Msg.GetJobId()
			if start.Msg.GetStatus().GetState() != batonv1.JobState_JOB_STATE_RUNNING && !isTerminal(start.Msg.GetStatus().GetState()) {
				t.Fatalf("state after start = %v", start.Msg.GetStatus().GetState())
			}
			stdout, stderr, final := collect(ctx, t, c, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: id, Follow: true})
			if got, want := string(stdout), "1\n2\n3\ndone\n"; got != want {
				t.Errorf("stdout = %q, want %q", got, want)
			}
			if got, want := string(stderr), "oops\n"; got != want {
				t.Errorf("stderr = %q, want %q", got, want)
			}
			if final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || !(final.ExitCode != nil) || final.GetExitCode() != 0 {
				t.Errorf("final = %v exit %v, want SUCCEEDED exit 0", final.GetState(), final.GetExitCode())
			}
			q, err := c.QueryJob(ctx, connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: id}))
			if err != nil {
				t.Fatal(err)
			}
			if !q.Msg.GetDone() || q.Msg.GetError() || q.Msg.GetErrorText() != "" {
				t.Errorf("query = done %v error %v %q, want done and no error", q.Msg.GetDone(), q.Msg.GetError(), q.Msg.GetErrorText())
			}
			// What the run cost, as the runtime measured it at the end.
			st := q.Msg.GetStatus()
			if u := st.GetUsage(); (u.GetSource() != "cgroup" && u.GetSource() != "rusage") || u.GetCpuUser() == nil ||
				u.GetWall().AsDuration() != st.GetEndedAt().AsTime().Sub(st.GetStartedAt().AsTime()) {
				t.Errorf("usage = %v, want one measured, with the wall time from start to end", u)
			}
			// Resume from an offset in the one-stream view.
			tail, _, _ := collect(ctx, t, c, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: id, Offset: 4, Stream: batonv1.OutputStream_OUTPUT_STREAM_STDOUT})
			if got, want := string(tail), "3\ndone\n"; got != want {
				t.Errorf("stdout from offset 4 = %q, want %q", got, want)
			}
		})
	}
}

func isTerminal(s batonv1.JobState) bool {
	return s >= batonv1.JobState_JOB_STATE_SUCCEEDED
}

func TestExitTaxonomy(t *testing.T) {
	t.Parallel()
	tw := startWorker(t, map[string]string{
		"noshebang": "#!/nonexistent/interpreter\n",
		"plain.txt": "echo hi\n",
	}, nil)
	if err := os.Chmod(filepath.Join(tw.scriptsDir, "plain.txt"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := tw.client()
	tests := []struct {
		name     string
		req      *batonv1.WorkerServiceStartJobRequest
		state    batonv1.JobState
		exitCode int32 // -1: none
		signal   string
	}{
		{"exit 0", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Args: []string{"-c", "exit 0"}}, batonv1.JobState_JOB_STATE_SUCCEEDED, 0, ""},
		{"exit 3", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Args: []string{"-c", "exit 3"}}, batonv1.JobState_JOB_STATE_FAILED, 3, ""},
		{"killed", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Args: []string{"-c", "kill -KILL $$"}}, batonv1.JobState_JOB_STATE_FAILED, -1, "SIGKILL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, err := c.StartJob(t.Context(), connect.NewRequest(tt.req))
			if err != nil {
				t.Fatal(err)
			}
			_, _, final := collect(t.Context(), t, c, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: res.Msg.GetJobId(), Follow: true})
			if final.GetState() != tt.state {
				t.Errorf("state = %v, want %v (%s)", final.GetState(), tt.state, final.GetReason())
			}
			if tt.exitCode >= 0 && (!(final.ExitCode != nil) || final.GetExitCode() != tt.exitCode) {
				t.Errorf("exit code = %v (set %v), want %d", final.GetExitCode(), (final.ExitCode != nil), tt.exitCode)
			}
			if tt.exitCode < 0 && (final.ExitCode != nil) {
				t.Errorf("exit code set to %d for a signalled job", final.GetExitCode())
			}
			if final.GetSignal() != tt.signal {
				t.Errorf("signal = %q, want %q", final.GetSignal(), tt.signal)
			}
		})
	}

	t.Run("exec failures are synchronous", func(t *testing.T) {
		tests := []struct {
			name string
			req  *batonv1.WorkerServiceStartJobRequest
			code connect.Code
		}{
			{"missing interpreter", &batonv1.WorkerServiceStartJobRequest{Command: "noshebang"}, connect.CodeFailedPrecondition},
			{"not executable", &batonv1.WorkerServiceStartJobRequest{Command: "plain.txt"}, connect.CodePermissionDenied},
		}
		for _, tt := range tests {
			_, err := c.StartJob(t.Context(), connect.NewRequest(tt.req))
			if connect.CodeOf(err) != tt.code {
				t.Errorf("%s: code = %v (%v), want %v", tt.name, connect.CodeOf(err), err, tt.code)
			}
		}
	})
}

func TestUntrustedInputIsRefused(t *testing.T) {
	t.Parallel()
	outside := t.TempDir()
	marker := filepath.Join(outside, "ran")
	evil := "#!/bin/sh\ntouch " + marker + "\n"
	if err := os.WriteFile(filepath.Join(outside, "evil.sh"), []byte(evil), 0o755); err != nil {
		t.Fatal(err)
	}
	tw := startWorker(t, map[string]string{"ok.sh": "#!/bin/sh\ntouch " + marker + "\n"}, nil)
	links := map[string]string{
		"escape.sh": filepath.Join(outside, "evil.sh"),
		"rel.sh":    "../../" + filepath.Base(outside) + "/evil.sh",
		"shell":     "/bin/sh",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(tw.scriptsDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(tw.scriptsDir, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		req   *batonv1.WorkerServiceStartJobRequest
		codes []connect.Code
	}{
		{"dotdot", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "../../etc/passwd"}, []connect.Code{connect.CodeInvalidArgument}},
		{"absolute", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "/etc/passwd"}, []connect.Code{connect.CodeInvalidArgument}},
		{"inner dotdot", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "scripts/../../x"}, []connect.Code{connect.CodeInvalidArgument, connect.CodeNotFound}},
		{"nul byte", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "a\x00b"}, []connect.Code{connect.CodeInvalidArgument}},
		{"huge path", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: strings.Repeat("a", 5000)}, []connect.Code{connect.CodeInvalidArgument}},
		{"directory", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "dir"}, []connect.Code{connect.CodeInvalidArgument}},
		{"missing script", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "nope.sh"}, []connect.Code{connect.CodeNotFound}},
		{"symlink escaping root", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "escape.sh"}, []connect.Code{connect.CodeInvalidArgument, connect.CodePermissionDenied}},
		{"relative symlink escaping root", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "rel.sh"}, []connect.Code{connect.CodeInvalidArgument, connect.CodePermissionDenied}},
		{"symlink to a shell as command", &batonv1.WorkerServiceStartJobRequest{Command: "shell", Args: []string{"-c", "touch " + marker}}, []connect.Code{connect.CodeInvalidArgument, connect.CodePermissionDenied}},
		{"command off the allow-list", &batonv1.WorkerServiceStartJobRequest{Command: "python2", Path: "ok.sh"}, []connect.Code{connect.CodePermissionDenied}},
		{"absolute command", &batonv1.WorkerServiceStartJobRequest{Command: "/bin/sh", Path: "ok.sh"}, []connect.Code{connect.CodePermissionDenied, connect.CodeInvalidArgument}},
		{"command via dot path", &batonv1.WorkerServiceStartJobRequest{Command: "../sh", Path: "ok.sh"}, []connect.Code{connect.CodePermissionDenied, connect.CodeInvalidArgument}},
		{"empty command", &batonv1.WorkerServiceStartJobRequest{Command: ""}, []connect.Code{connect.CodeInvalidArgument}},
		{"bad env name", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Env: map[string]string{"A=B": "x"}}, []connect.Code{connect.CodeInvalidArgument}},
		{"bad job id", &batonv1.WorkerServiceStartJobRequest{JobId: "../../x", Command: "sh"}, []connect.Code{connect.CodeInvalidArgument}},
		{"negative timeout", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Timeout: durationpb.New(-time.Second)}, []connect.Code{connect.CodeInvalidArgument}},
	}
	c := tw.client(connect.WithProtoJSON())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.StartJob(t.Context(), connect.NewRequest(tt.req))
			if !slices.Contains(tt.codes, connect.CodeOf(err)) {
				t.Errorf("code = %v (%v), want one of %v", connect.CodeOf(err), err, tt.codes)
			}
			if err != nil && strings.Contains(err.Error(), tw.scriptsDir) {
				t.Errorf("error leaks the host path: %v", err)
			}
		})
	}
	// Nothing started, nothing written.
	if jobs := tw.Runner().List(); len(jobs) != 0 {
		t.Errorf("%d jobs recorded after refused starts", len(jobs))
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused script ran (marker: %v)", err)
	}
	entries, _ := os.ReadDir(filepath.Join(tw.dataDir, "jobs"))
	if len(entries) != 0 {
		t.Errorf("%d job directories left behind", len(entries))
	}
}

func TestArgsAndEnvironment(t *testing.T) {
	t.Setenv("WORKER_SECRET", "hunter2")
	tw := startWorker(t, map[string]string{
		"args.sh": "#!/bin/sh\nfor a in \"$@\"; do printf '[%s]\\n' \"$a\"; done\n",
	}, nil)
	c := tw.client(connect.WithGRPC())
	args := []string{"-x", "a;b", "$(id)", "line1\nline2", "--flag=`whoami`"}
	res, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "sh", Path: "args.sh", Args: args}))
	if err != nil {
		t.Fatal(err)
	}
	out, _, _ := collect(t.Context(), t, c, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: res.Msg.GetJobId(), Follow: true})
	var want strings.Builder
	for _, a := range args {
		fmt.Fprintf(&want, "[%s]\n", a)
	}
	if string(out) != want.String() {
		t.Errorf("job saw args\n%s\nwant\n%s", out, want.String())
	}

	// The job's environment: the base, what was asked for, nothing else.
	res, err = c.StartJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{
		Command: "sh", Args: []string{"-c", "cat /proc/$$/environ | tr '\\0' '\\n'"},
		Env: map[string]string{"GREETING": "hello"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	out, _, _ = collect(t.Context(), t, c, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: res.Msg.GetJobId(), Follow: true})
	var names []string
	for line := range strings.Lines(string(out)) {
		name, _, _ := strings.Cut(line, "=")
		names = append(names, name)
	}
	slices.Sort(names)
	if want := []string{"BATON_JOB_ID", "GREETING", "HOME", "LANG", "PATH"}; !slices.Equal(names, want) {
		t.Errorf("job environment has %v, want exactly %v", names, want)
	}
	if strings.Contains(string(out), "hunter2") {
		t.Error("the worker's secret reached the job")
	}
}

func TestStopKillsTheWholeTree(t *testing.T) {
	t.Parallel()
	pidFile := filepath.Join(t.TempDir(), "pids")
	script := "#!/bin/bash\ntrap '' TERM\n(trap '' TERM; sleep 1000) &\necho $! >> " + pidFile + "\nsetsid sleep 1000 &\necho $! >> " + pidFile + "\necho ready\nwait\n"
	tw := startWorker(t, map[string]string{"stubborn.sh": script}, nil)
	c := tw.client(connect.WithGRPCWeb())
	res, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "bash", Path: "stubborn.sh"}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetJobId()
	waitForOutput(t, c, id, "ready\n")
	pids := readPids(t, pidFile)
	if len(pids) != 2 {
		t.Fatalf("pid file lists %v, want the child and the setsid grandchild", pids)
	}
	child, grandchild := pids[0], pids[1]
	// Start times tell these processes from later ones given the same pid.
	childStart, grandchildStart := startTime(child), startTime(grandchild)

	var wg sync.WaitGroup
	finals := make([]*batonv1.JobStatus, 2)
	for i := range finals {
		wg.Go(func() {
			stop, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStopJobRequest{JobId: id, StoppedBy: "tester"}))
			if err != nil {
				t.Errorf("stop %d: %v", i, err)
				return
			}
			finals[i] = stop.Msg.GetStatus()
		})
	}
	wg.Wait()
	for _, st := range finals {
		if st.GetState() != batonv1.JobState_JOB_STATE_STOPPED || st.GetSignal() != "SIGKILL" || st.GetStoppedBy() != "tester" {
			t.Errorf("after stop: state %v signal %q by %q, want STOPPED SIGKILL tester", st.GetState(), st.GetSignal(), st.GetStoppedBy())
		}
	}
	// The child stays in the job's process group, which Stop kills with
	// any containment.
	if !gone(child, childStart) {
		t.Errorf("process %d in the job's process group survived Stop", child)
	}
	t.Run("setsid grandchild killed", func(t *testing.T) {
		if cont := finals[0].GetContainment(); cont != "cgroup-v2" {
			if !gone(grandchild, grandchildStart) {
				_ = syscall.Kill(grandchild, syscall.SIGKILL)
			}
			t.Skipf("containment %q: without a cgroup v2 a setsid grandchild leaves the process group and survives Stop (the known escape), so killing the whole tree cannot be shown here", cont)
		}
		if !gone(grandchild, grandchildStart) {
			t.Errorf("setsid grandchild %d survived Stop", grandchild)
		}
	})
	// Stopping a finished job changes nothing.
	again, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStopJobRequest{JobId: id, StoppedBy: "someone-else"}))
	if err != nil {
		t.Fatal(err)
	}
	if again.Msg.GetStatus().GetStoppedBy() != "tester" || !again.Msg.GetStatus().GetEndedAt().AsTime().Equal(finals[0].GetEndedAt().AsTime()) {
		t.Error("stopping a finished job changed its status")
	}
	_, err = c.StopJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStopJobRequest{JobId: "01890000-0000-7000-8000-000000000000"}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("stop of an unknown job: %v, want NotFound", err)
	}
}

// waitForOutput follows a job until its output starts with want.
func waitForOutput(t *testing.T, c batonv1connect.WorkerServiceClient, id, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	stream, err := c.StreamJobOutput(ctx, connect.NewRequest(&batonv1.WorkerServiceStreamJobOutputRequest{JobId: id, Follow: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var got []byte
	for stream.Receive() {
		got = append(got, stream.Msg().GetChunk().GetData()...)
		if strings.HasPrefix(string(got), want) {
			return
		}
	}
	t.Fatalf("output %q never started with %q (%v)", got, want, stream.Err())
}

func readPids(t *testing.T, file string) []int {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for f := range strings.FieldsSeq(string(raw)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	return pids
}

// procStat returns the fields of /proc/pid/stat after the command name
// (state first), or nil if there is no such process.
func procStat(pid int) []string {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(stat[i+1:]))
}

// startTime is pid's start time in clock ticks since boot (proc(5) field
// 22), "" if there is no such process.
func startTime(pid int) string {
	if f := procStat(pid); len(f) > 19 {
		return f[19]
	}
	return ""
}

// gone waits up to 5s for the process pid that started at start to exit:
// it is gone once pid is free, a zombie, or another process's (pid_max is
// small here and pids are reused within seconds).
func gone(pid int, start string) bool {
	deadline := time.Now().Add(5 * time.Second)
	for {
		f := procStat(pid)
		if len(f) <= 19 || f[0] == "Z" || f[19] != start {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestManyFollowersGetIdenticalBytes is RELIABILITY.md O1 through the RPC
// layer: 100 followers over all four protocols, 10 MB of binary, each must
// get exactly the bytes the job wrote. Those come from the test's own seeded
// generator, so a fault that corrupts the stored file and the stream alike
// is caught. Under the race detector the job writes 1 MB, since 1 GB of
// streaming takes minutes there; .ci/run also runs this test without -race
// at full size.
func TestManyFollowersGetIdenticalBytes(t *testing.T) {
	t.Parallel()
	size := 10 << 20
	if raceEnabled {
		size = 1 << 20
	}
	data := seededBytes(1, size)
	if bytes.IndexByte(data, 0) < 0 || utf8.Valid(data) {
		t.Fatal("the generated output should hold NUL bytes and invalid UTF-8")
	}
	want := sha256.Sum256(data)
	tw := startWorker(t, map[string]string{
		"random.sh":  piecewiseCat(size),
		"random.bin": string(data),
	}, nil)
	c := tw.client()
	res, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{
		Command: "sh", Path: "random.sh", Args: []string{filepath.Join(tw.scriptsDir, "random.bin")},
	}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetJobId()
	followers := envInt("FOLLOWERS", 100)
	sums := make([][sha256.Size]byte, followers)
	var wg sync.WaitGroup
	for i := range followers {
		p := protocols[i%len(protocols)]
		wg.Go(func() {
			out, _, final := collect(t.Context(), t, tw.client(p.opts...), &batonv1.WorkerServiceStreamJobOutputRequest{JobId: id, Follow: true})
			if final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
				t.Errorf("follower %d: final state %v", i, final.GetState())
			}
			if len(out) != size {
				t.Errorf("follower %d (%s): %d bytes, want %d", i, p.name, len(out), size)
			}
			sums[i] = sha256.Sum256(out)
		})
	}
	wg.Wait()
	for i, sum := range sums {
		if sum != want {
			t.Errorf("follower %d (%s): sha256 differs from the bytes the job wrote", i, protocols[i%len(protocols)].name)
		}
	}
}

// seededBytes returns n bytes of a ChaCha8 stream seeded with seed: binary
// output (NUL bytes, invalid UTF-8) that a test knows without reading
// anything the worker stored.
func seededBytes(seed byte, n int) []byte {
	var key [32]byte
	key[0] = seed
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// piecewiseCat is a script that writes the file named by its first argument
// to stdout in 64 KiB pieces, one dd per piece, so that followers read a job
// that is still writing.
func piecewiseCat(size int) string {
	return fmt.Sprintf("#!/bin/sh\ni=0\nwhile [ $i -lt %d ]; do dd if=\"$1\" bs=65536 skip=$i count=1 2>/dev/null || exit 1; i=$((i+1)); done\n", (size+65535)/65536)
}

func TestStartJobIsIdempotentOnJobID(t *testing.T) {
	t.Parallel()
	tw := startWorker(t, nil, nil)
	c := tw.client()
	req := &batonv1.WorkerServiceStartJobRequest{JobId: "01890000-0000-7000-8000-0000000000aa", Command: "sh", Args: []string{"-c", "sleep 5"}}
	first, err := c.StartJob(t.Context(), connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.StartJob(t.Context(), connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	if first.Msg.GetStatus().GetPid() != second.Msg.GetStatus().GetPid() || first.Msg.GetJobId() != second.Msg.GetJobId() {
		t.Error("a repeated StartJob started a second process")
	}
	req.Args = []string{"-c", "sleep 6"}
	_, err = c.StartJob(t.Context(), connect.NewRequest(req))
	if connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Errorf("same id, different spec: %v, want AlreadyExists", err)
	}
	if _, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStopJobRequest{JobId: req.JobId})); err != nil {
		t.Fatal(err)
	}
}

func TestListJobsPages(t *testing.T) {
	t.Parallel()
	tw := startWorker(t, nil, nil)
	c := tw.client(connect.WithProtoJSON())
	const n = 25
	for i := range n {
		_, err := c.StartJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "sh", Args: []string{"-c", "exit " + strconv.Itoa(i%2)}, Owner: "owner" + strconv.Itoa(i%2)}))
		if err != nil {
			t.Fatal(err)
		}
	}
	var seen []string
	token := ""
	for {
		res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.WorkerServiceListJobsRequest{PageSize: 7, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range res.Msg.GetJobs() {
			seen = append(seen, j.GetJobId())
		}
		token = res.Msg.GetNextPageToken()
		if token == "" {
			break
		}
	}
	if len(seen) != n {
		t.Fatalf("listed %d jobs over pages, want %d", len(seen), n)
	}
	if !slices.IsSortedFunc(seen, func(a, b string) int { return strings.Compare(b, a) }) {
		t.Error("jobs are not newest first")
	}
	res, err := c.ListJobs(t.Context(), connect.NewRequest(&batonv1.WorkerServiceListJobsRequest{Owner: "owner1"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Msg.GetJobs()) != n/2 {
		t.Errorf("owner filter: %d jobs, want %d", len(res.Msg.GetJobs()), n/2)
	}
	_, err = c.ListJobs(t.Context(), connect.NewRequest(&batonv1.WorkerServiceListJobsRequest{PageToken: "garbage!"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("bad page token: %v, want InvalidArgument", err)
	}
}
