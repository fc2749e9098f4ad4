package scheduler_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

// stdoutOf returns a job's stdout, to its end.
func stdoutOf(t *testing.T, c batonv1connect.SchedulerServiceClient, id string) string {
	t.Helper()
	stream, err := c.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Follow: true, Stream: batonv1.OutputStream_OUTPUT_STREAM_STDOUT}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var out bytes.Buffer
	for stream.Receive() {
		out.Write(stream.Msg().GetChunk().GetData())
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("output of %s: %v", id, err)
	}
	return out.String()
}

// TestScriptFanOutQueuedAcrossRestart sends a script with a fan-out over
// two workers, one of them full: the free worker runs it at once; the
// other's job waits in the queue with its script, through a kill and
// restart of the scheduler, and runs it once a slot frees. Both print
// what the script prints, and the statuses describe the script.
func TestScriptFanOutQueuedAcrossRestart(t *testing.T) {
	db := filepath.Join(t.TempDir(), "baton.db")
	sched := startScheduler(t, db, nil)
	var workers []*testWorker
	for _, n := range []string{"w1", "w2"} {
		workers = append(workers, startWorkerWith(t, n, sched, workerSetup{capacity: 1}))
	}
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1", "w2")
	blocker := startJob(t, sched.client, &batonv1.StartJobRequest{WorkerId: "w2", Command: "sh", Path: "sleep.sh", Args: []string{"100"}})

	script := []byte("echo \"sent $(basename \"$0\") $1 on $(hostname >/dev/null; echo ok)\"\n#" + strings.Repeat("p", 50<<10) + "\n")
	sum := sha256.Sum256(script)
	res := startJob(t, sched.client, &batonv1.StartJobRequest{
		All: true, Command: "sh", Script: script, ScriptName: "fan.sh", Args: []string{"arg"}, QueueTimeout: noLimit,
	})
	states := map[string]batonv1.JobState{}
	for _, st := range res.GetJobs() {
		states[st.GetWorkerId()] = st.GetState()
		spec := st.GetSpec()
		if spec.GetScriptName() != "fan.sh" || spec.GetScriptSize() != int64(len(script)) || spec.GetScriptSha256() != hex.EncodeToString(sum[:]) {
			t.Errorf("job on %s: spec %v", st.GetWorkerId(), spec)
		}
	}
	if states["w1"] == batonv1.JobState_JOB_STATE_QUEUED || states["w2"] != batonv1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("fan-out jobs = %v; want w1's started and w2's queued", states)
	}

	sched.kill()
	again := startScheduler(t, db, nil)
	for _, w := range workers {
		w.sched.point(again.client)
	}
	waitWorkers(t, again.client, batonv1.WorkerState_WORKER_STATE_READY, "w1", "w2")
	stopAll(t, again.client, []string{blocker.GetJobId()})
	var ids []string
	for _, st := range res.GetJobs() {
		ids = append(ids, st.GetJobId())
	}
	for id, st := range finalJobs(t, again.client, ids) {
		if st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || st.GetSpec().GetScriptSha256() != hex.EncodeToString(sum[:]) {
			t.Errorf("job %s on %s ended %v (%s), spec %v", id, st.GetWorkerId(), st.GetState(), st.GetReason(), st.GetSpec())
		}
		if out := stdoutOf(t, again.client, id); out != "sent fan.sh arg on ok\n" {
			t.Errorf("job %s on %s printed %q", id, st.GetWorkerId(), out)
		}
	}
}

// TestScriptRefusedBeforeStored: a script over 1 MiB, a script name that
// is not a file name, or a name without a script is refused with
// invalid_argument saying why, by StartJob and RunJob, before anything is
// stored: the worker is full, so a job that got through would be queued
// (and its worker would refuse it only when it is handed out).
func TestScriptRefusedBeforeStored(t *testing.T) {
	sched := startScheduler(t, "", nil)
	startWorkerWith(t, "w1", sched, workerSetup{capacity: 1})
	waitWorkers(t, sched.client, batonv1.WorkerState_WORKER_STATE_READY, "w1")
	blocker := fillWorkers(t, sched.client, 1)
	for _, tc := range []struct {
		name string
		req  *batonv1.StartJobRequest
		says string
	}{
		{"2 MiB", &batonv1.StartJobRequest{Command: "sh", Script: make([]byte, 2<<20), QueueTimeout: noLimit}, "at most 1048576 bytes"},
		{"1 MiB and args", &batonv1.StartJobRequest{Command: "sh", Script: make([]byte, 1<<20), Args: []string{"x"}, QueueTimeout: noLimit}, "together must be at most 1048576 bytes"},
		{"dot dot", &batonv1.StartJobRequest{Command: "sh", Script: []byte("echo\n"), ScriptName: "..", QueueTimeout: noLimit}, "not a file name"},
		{"dot", &batonv1.StartJobRequest{Command: "sh", Script: []byte("echo\n"), ScriptName: ".", QueueTimeout: noLimit}, "not a file name"},
		{"name only", &batonv1.StartJobRequest{Command: "sh", ScriptName: "x.sh", QueueTimeout: noLimit}, "needs a script"},
		{"and a path", &batonv1.StartJobRequest{Command: "sh", Script: []byte("echo\n"), Path: "hello.sh", QueueTimeout: noLimit}, "path must be empty"},
	} {
		_, err := sched.client.StartJob(t.Context(), connect.NewRequest(tc.req))
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("StartJob %s: %v, want invalid_argument saying %q", tc.name, err, tc.says)
		}
		stream, err := sched.client.RunJob(t.Context(), connect.NewRequest(&batonv1.RunJobRequest{Job: tc.req}))
		if err == nil {
			for stream.Receive() {
			}
			err = stream.Err()
		}
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("RunJob %s: %v, want invalid_argument saying %q", tc.name, err, tc.says)
		}
	}
	res, err := sched.client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{}))
	if err != nil || len(res.Msg.GetJobs()) != 1 || res.Msg.GetJobs()[0].GetJobId() != blocker[0] {
		t.Errorf("jobs after refused starts: %v, %v; want only the one running", res.Msg.GetJobs(), err)
	}
}
