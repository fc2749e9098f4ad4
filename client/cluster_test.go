package client_test

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/baton-run/baton/client"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// clusterClient returns a Client of the in-process cluster, closed when
// the test ends.
func clusterClient(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Schedulers: []string{schedulerAddr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestRunOnACluster runs jobs end to end through a real scheduler and
// worker: the output and the end a user sees.
func TestRunOnACluster(t *testing.T) {
	t.Parallel()
	c := clusterClient(t)
	tests := []struct {
		name      string
		script    string
		state     batonv1.JobState
		exit      int32
		out, errs string
	}{
		{"success", "echo out; echo err >&2", batonv1.JobState_JOB_STATE_SUCCEEDED, 0, "out\n", "err\n"},
		{"exit code", "echo partial; exit 3", batonv1.JobState_JOB_STATE_FAILED, 3, "partial\n", ""},
		{"binary output", `printf '\000\377\n'`, batonv1.JobState_JOB_STATE_SUCCEEDED, 0, "\x00\xff\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out, errs strings.Builder
			st, err := c.Run(t.Context(), &batonv1.StartJobRequest{WorkerId: "main", Command: "sh", Args: []string{"-c", tt.script}}, client.Handlers{
				Output: func(chunk *batonv1.OutputChunk) error {
					if chunk.GetStream() == batonv1.OutputStream_OUTPUT_STREAM_STDERR {
						errs.Write(chunk.GetData())
					} else {
						out.Write(chunk.GetData())
					}
					return nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			if st.GetState() != tt.state || st.GetExitCode() != tt.exit || out.String() != tt.out || errs.String() != tt.errs {
				t.Errorf("%v exit %d, stdout %q, stderr %q; want %v exit %d, %q, %q",
					st.GetState(), st.GetExitCode(), out.String(), errs.String(), tt.state, tt.exit, tt.out, tt.errs)
			}
		})
	}
}

// TestStopFromStarted: a run's Started handler has the job's id, and a
// Stop with it ends the run with the job STOPPED.
func TestStopFromStarted(t *testing.T) {
	t.Parallel()
	c := clusterClient(t)
	var stopErr error
	st, err := c.Run(t.Context(), &batonv1.StartJobRequest{WorkerId: "main", Command: "sh", Args: []string{"-c", "sleep 60"}}, client.Handlers{
		Started: func(st *batonv1.JobStatus) { _, stopErr = c.Stop(t.Context(), st.GetJobId()) },
	})
	if err != nil || stopErr != nil {
		t.Fatalf("run: %v; stop: %v", err, stopErr)
	}
	if st.GetState() != batonv1.JobState_JOB_STATE_STOPPED {
		t.Errorf("state %v, want STOPPED", st.GetState())
	}
}

// TestFanOut: a fan-out is started with Start and each job followed; Run
// refuses it, naming what to do instead.
func TestFanOut(t *testing.T) {
	t.Parallel()
	c := clusterClient(t)
	req := &batonv1.StartJobRequest{All: true, Command: "sh", Args: []string{"-c", "echo hi"}, QueueTimeout: durationNoLimit()}
	if _, err := c.Run(t.Context(), req, client.Handlers{}); !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("Run of a fan-out: %v, want ErrInvalidArgument", err)
	}
	res, err := c.Start(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.GetGroupId() == "" || len(res.GetJobs()) != 2 {
		t.Fatalf("fan-out: group %q, %d jobs; want a group of 2", res.GetGroupId(), len(res.GetJobs()))
	}
	for _, j := range res.GetJobs() {
		var out strings.Builder
		st, err := c.Follow(t.Context(), &batonv1.StreamJobOutputRequest{JobId: j.GetJobId()}, client.Handlers{
			Output: func(chunk *batonv1.OutputChunk) error { out.Write(chunk.GetData()); return nil },
		})
		if err != nil || st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || out.String() != "hi\n" {
			t.Errorf("job on %s: %v, %v, output %q", j.GetWorkerId(), st.GetState(), err, out.String())
		}
	}
}

// TestRunWithAUsedKey: a second Run with the key of a first follows the
// job the first started, from its first byte, and starts nothing.
func TestRunWithAUsedKey(t *testing.T) {
	t.Parallel()
	c := clusterClient(t)
	req := &batonv1.StartJobRequest{WorkerId: "main", Command: "sh", Args: []string{"-c", "echo once"}, IdempotencyKey: "test-run-with-a-used-key"}
	var ids []string
	for range 2 {
		var out strings.Builder
		st, err := c.Run(t.Context(), req, client.Handlers{
			Output: func(chunk *batonv1.OutputChunk) error { out.Write(chunk.GetData()); return nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		if out.String() != "once\n" {
			t.Errorf("output %q", out.String())
		}
		ids = append(ids, st.GetJobId())
	}
	if ids[0] == "" || ids[0] != ids[1] {
		t.Errorf("jobs %q, want one job", ids)
	}
}

// TestErrorsOnACluster: the scheduler's refusals come as *client.Error,
// matched by their sentinels.
func TestErrorsOnACluster(t *testing.T) {
	t.Parallel()
	c := clusterClient(t)
	if _, err := c.Query(t.Context(), "01a21d31-0000-7000-8000-0000000000cc"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("Query of an unknown job: %v, want ErrNotFound", err)
	}
	if _, err := c.Run(t.Context(), &batonv1.StartJobRequest{Command: "rm", Args: []string{"-rf", "/"}}, client.Handlers{}); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("a command off the allow-list: %v, want ErrPermissionDenied", err)
	}
	if _, err := c.Start(t.Context(), &batonv1.StartJobRequest{}); !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("a start without a command: %v, want ErrInvalidArgument", err)
	}
}

func durationNoLimit() *durationpb.Duration { return durationpb.New(client.NoQueueLimit) }
