package worker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/jobrun"
)

// epochHeader is the header's name on the wire, spelled out: the scheduler
// and the worker must agree on it, whatever a constant says.
const epochHeader = "Baton-Epoch"

// lockedBuffer is a bytes.Buffer a logger and a test can share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// starts returns the "job started" lines logged so far, job id → epochs.
func (l *lockedBuffer) starts(t *testing.T) map[string][]int64 {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	got := map[string][]int64{}
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		var line struct {
			Msg   string `json:"msg"`
			JobID string `json:"job_id"`
			Epoch *int64 `json:"epoch"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if line.Msg != "job started" {
			continue
		}
		if line.JobID == "" || line.Epoch == nil {
			t.Errorf("start log line without job_id or epoch: %s", sc.Text())
			continue
		}
		got[line.JobID] = append(got[line.JobID], *line.Epoch)
	}
	return got
}

// loggedWorker is startWorker with its log captured as JSON.
func loggedWorker(t *testing.T, tune func(*Options)) (*testWorker, *lockedBuffer) {
	t.Helper()
	var log lockedBuffer
	tw := startWorker(t, nil, func(o *Options) {
		o.Logger = slog.New(slog.NewJSONHandler(&log, nil))
		if tune != nil {
			tune(o)
		}
	})
	return tw, &log
}

// fenced is a request carrying the epoch header with value v.
func fenced[T any](msg *T, v string) *connect.Request[T] {
	req := connect.NewRequest(msg)
	req.Header().Set(epochHeader, v)
	return req
}

func jobID(n int) string { return fmt.Sprintf("01890000-0000-7000-8000-%012d", n) }

func startReq(n int) *batonv1.WorkerServiceStartJobRequest {
	return &batonv1.WorkerServiceStartJobRequest{JobId: jobID(n), Command: "sh", Args: []string{"-c", "sleep 30"}}
}

func stopJob(t *testing.T, c batonv1connect.WorkerServiceClient, id string) {
	t.Helper()
	if _, err := c.StopJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceStopJobRequest{JobId: id})); err != nil {
		t.Errorf("stop %s: %v", id, err)
	}
}

// readEpochFile is what the worker keeps in its data directory.
func readEpochFile(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "epoch"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantStale(t *testing.T, what string, err error, n, newest int64) {
	t.Helper()
	want := fmt.Sprintf("stale leader: epoch %d is older than %d, the newest this worker has seen", n, newest)
	ce := new(connect.Error)
	if !errors.As(err, &ce) || ce.Code() != connect.CodeFailedPrecondition || ce.Message() != want {
		t.Errorf("%s: %v, want failed_precondition %q", what, err, want)
	}
}

// TestFenceRefusesAnOlderLeader: once a worker has heard from the leader of
// epoch 5, a call from a leader of epoch 3 (deposed, and not yet aware of
// it) starts nothing, stops nothing and runs nothing; epoch 5 itself and
// newer leaders are served.
func TestFenceRefusesAnOlderLeader(t *testing.T) {
	t.Parallel()
	tw, log := loggedWorker(t, nil)
	c := tw.client()
	ctx := t.Context()

	if _, err := c.StartJob(ctx, fenced(startReq(1), "5")); err != nil {
		t.Fatal(err)
	}
	defer stopJob(t, c, jobID(1))

	_, err := c.StartJob(ctx, fenced(startReq(2), "3"))
	wantStale(t, "StartJob from epoch 3", err, 3, 5)
	if _, err := c.QueryJob(ctx, connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: jobID(2)})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("the refused job: QueryJob = %v, want not_found (never started)", err)
	}
	_, err = c.StopJob(ctx, fenced(&batonv1.WorkerServiceStopJobRequest{JobId: jobID(1)}, "4"))
	wantStale(t, "StopJob from epoch 4", err, 4, 5)
	q, err := c.QueryJob(ctx, connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: jobID(1)}))
	if err != nil || q.Msg.GetStatus().GetState() != batonv1.JobState_JOB_STATE_RUNNING {
		t.Errorf("after a refused stop: %v %v, want the job still running", q, err)
	}
	quick := &batonv1.WorkerServiceStartJobRequest{JobId: jobID(3), Command: "sh", Args: []string{"-c", "true"}}
	run, err := c.RunJob(ctx, fenced(&batonv1.WorkerServiceRunJobRequest{Job: quick}, "1"))
	if err != nil {
		t.Fatal(err)
	}
	for run.Receive() {
		t.Errorf("RunJob from epoch 1 sent %v", run.Msg())
	}
	wantStale(t, "RunJob from epoch 1", run.Err(), 1, 5)
	_ = run.Close()
	out, err := c.StreamJobOutput(ctx, fenced(&batonv1.WorkerServiceStreamJobOutputRequest{JobId: jobID(1)}, "2"))
	if err != nil {
		t.Fatal(err)
	}
	for out.Receive() {
		t.Errorf("StreamJobOutput from epoch 2 sent %v", out.Msg())
	}
	wantStale(t, "StreamJobOutput from epoch 2", out.Err(), 2, 5)
	_ = out.Close()

	// The same leader again, and a newer one, are served.
	if _, err := c.QueryJob(ctx, fenced(&batonv1.WorkerServiceQueryJobRequest{JobId: jobID(1)}, "5")); err != nil {
		t.Errorf("QueryJob from epoch 5 again: %v", err)
	}
	if _, err := c.StartJob(ctx, fenced(startReq(4), "6")); err != nil {
		t.Fatalf("StartJob from epoch 6: %v", err)
	}
	defer stopJob(t, c, jobID(4))
	_, err = c.StartJob(ctx, fenced(startReq(5), "5"))
	wantStale(t, "StartJob from epoch 5 after 6", err, 5, 6)

	got := log.starts(t)
	want := map[string][]int64{jobID(1): {5}, jobID(4): {6}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("start log = %v, want %v", got, want)
	}
	if f := readEpochFile(t, tw.dataDir); f != "6\n" {
		t.Errorf("epoch file = %q, want 6", f)
	}
}

// TestFenceLogsEachStartOnce: the start log has one line per process, with
// the epoch of the call that started it, whichever call that was; a repeat
// of the start (a leader retrying) adds none.
func TestFenceLogsEachStartOnce(t *testing.T) {
	t.Parallel()
	tw, log := loggedWorker(t, nil)
	c := tw.client()
	ctx := t.Context()
	if _, err := c.StartJob(ctx, fenced(startReq(1), "7")); err != nil {
		t.Fatal(err)
	}
	defer stopJob(t, c, jobID(1))
	if _, err := c.StartJob(ctx, fenced(startReq(1), "8")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartJob(ctx, connect.NewRequest(startReq(2))); err != nil {
		t.Fatal(err)
	}
	defer stopJob(t, c, jobID(2))
	run, err := c.RunJob(ctx, fenced(&batonv1.WorkerServiceRunJobRequest{Job: &batonv1.WorkerServiceStartJobRequest{
		JobId: jobID(3), Command: "sh", Args: []string{"-c", "echo hi"},
	}}, "9"))
	if err != nil {
		t.Fatal(err)
	}
	var final *batonv1.JobStatus
	for run.Receive() {
		if st := run.Msg().GetStatus(); st != nil {
			final = st
		}
	}
	if err := run.Err(); err != nil || final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("RunJob: %v, final %v", err, final)
	}
	_ = run.Close()

	got := log.starts(t)
	want := map[string][]int64{jobID(1): {7}, jobID(2): {0}, jobID(3): {9}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("start log = %v, want %v", got, want)
	}
}

// TestFenceWithoutEpoch: a scheduler that runs alone sends no epoch; its
// calls are served even after a leader's, and change nothing on disk.
func TestFenceWithoutEpoch(t *testing.T) {
	t.Parallel()
	tw := startWorker(t, nil, nil)
	c := tw.client()
	if _, err := c.StartJob(t.Context(), connect.NewRequest(startReq(1))); err != nil {
		t.Fatal(err)
	}
	stopJob(t, c, jobID(1))
	if _, err := os.Stat(filepath.Join(tw.dataDir, "epoch")); !os.IsNotExist(err) {
		t.Errorf("epoch file without any epoch seen: %v, want none", err)
	}
	if _, err := c.ListJobs(t.Context(), fenced(&batonv1.WorkerServiceListJobsRequest{}, "3")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartJob(t.Context(), connect.NewRequest(startReq(2))); err != nil {
		t.Fatalf("StartJob without an epoch after epoch 3: %v", err)
	}
	stopJob(t, c, jobID(2))
}

// TestFenceRefusesAMalformedEpoch: the header is one positive decimal
// number, or the call does nothing.
func TestFenceRefusesAMalformedEpoch(t *testing.T) {
	t.Parallel()
	tw := startWorker(t, nil, nil)
	c := tw.client()
	for i, tc := range []struct {
		name   string
		values []string
	}{
		{"word", []string{"five"}},
		{"empty", []string{""}},
		{"zero", []string{"0"}},
		{"negative", []string{"-3"}},
		{"plus sign", []string{"+3"}},
		{"fraction", []string{"3.5"}},
		{"space", []string{" 3"}},
		{"hex", []string{"0x10"}},
		{"overflow", []string{"9223372036854775808"}},
		{"very long", []string{strings.Repeat("9", 4096)}},
		{"twice", []string{"3", "4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := connect.NewRequest(startReq(i + 1))
			for _, v := range tc.values {
				req.Header().Add(epochHeader, v)
			}
			_, err := c.StartJob(t.Context(), req)
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("StartJob: %v, want invalid_argument", err)
			}
			if _, err := c.QueryJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: jobID(i + 1)})); connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("QueryJob = %v, want not_found (never started)", err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(tw.dataDir, "epoch")); !os.IsNotExist(err) {
		t.Errorf("epoch file after malformed epochs only: %v, want none", err)
	}
}

// TestFenceSurvivesARestart: the newest epoch is on disk before the call
// that brought it acts, so a worker restarted from the same data directory
// still refuses the leader it had seen deposed.
func TestFenceSurvivesARestart(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	scriptsDir := t.TempDir()
	opts := Options{Name: "restarted", Runner: jobrun.Options{DataDir: dataDir, ScriptsDir: scriptsDir, AllowedCommands: []string{"sh"}}}
	first, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(identity.AnonymousHandler(first.Handler()))
	c := batonv1connect.NewWorkerServiceClient(srv.Client(), srv.URL)
	if _, err := c.ListJobs(t.Context(), fenced(&batonv1.WorkerServiceListJobsRequest{}, "7")); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}

	tw := startWorker(t, nil, func(o *Options) { o.Runner.DataDir = dataDir })
	c = tw.client()
	_, err = c.StartJob(t.Context(), fenced(startReq(1), "6"))
	wantStale(t, "StartJob from epoch 6 after a restart", err, 6, 7)
	if _, err := c.StartJob(t.Context(), fenced(startReq(2), "7")); err != nil {
		t.Fatalf("StartJob from epoch 7 after a restart: %v", err)
	}
	stopJob(t, c, jobID(2))
}

// TestFenceRefusesToStartOnADamagedEpochFile: forgetting the epoch would let
// a deposed leader in again, so a file that cannot be read stops the worker.
func TestFenceRefusesToStartOnADamagedEpochFile(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dataDir, "epoch"), []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := New(Options{Name: "damaged", Runner: jobrun.Options{DataDir: dataDir, ScriptsDir: t.TempDir()}})
	if err == nil {
		_ = w.Close(t.Context())
		t.Fatal("New with a damaged epoch file succeeded")
	}
}

// TestFenceKeepsTheHighestOfConcurrentEpochs: leaders' calls racing leave
// the highest epoch on disk and in force, whatever order they land in.
func TestFenceKeepsTheHighestOfConcurrentEpochs(t *testing.T) {
	t.Parallel()
	tw := startWorker(t, nil, nil)
	c := tw.client()
	const n = 64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			// Epochs 1..n, in reverse for half of them so that lower
			// ones race higher ones.
			e := i + 1
			if i%2 == 1 {
				e = n + 1 - i
			}
			_, err := c.ListJobs(context.Background(), fenced(&batonv1.WorkerServiceListJobsRequest{}, fmt.Sprint(e)))
			if err != nil && connect.CodeOf(err) != connect.CodeFailedPrecondition {
				t.Errorf("epoch %d: %v", e, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if f := readEpochFile(t, tw.dataDir); f != fmt.Sprintf("%d\n", n) {
		t.Errorf("epoch file = %q, want %d", f, n)
	}
	_, err := c.ListJobs(t.Context(), fenced(&batonv1.WorkerServiceListJobsRequest{}, fmt.Sprint(n-1)))
	wantStale(t, "after the race", err, n-1, n)
}

// TestFenceActsOnlyOnARecordedEpoch: a new leader's epoch is on disk before
// its call acts; when it cannot be written, the call does nothing.
func TestFenceActsOnlyOnARecordedEpoch(t *testing.T) {
	t.Parallel()
	tw, log := loggedWorker(t, nil)
	c := tw.client()
	// A directory where the temporary file goes makes the write fail.
	blocker := filepath.Join(tw.dataDir, "epoch.tmp")
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := c.StartJob(t.Context(), fenced(startReq(1), "9"))
	if connect.CodeOf(err) != connect.CodeInternal {
		t.Errorf("StartJob with an epoch that cannot be recorded: %v, want internal", err)
	}
	if _, err := c.QueryJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: jobID(1)})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("QueryJob = %v, want not_found (never started)", err)
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartJob(t.Context(), fenced(startReq(1), "9")); err != nil {
		t.Fatalf("StartJob once the epoch can be recorded: %v", err)
	}
	stopJob(t, c, jobID(1))
	if got := log.starts(t); fmt.Sprint(got) != fmt.Sprint(map[string][]int64{jobID(1): {9}}) {
		t.Errorf("start log = %v, want one start at epoch 9", got)
	}
}
