package clientcli

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// goldenNow is the fixed "now" the table goldens are rendered at.
var goldenNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(goldenNow.Add(-d)) }

// goldenJobs covers every way a job's row can look: running, each end,
// a signal instead of a code, no code at all, quoting and truncation.
func goldenJobs() []*batonv1.JobStatus {
	return []*batonv1.JobStatus{
		{
			JobId: "01a21d30-755b-7399-a15e-335a9af14142", WorkerId: "worker-1", State: batonv1.JobState_JOB_STATE_RUNNING,
			Pid: 4242, Owner: "alice", CreatedAt: ago(12 * time.Second), StartedAt: ago(11 * time.Second),
			Spec: &batonv1.JobSpec{Command: "bash", Path: "count.sh"}, StdoutBytes: 24, Containment: "cgroup-v2",
		},
		{
			JobId: "01a21d2f-90c9-744a-b4c6-5f0dc0503fca", WorkerId: "worker-2", State: batonv1.JobState_JOB_STATE_FAILED,
			ExitCode: proto.Int32(3), Reason: "exited with code 3", Owner: "bob", CreatedAt: ago(5 * time.Minute),
			Spec: &batonv1.JobSpec{Command: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 3"}},
		},
		{
			JobId: "01a21d2f-91fe-72a8-92e5-cc8b33e8dbb4", WorkerId: "worker-1", State: batonv1.JobState_JOB_STATE_FAILED,
			Signal: "SIGKILL", Reason: "killed by signal KILL", Owner: "alice", CreatedAt: ago(3 * time.Hour),
			Spec: &batonv1.JobSpec{Command: "bash", Args: []string{"-c", "kill -KILL $$"}},
		},
		{
			JobId: "01a21d2e-0000-7000-8000-000000000001", WorkerId: "worker-2", State: batonv1.JobState_JOB_STATE_STOPPED,
			Signal: "SIGTERM", Reason: "stopped by alice", Owner: "alice", StoppedBy: "alice", CreatedAt: ago(50 * time.Hour),
			Spec: &batonv1.JobSpec{Command: "python3", Path: "tools/train.py", Args: []string{"--epochs", "100", "--data", "/srv/datasets/images-2026-11", "--it's"}},
		},
		{
			JobId: "01a21d2e-0000-7000-8000-000000000002", WorkerId: "worker-3", State: batonv1.JobState_JOB_STATE_LOST,
			Reason: "worker restarted", CreatedAt: ago(40 * time.Second),
			Spec: &batonv1.JobSpec{Command: "bash", Path: "nap.sh"},
		},
		{
			JobId: "01a21d2e-0000-7000-8000-000000000003", WorkerId: "worker-1", State: batonv1.JobState_JOB_STATE_SUCCEEDED,
			ExitCode: proto.Int32(0), Owner: "spiffe://dev/user/carol", CreatedAt: ago(90 * time.Second),
			Spec: &batonv1.JobSpec{Command: "true"},
		},
	}
}

func goldenWorkers() []*batonv1.Worker {
	return []*batonv1.Worker{
		{
			WorkerId: "worker-1", Name: "worker-1", Address: "127.0.0.1:7071", State: batonv1.WorkerState_WORKER_STATE_READY,
			Labels: map[string]string{"slot": "1", "gpu": "no"}, RunningJobs: 2, Capacity: 64, LastHeartbeat: ago(time.Second),
		},
		{
			WorkerId: "worker-2", Name: "worker-2", Address: "10.0.0.7:7071", State: batonv1.WorkerState_WORKER_STATE_DRAINING,
			RunningJobs: 1, LastHeartbeat: ago(4 * time.Second),
		},
		{
			WorkerId: "worker-3", Name: "worker-3", Address: "10.0.0.8:7071", State: batonv1.WorkerState_WORKER_STATE_DOWN,
			Labels: map[string]string{"zone": "b"}, Capacity: 8, LastHeartbeat: ago(2 * time.Hour),
		},
		{
			WorkerId: "worker-4", Name: "worker-4", State: batonv1.WorkerState_WORKER_STATE_LEFT,
		},
	}
}

func goldenStatus() *batonv1.JobStatus {
	return &batonv1.JobStatus{
		JobId: "01a21d30-3bcb-72dd-97fe-c0ad8a69ebf3", WorkerId: "worker-2", State: batonv1.JobState_JOB_STATE_STOPPED,
		Pid: 22068, Signal: "SIGKILL", Reason: "stopped by alice", Owner: "alice", StoppedBy: "alice",
		GroupId:   "01a21d30-3bcb-72dd-97fe-c0ad8a69e000",
		CreatedAt: ago(10 * time.Second), StartedAt: ago(9500 * time.Millisecond), EndedAt: ago(3 * time.Second),
		Spec: &batonv1.JobSpec{
			Command: "bash", Args: []string{"-c", `trap "" TERM; sleep 100`},
			Env: map[string]string{"MODE": "fast", "A": "1"}, Timeout: durationpb.New(90 * time.Second),
			WorkingDir: "work", Labels: map[string]string{"team": "infra"},
		},
		StdoutBytes: 1536, StderrBytes: 3 << 20, Containment: "cgroup-v2",
		Usage: &batonv1.JobUsage{
			CpuUser: durationpb.New(1021 * time.Millisecond), CpuSystem: durationpb.New(52 * time.Millisecond),
			PeakMemoryBytes: 105 << 20, Wall: durationpb.New(6500 * time.Millisecond), Source: "cgroup",
		},
	}
}

// TestTableGolden renders fixed data with the table functions and compares
// with testdata/*.golden; go test -run TestTableGolden -update rewrites them.
func TestTableGolden(t *testing.T) {
	t.Parallel()
	style := tableStyle{now: goldenNow, loc: time.UTC}
	tests := []struct {
		name   string
		render func(*bytes.Buffer) error
	}{
		{"jobs", func(b *bytes.Buffer) error { return writeJobsTable(b, goldenJobs(), style) }},
		{"jobs_empty", func(b *bytes.Buffer) error { return writeJobsTable(b, nil, style) }},
		{"workers", func(b *bytes.Buffer) error { return writeWorkersTable(b, goldenWorkers(), style) }},
		{"status", func(b *bytes.Buffer) error { return writeJobStatus(b, goldenStatus(), style) }},
		{"status_running", func(b *bytes.Buffer) error { return writeJobStatus(b, goldenJobs()[0], style) }},
		{"status_running_usage", func(b *bytes.Buffer) error {
			j := goldenJobs()[0]
			j.Usage = &batonv1.JobUsage{Wall: durationpb.New(9 * time.Second)}
			return writeJobStatus(b, j, style)
		}},
		{"status_retried", func(b *bytes.Buffer) error {
			j := goldenStatus()
			j.State, j.StoppedBy, j.Reason, j.ExitCode, j.Signal = batonv1.JobState_JOB_STATE_FAILED, "", "exited with code 3", proto.Int32(3), ""
			j.Spec.Retry = &batonv1.RetryPolicy{Attempts: 3}
			j.Spec.After = []*batonv1.Dependency{{JobId: "01a21d30-3bcb-72dd-97fe-c0ad8a69e00a"}, {GroupId: "01a21d30-3bcb-72dd-97fe-c0ad8a69e00b", Condition: batonv1.DependencyCondition_DEPENDENCY_CONDITION_ENDED}}
			j.Spec.ArrayIndex = proto.Int32(7)
			j.Attempt = 3
			j.Attempts = []*batonv1.Attempt{
				{Number: 1, WorkerId: "worker-1", State: batonv1.JobState_JOB_STATE_LOST, Reason: "worker down: no heartbeat for 15s",
					StartedAt: ago(9 * time.Second), EndedAt: ago(8 * time.Second)},
				{Number: 2, WorkerId: "worker-2", State: batonv1.JobState_JOB_STATE_FAILED, ExitCode: proto.Int32(3), Reason: "exited with code 3",
					StartedAt: ago(6 * time.Second), EndedAt: ago(5500 * time.Millisecond),
					Usage: &batonv1.JobUsage{CpuUser: durationpb.New(12 * time.Millisecond), Wall: durationpb.New(500 * time.Millisecond), Source: "rusage"}},
			}
			return writeJobStatus(b, j, style)
		}},
		{"status_rusage", func(b *bytes.Buffer) error {
			j := goldenStatus()
			j.Containment = "process-group"
			j.Usage.Source, j.Usage.PeakMemoryBytes = "rusage", 0
			return writeJobStatus(b, j, style)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got bytes.Buffer
			if err := tt.render(&got); err != nil {
				t.Fatal(err)
			}
			e2e.CheckGolden(t, tt.name, got.Bytes())
		})
	}
}

// TestJSONListIsOneDocument checks that lists print as one JSON array
// carrying protojson names, including the empty list.
func TestJSONListIsOneDocument(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 6} {
		var buf bytes.Buffer
		if err := writeJSONList(&buf, goldenJobs()[:n]); err != nil {
			t.Fatal(err)
		}
		var got []map[string]any
		if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
			t.Fatalf("%d jobs: %v in %s", n, err, buf.Bytes())
		}
		if len(got) != n {
			t.Fatalf("%d jobs: decoded %d", n, len(got))
		}
		if n > 0 && got[0]["jobId"] != goldenJobs()[0].GetJobId() {
			t.Errorf("first job: %v", got[0])
		}
	}
}
