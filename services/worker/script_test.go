package worker

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// paddedScript is a shell script of exactly size bytes that prints its
// file name and arguments; a comment pads it.
func paddedScript(t testing.TB, size int) []byte {
	t.Helper()
	head := "#!/bin/sh\necho \"$(basename \"$0\") $*\"\nexit 0\n#"
	return []byte(head + strings.Repeat("s", size-len(head)-1) + "\n")
}

// TestScriptSentWithJob sends a 100 KiB script to a worker whose scripts
// directory is empty, over every protocol (JSON carries it as base64),
// with StartJob and RunJob: it runs, and the status describes it without
// its content.
func TestScriptSentWithJob(t *testing.T) {
	t.Parallel()
	tw := startWorker(t, nil, nil)
	script := paddedScript(t, 100<<10)
	sum := sha256.Sum256(script)
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			c := tw.client(p.opts...)
			req := &batonv1.WorkerServiceStartJobRequest{Command: "sh", Script: script, ScriptName: "deploy.sh", Args: []string{"x", "y"}}
			check := func(what string, st *batonv1.JobStatus) {
				t.Helper()
				spec := st.GetSpec()
				if spec.GetScriptName() != "deploy.sh" || spec.GetScriptSize() != int64(len(script)) || spec.GetScriptSha256() != hex.EncodeToString(sum[:]) || spec.GetPath() != "" {
					t.Errorf("%s: spec %v", what, spec)
				}
			}
			start, err := c.StartJob(t.Context(), connect.NewRequest(req))
			if err != nil {
				t.Fatal(err)
			}
			check("started", start.Msg.GetStatus())
			stdout, _, final := collect(t.Context(), t, c, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: start.Msg.GetJobId(), Follow: true})
			if string(stdout) != "deploy.sh x y\n" || final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
				t.Errorf("StartJob: %v, stdout %q", final.GetState(), stdout)
			}
			check("ended", final)

			stream, err := c.RunJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceRunJobRequest{Job: req}))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			var last *batonv1.JobStatus
			for stream.Receive() {
				out.Write(stream.Msg().GetChunk().GetData())
				if st := stream.Msg().GetStatus(); st != nil {
					last = st
				}
			}
			if err := stream.Err(); err != nil || out.String() != "deploy.sh x y\n" || last.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
				t.Errorf("RunJob: %v, %q, %v", last.GetState(), out.String(), err)
			}
			check("run", last)
		})
	}
	if entries, _ := os.ReadDir(tw.scriptsDir); len(entries) != 0 {
		t.Errorf("the scripts directory has %d entries", len(entries))
	}
}

// TestScriptRefused: a script over 1 MiB (or with the rest of the spec
// over it), beside a path, or named to escape the job's directory is
// refused with invalid_argument saying why; a message over the read limit
// with resource_exhausted. Nothing is recorded or written.
func TestScriptRefused(t *testing.T) {
	t.Parallel()
	tw := startWorker(t, map[string]string{"ok.sh": "#!/bin/sh\n"}, nil)
	small := []byte("echo hi\n")
	for _, tc := range []struct {
		name string
		req  *batonv1.WorkerServiceStartJobRequest
		code connect.Code
		says string
	}{
		{"2 MiB", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Script: make([]byte, 2<<20)}, connect.CodeInvalidArgument, "1048576"},
		{"1 MiB and args", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Script: make([]byte, 1<<20), Args: []string{"x"}}, connect.CodeInvalidArgument, "together must be at most 1048576 bytes"},
		{"with a path", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Script: small, Path: "ok.sh"}, connect.CodeInvalidArgument, "path must be empty"},
		{"dot dot", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Script: small, ScriptName: ".."}, connect.CodeInvalidArgument, "not a file name"},
		{"slash", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Script: small, ScriptName: "a/b"}, connect.CodeInvalidArgument, "script_name"},
		{"name only", &batonv1.WorkerServiceStartJobRequest{Command: "sh", ScriptName: "x.sh"}, connect.CodeInvalidArgument, "needs a script"},
		{"off the allow-list", &batonv1.WorkerServiceStartJobRequest{Command: "python2", Script: small}, connect.CodePermissionDenied, "allow-listed"},
		{"over the read limit", &batonv1.WorkerServiceStartJobRequest{Command: "sh", Script: make([]byte, 5<<20)}, connect.CodeResourceExhausted, "larger than"},
	} {
		for _, p := range protocols {
			_, err := tw.client(p.opts...).StartJob(t.Context(), connect.NewRequest(tc.req))
			if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("%s over %s: %v, want %v saying %q", tc.name, p.name, err, tc.code, tc.says)
			}
		}
	}
	if jobs := tw.Runner().List(); len(jobs) != 0 {
		t.Errorf("%d jobs recorded after refused starts", len(jobs))
	}
	for _, dir := range []string{"jobs", "home"} {
		if entries, _ := os.ReadDir(filepath.Join(tw.dataDir, dir)); len(entries) != 0 {
			t.Errorf("%s: %d entries left behind", dir, len(entries))
		}
	}
}
