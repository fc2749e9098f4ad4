package scheduler_test

import (
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestSpecSizeIsBounded: each arg and env value may be 8 KiB, but the spec
// as a whole is bounded at 256 KiB, so that no job's record or status can
// crowd the messages that carry it. A spec over the bound is refused before
// anything is stored or started; one just under it runs.
func TestSpecSizeIsBounded(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", nil)
	startWorker(t, "w1", s, nil)
	waitWorkers(t, s.client, stateReady, "w1")
	arg := strings.Repeat("a", 8192)
	args := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = arg
		}
		return out
	}
	env := func(n int) map[string]string {
		out := map[string]string{}
		for i := range n {
			out[fmt.Sprintf("V%03d", i)] = arg
		}
		return out
	}
	for _, tc := range []struct {
		name string
		req  *batonv1.StartJobRequest
		ok   bool
	}{
		{"every field at its own maximum", &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Args: args(256), Env: env(128)}, false},
		{"args over 256 KiB", &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Args: args(33)}, false},
		{"args and env over 256 KiB together", &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Args: args(16), Env: env(17)}, false},
		{"just under 256 KiB", &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Args: append([]string{"-c", "exit 0"}, args(31)...)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := s.client.StartJob(t.Context(), connect.NewRequest(tc.req))
			if tc.ok {
				if err != nil {
					t.Fatalf("StartJob: %v", err)
				}
				waitFor(t, "the job to end", func() bool { return queryJob(t, s.client, res.Msg.GetJobId()).GetDone() })
				return
			}
			if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "262144 bytes") {
				t.Errorf("StartJob: %v, want invalid_argument naming the 262144-byte bound", err)
			}
		})
	}
	list, err := s.client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.Msg.GetJobs()); n != 1 {
		t.Errorf("%d jobs stored, want only the one under the bound", n)
	}
}
