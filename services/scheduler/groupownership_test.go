package scheduler_test

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
)

// codeOK stands for a call that succeeded in the tables below.
const codeOK connect.Code = 0

func codeOf(err error) connect.Code {
	if err == nil {
		return codeOK
	}
	return connect.CodeOf(err)
}

func codeName(c connect.Code) string {
	if c == codeOK {
		return "ok"
	}
	return c.String()
}

// errorMessage is err's message with id replaced, so that the answers
// about two ids can be compared.
func errorMessage(err error, id string) string {
	msg := err.Error()
	if ce := new(connect.Error); errors.As(err, &ce) {
		msg = ce.Message()
	}
	return strings.ReplaceAll(msg, id, "<id>")
}

// TestGroupOwnership is the attack on a fan-out's group id: alice starts a
// fan-out, and bob (another user) and vic (a viewer) send its group id to
// every call that takes one (StopJob, QueryJob, ListJobs) and stream its
// jobs (StreamJobOutput takes a job id only). For bob the group does not
// exist: the same NotFound, with the same message, as a group id nobody
// ever used, an empty listing, and his stop reaches no worker and leaves
// alice's processes running. The viewer reads everything and stops nothing
// (PermissionDenied: the authorizer admits only admins and users to
// StopJob). Alice, last, does it all, and her stop ends her processes.
func TestGroupOwnership(t *testing.T) {
	t.Parallel()
	marker := uniqueMarker("group")
	// Registered first, so it runs last: after the workers stopped what
	// they could.
	t.Cleanup(func() { killMarked(marker) })
	workers := []string{"w1", "w2"}
	c := startSecureCluster(t, workers...)

	asAlice := c.client(t, alice)
	started := startJob(t, asAlice, &batonv1.StartJobRequest{
		All: true, Command: "bash", Args: []string{"-c", "echo ready; exec -a " + marker + " sleep 100"},
	})
	gid := started.GetGroupId()
	if gid == "" || len(started.GetJobs()) != len(workers) {
		t.Fatalf("fan-out answered %v, want a group of %d jobs", started, len(workers))
	}
	var jobIDs []string
	jobWorker := map[string]string{}
	for _, j := range started.GetJobs() {
		jobIDs = append(jobIDs, j.GetJobId())
		jobWorker[j.GetJobId()] = j.GetWorkerId()
	}
	slices.Sort(jobIDs)

	// Both jobs run their marked process and have written their line.
	var alicePIDs []int
	waitFor(t, "both jobs to run and print", func() bool {
		res, err := asAlice.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{GroupId: gid}))
		if err != nil {
			t.Fatalf("alice queries her group: %v", err)
		}
		alicePIDs = alicePIDs[:0]
		for _, st := range res.Msg.GetJobs() {
			if st.GetState() != batonv1.JobState_JOB_STATE_RUNNING || st.GetStdoutBytes() < int64(len("ready\n")) {
				return false
			}
			alicePIDs = append(alicePIDs, int(st.GetPid()))
		}
		slices.Sort(alicePIDs)
		return len(alicePIDs) == len(workers) && slices.Equal(pids(procsWithArg0(marker)), alicePIDs)
	})

	// The worker's own view of alice's jobs, asked as the scheduler.
	workerClients := map[string]batonv1connect.WorkerServiceClient{}
	for _, w := range workers {
		workerClients[w] = c.workerClient(t, w, identity.Scheduler)
	}
	onWorker := func(t *testing.T, id string) *batonv1.JobStatus {
		t.Helper()
		res, err := workerClients[jobWorker[id]].QueryJob(t.Context(), connect.NewRequest(&batonv1.WorkerServiceQueryJobRequest{JobId: id}))
		if err != nil {
			t.Fatalf("the worker's QueryJob(%s): %v", id, err)
		}
		return res.Msg.GetStatus()
	}
	workerStops := func() int {
		return c.handledBy(identity.Scheduler, batonv1connect.WorkerServiceStopJobProcedure)
	}
	// stillRunning checks that alice's jobs run undisturbed, as the
	// operating system and the workers see them.
	stillRunning := func(t *testing.T, stopsBefore int) {
		t.Helper()
		if got := pids(procsWithArg0(marker)); !slices.Equal(got, alicePIDs) {
			t.Errorf("alice's processes are %v, want %v still running", got, alicePIDs)
		}
		for _, id := range jobIDs {
			if st := onWorker(t, id); st.GetState() != batonv1.JobState_JOB_STATE_RUNNING || st.GetStoppedBy() != "" {
				t.Errorf("worker %s reports alice's job %s as %v (stopped by %q), want RUNNING", jobWorker[id], id, st.GetState(), st.GetStoppedBy())
			}
		}
		if n := workerStops() - stopsBefore; n != 0 {
			t.Errorf("%d StopJob calls reached a worker", n)
		}
	}

	// Ids nobody used: what "does not exist" looks like.
	unknownGroup, unknownJob := uuid.NewString(), uuid.NewString()

	type want struct {
		query, stop, stream connect.Code
		// listed says whether ListJobs{group_id} returns alice's jobs (all
		// of them) or none.
		listed bool
	}
	cases := []struct {
		name string
		who  identity.Principal
		want want
	}{
		{"another user", bob, want{query: connect.CodeNotFound, stop: connect.CodeNotFound, stream: connect.CodeNotFound}},
		{"viewer", vic, want{query: codeOK, stop: connect.CodePermissionDenied, stream: codeOK, listed: true}},
		// Last: alice's stop ends the group.
		{"owner", alice, want{query: codeOK, stop: codeOK, stream: codeOK, listed: true}},
	}
	for _, tc := range cases {
		ok := t.Run(tc.name, func(t *testing.T) {
			client := c.client(t, tc.who)
			notFoundAsUnknown := func(t *testing.T, what string, err error, id, unknownID string, unknownErr error) {
				t.Helper()
				if codeOf(err) != connect.CodeNotFound {
					return
				}
				if codeOf(unknownErr) != connect.CodeNotFound {
					t.Errorf("%s for an id nobody used: %v, want not_found as for this one", what, unknownErr)
					return
				}
				if got, none := errorMessage(err, id), errorMessage(unknownErr, unknownID); got != none {
					t.Errorf("%s answers %q, and %q for an id nobody used; want the same answer", what, got, none)
				}
			}

			t.Run("QueryJob", func(t *testing.T) {
				res, err := client.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{GroupId: gid}))
				if got := codeOf(err); got != tc.want.query {
					t.Fatalf("QueryJob{group_id}: %v (code %s), want %s", err, codeName(got), codeName(tc.want.query))
				}
				if err != nil {
					_, uerr := client.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{GroupId: unknownGroup}))
					notFoundAsUnknown(t, "QueryJob{group_id}", err, gid, unknownGroup, uerr)
					return
				}
				var got []string
				for _, st := range res.Msg.GetJobs() {
					got = append(got, st.GetJobId())
					if st.GetState() != batonv1.JobState_JOB_STATE_RUNNING || st.GetOwner() != "user/alice" {
						t.Errorf("job %s: %v owned by %q, want RUNNING owned by user/alice", st.GetJobId(), st.GetState(), st.GetOwner())
					}
				}
				slices.Sort(got)
				if !slices.Equal(got, jobIDs) || res.Msg.GetDone() {
					t.Errorf("QueryJob{group_id} reports jobs %v done=%v, want %v not done", got, res.Msg.GetDone(), jobIDs)
				}
			})

			t.Run("ListJobs", func(t *testing.T) {
				for _, owner := range []string{"", "user/alice"} {
					res, err := client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{GroupId: gid, Owner: owner, PageSize: 1000}))
					if err != nil {
						t.Fatalf("ListJobs{group_id, owner %q}: %v", owner, err)
					}
					var got []string
					for _, st := range res.Msg.GetJobs() {
						got = append(got, st.GetJobId())
					}
					slices.Sort(got)
					want := []string(nil)
					if tc.want.listed {
						want = jobIDs
					}
					if !slices.Equal(got, want) {
						t.Errorf("ListJobs{group_id, owner %q} returns %v, want %v", owner, got, want)
					}
				}
			})

			t.Run("StreamJobOutput", func(t *testing.T) {
				for _, id := range jobIDs {
					out, last, err := streamAll(t, client, id)
					if got := codeOf(err); got != tc.want.stream {
						t.Fatalf("StreamJobOutput(%s): %v (code %s), want %s", id, err, codeName(got), codeName(tc.want.stream))
					}
					if err != nil {
						if len(out) > 0 || last != nil {
							t.Errorf("StreamJobOutput(%s) refused, yet sent output %q and status %v", id, out, last)
						}
						_, _, uerr := streamAll(t, client, unknownJob)
						notFoundAsUnknown(t, "StreamJobOutput", err, id, unknownJob, uerr)
						continue
					}
					if string(out) != "ready\n" || last.GetJobId() != id || last.GetState() != batonv1.JobState_JOB_STATE_RUNNING {
						t.Errorf("StreamJobOutput(%s): output %q, last status %v; want %q and the job RUNNING", id, out, last, "ready\n")
					}
				}
			})

			t.Run("StopJob", func(t *testing.T) {
				stopsBefore := workerStops()
				res, err := client.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{GroupId: gid}))
				if got := codeOf(err); got != tc.want.stop {
					t.Errorf("StopJob{group_id}: %v (code %s), want %s", err, codeName(got), codeName(tc.want.stop))
				}
				if tc.want.stop != codeOK {
					if err != nil {
						_, uerr := client.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{GroupId: unknownGroup}))
						notFoundAsUnknown(t, "StopJob{group_id}", err, gid, unknownGroup, uerr)
					}
					stillRunning(t, stopsBefore)
					return
				}
				if err != nil {
					t.FailNow()
				}
				var got []string
				for _, st := range res.Msg.GetJobs() {
					got = append(got, st.GetJobId())
					if st.GetState() != batonv1.JobState_JOB_STATE_STOPPED || st.GetStoppedBy() != "user/alice" {
						t.Errorf("job %s after alice's stop: %v stopped by %q, want STOPPED by user/alice", st.GetJobId(), st.GetState(), st.GetStoppedBy())
					}
				}
				slices.Sort(got)
				if !slices.Equal(got, jobIDs) {
					t.Errorf("StopJob{group_id} answered for jobs %v, want %v", got, jobIDs)
				}
				for _, id := range jobIDs {
					if st := onWorker(t, id); st.GetState() != batonv1.JobState_JOB_STATE_STOPPED {
						t.Errorf("worker %s reports job %s as %v after alice's stop, want STOPPED", jobWorker[id], id, st.GetState())
					}
				}
				deadline := time.Now().Add(waitTimeout)
				for left := procsWithArg0(marker); len(left) > 0; left = procsWithArg0(marker) {
					if time.Now().After(deadline) {
						t.Fatalf("alice's processes still run after her stop: %v", left)
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		})
		if !ok && len(procsWithArg0(marker)) != len(workers) {
			t.Fatalf("%s ended alice's jobs; the cases after it cannot run", tc.name)
		}
	}
}

// streamAll reads a job's output to the end without following, and
// returns the output, the final status and the stream's error.
func streamAll(t *testing.T, client batonv1connect.SchedulerServiceClient, id string) ([]byte, *batonv1.JobStatus, error) {
	t.Helper()
	stream, err := client.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id}))
	if err != nil {
		return nil, nil, err
	}
	defer stream.Close()
	var out bytes.Buffer
	var last *batonv1.JobStatus
	for stream.Receive() {
		if ch := stream.Msg().GetChunk(); ch != nil {
			out.Write(ch.GetData())
		}
		if st := stream.Msg().GetStatus(); st != nil {
			last = st
		}
	}
	return out.Bytes(), last, stream.Err()
}
