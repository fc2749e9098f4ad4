package scheduler_test

import (
	"context"
	"net/http/httptrace"
	"testing"
	"time"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler"
)

// TestStopOutlivesItsCaller sends StopJob and hangs up the moment the
// request is on the wire, as `baton run` does on a second Ctrl-C: every
// stop must still be carried out. Before the stop was detached from its
// caller, the scheduler's first store read failed with the caller's
// cancellation and the job ran on.
func TestStopOutlivesItsCaller(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", func(o *scheduler.Options) { o.HeartbeatInterval = 200 * time.Millisecond })
	startWorker(t, "w1", s, nil)
	c := s.client
	waitWorkers(t, c, stateReady, "w1")

	const jobs = 10
	ids := make([]string, jobs)
	for i := range ids {
		ids[i] = startJob(t, c, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "sleep.sh"}).GetJobId()
	}
	for _, id := range ids {
		ctx, hangUp := context.WithCancel(t.Context())
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { hangUp() },
		})
		_, err := c.StopJob(ctx, connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
		hangUp()
		if connect.CodeOf(err) != connect.CodeCanceled {
			// The answer beat the hang-up: the stop was carried out anyway,
			// and the wait below checks it.
			t.Logf("StopJob %s answered before the hang-up: %v", id, err)
		}
	}
	for _, id := range ids {
		waitFor(t, "job "+id+" stopped by a caller that hung up", func() bool {
			return queryJob(t, c, id).GetStatus().GetState() == batonv1.JobState_JOB_STATE_STOPPED
		})
	}
}
