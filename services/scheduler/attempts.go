package scheduler

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// A retried job's output is the output of its attempts, one after the
// other: offsets run on from one attempt to the next, so that a follower
// resumes anywhere in it as in any job's output. Each attempt's output
// stays on the worker that ran it, under the attempt's run id;
// StreamJobOutputRequest.attempt reads one attempt alone.

// errRetried ends the relay of an attempt whose end the job's retry policy
// runs again: the follower goes on with the next attempt.
var errRetried = errors.New("the attempt ended and the job was retried")

// retried reports whether job j, whose current attempt just ended, has
// been queued for another attempt.
func (s *Scheduler) retried(ctx context.Context, j store.Job) bool {
	if j.Status.GetSpec().GetRetry() == nil {
		return false
	}
	cur, err := s.store.GetJob(context.WithoutCancel(ctx), j.ID)
	return err == nil && runID(cur) != runID(j)
}

// viewBytes is how many bytes of attempt a are in the view of stream
// (both streams when unspecified).
func viewBytes(a *batonv1.Attempt, stream batonv1.OutputStream) int64 {
	switch stream {
	case batonv1.OutputStream_OUTPUT_STREAM_STDOUT:
		return a.GetStdoutBytes()
	case batonv1.OutputStream_OUTPUT_STREAM_STDERR:
		return a.GetStderrBytes()
	}
	return a.GetStdoutBytes() + a.GetStderrBytes()
}

// viewBytesBefore is how many bytes of the view of stream the attempts of
// j before run id run produced.
func viewBytesBefore(j store.Job, stream batonv1.OutputStream, run string) int64 {
	var n int64
	for _, a := range j.Status.GetAttempts() {
		if a.GetRunId() == run {
			break
		}
		n += viewBytes(a, stream)
	}
	return n
}

// followFrom relays job j's output from offset in the view of stream:
// what is left of its earlier attempts, read from their workers, then its
// current attempt and, with follow, the attempts after it until the job
// ends.
func (s *Scheduler) followFrom(ctx context.Context, j store.Job, offset int64, follow bool, stream batonv1.OutputStream, send func(*batonv1.OutputChunk, *batonv1.JobStatus) error) error {
	var base int64
	for _, a := range j.Status.GetAttempts() {
		n := viewBytes(a, stream)
		if offset < base+n {
			if err := s.readAttempt(ctx, a, offset-base, base, n, stream, send); err != nil {
				return err
			}
			offset = base + n
		}
		base += n
	}
	if inQueue(j.Status.GetState()) {
		if !follow {
			return send(nil, redacted(caller(ctx), s.queuedStatus(j)))
		}
		// Followed from before it runs (waiting, or being handed to its
		// worker, which may not know it yet): from its first attempt's
		// start, or on from the attempt that ended last.
		ended := ""
		if as := j.Status.GetAttempts(); len(as) > 0 {
			ended = as[len(as)-1].GetRunId()
			base -= viewBytes(as[len(as)-1], stream)
		}
		return s.followRetries(ctx, j.ID, ended, errRetried, base, stream, send)
	}
	req := &batonv1.WorkerServiceStreamJobOutputRequest{JobId: runID(j), Offset: max(offset-base, 0), Follow: follow, Stream: stream}
	err := s.followRun(ctx, j, req, base, send)
	return s.followRetries(ctx, j.ID, runID(j), err, base, stream, send)
}

// followRetries goes on relaying job id's output when the relay of its
// attempt ended (whose output ends at offset base of the view) ended with
// err errRetried: the attempts after it, until the job ends. Any other err
// is returned as it is. An empty ended waits for the job's first attempt.
func (s *Scheduler) followRetries(ctx context.Context, id, ended string, err error, base int64, stream batonv1.OutputStream, send func(*batonv1.OutputChunk, *batonv1.JobStatus) error) error {
	for errors.Is(err, errRetried) {
		j, err := s.awaitAttempt(ctx, id, ended)
		if err != nil {
			return err
		}
		// Attempts that ran to their end while this one was waited for
		// are read from their workers.
		// With no attempt ended yet (ended empty), every attempt is new.
		passed := ended == ""
		for _, a := range j.Status.GetAttempts() {
			if passed {
				if err := s.readAttempt(ctx, a, 0, base, viewBytes(a, stream), stream, send); err != nil {
					return err
				}
			}
			if passed || a.GetRunId() == ended {
				base += viewBytes(a, stream)
				passed = true
			}
		}
		state := j.Status.GetState()
		if terminal(state) && j.Status.GetStartedAt() == nil {
			return send(nil, redacted(caller(ctx), withIdentity(j, j.Status)))
		}
		if !terminal(state) && state != batonv1.JobState_JOB_STATE_RUNNING {
			// Its attempts after ended ran and ended between two looks:
			// it waits for the next one again.
			as := j.Status.GetAttempts()
			last := as[len(as)-1]
			ended = last.GetRunId()
			base -= viewBytes(last, stream)
			err = errRetried
			continue
		}
		if err = s.followRun(ctx, j, &batonv1.WorkerServiceStreamJobOutputRequest{JobId: runID(j), Follow: true, Stream: stream}, base, send); errors.Is(err, errRetried) {
			ended = runID(j)
			continue
		}
		return err
	}
	return err
}

// awaitAttempt waits, after job id's attempt run ended, for what comes
// next: its next attempt running, or ended, or the job ending without it.
func (s *Scheduler) awaitAttempt(ctx context.Context, id, ended string) (store.Job, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		j, err := s.store.GetJob(ctx, id)
		if err != nil {
			return store.Job{}, mapError(err)
		}
		st := j.Status.GetState()
		if terminal(st) || (st == batonv1.JobState_JOB_STATE_RUNNING && runID(j) != ended) || endedAfter(j, ended) {
			return j, nil
		}
		// A job in the queue (waiting, held, or being started) is woken
		// when it leaves it; one on its way in or out is looked at again
		// shortly.
		left, wake := s.q.leavesIfIn(id), tick.C
		if left != nil {
			wake = nil
		}
		select {
		case <-ctx.Done():
			return store.Job{}, mapError(ctx.Err())
		case <-s.stopping.Done():
			return store.Job{}, connect.NewError(connect.CodeUnavailable, errors.New("the scheduler is shutting down; resume the stream from the last offset"))
		case <-wake:
		case <-left:
		}
	}
}

// endedAfter reports whether an attempt of j after run ended already.
func endedAfter(j store.Job, run string) bool {
	as := j.Status.GetAttempts()
	for i, a := range as {
		if a.GetRunId() == run {
			return i < len(as)-1
		}
	}
	return false
}

// readAttempt relays ended attempt a's output from offset (in the view of
// stream) up to end (-1: all of it) from the worker that ran it, its
// offsets moved on by base. The attempt's own end is not sent: it is in
// the job's attempts. The end is the attempt's recorded size when the
// output goes on into the next attempt's: a LOST attempt's record may be
// behind what its worker holds, and offsets must not overlap.
func (s *Scheduler) readAttempt(ctx context.Context, a *batonv1.Attempt, offset, base, end int64, stream batonv1.OutputStream, send func(*batonv1.OutputChunk, *batonv1.JobStatus) error) error {
	t, ok := s.reg.target(a.GetWorkerId())
	if !ok {
		return mapError(errWorkerNotFound(a.GetWorkerId()))
	}
	if !active(t.state) {
		return mapError(newError(errWorkerUnavailable, "worker %q, which ran attempt %d, is %s: its output cannot be read now", t.id, a.GetNumber(), stateWord(t.state)))
	}
	ctx, cancel := s.relayContext(ctx, t)
	defer cancel(nil)
	ws, err := t.client.StreamJobOutput(ctx, connect.NewRequest(&batonv1.WorkerServiceStreamJobOutputRequest{
		JobId: a.GetRunId(), Offset: offset, Stream: stream,
	}))
	if err != nil {
		return relayError(ctx, t.id, err)
	}
	defer ws.Close()
	for ws.Receive() {
		chunk := ws.Msg().GetChunk()
		if chunk == nil {
			continue
		}
		if end >= 0 {
			if chunk.GetOffset() >= end {
				break
			}
			if over := chunk.GetOffset() + int64(len(chunk.GetData())) - end; over > 0 {
				chunk.Data = chunk.GetData()[:int64(len(chunk.GetData()))-over]
			}
		}
		chunk.Offset += base
		if err := send(chunk, nil); err != nil {
			return err
		}
	}
	if err := ws.Err(); err != nil {
		return relayError(ctx, t.id, err)
	}
	return nil
}

// followAttempt relays attempt n of job j alone, as req asks, and ends
// with that attempt's status.
func (s *Scheduler) followAttempt(ctx context.Context, j store.Job, n int32, req *batonv1.StreamJobOutputRequest, send func(*batonv1.OutputChunk, *batonv1.JobStatus) error) error {
	earlier := j.Status.GetAttempts()
	current := max(j.Status.GetAttempt(), 1)
	switch {
	case n > current:
		return connect.NewError(connect.CodeNotFound, errors.New("the job has no such attempt yet"))
	case n < current:
		a := attemptNumbered(earlier, n)
		if a == nil {
			return connect.NewError(connect.CodeNotFound, errors.New("the job has no record of that attempt"))
		}
		if err := s.readAttempt(ctx, a, req.GetOffset(), 0, -1, req.GetStream(), send); err != nil {
			return err
		}
		return send(nil, redacted(caller(ctx), attemptStatus(j, a)))
	}
	if st := j.Status.GetState(); st == batonv1.JobState_JOB_STATE_QUEUED || (terminal(st) && j.Status.GetStartedAt() == nil) {
		// Attempt n has not run (yet): its status, or, followed, its run.
		if !req.GetFollow() || st != batonv1.JobState_JOB_STATE_QUEUED {
			return send(nil, redacted(caller(ctx), s.queuedStatus(j)))
		}
		ended := ""
		if len(earlier) > 0 {
			ended = earlier[len(earlier)-1].GetRunId()
		}
		cur, err := s.awaitAttempt(ctx, j.ID, ended)
		if err != nil {
			return err
		}
		return s.followAttempt(ctx, cur, n, req, send)
	}
	err := s.followRun(ctx, j, &batonv1.WorkerServiceStreamJobOutputRequest{
		JobId: runID(j), Offset: req.GetOffset(), Follow: req.GetFollow(), Stream: req.GetStream(),
	}, 0, send)
	if !errors.Is(err, errRetried) {
		return err
	}
	cur, err := s.store.GetJob(ctx, j.ID)
	if err != nil {
		return mapError(err)
	}
	if a := attemptNumbered(cur.Status.GetAttempts(), n); a != nil {
		return send(nil, redacted(caller(ctx), attemptStatus(cur, a)))
	}
	return nil
}

func attemptNumbered(attempts []*batonv1.Attempt, n int32) *batonv1.Attempt {
	for _, a := range attempts {
		if a.GetNumber() == n {
			return a
		}
	}
	return nil
}

// attemptStatus is the status of job j as it was when attempt a ended.
func attemptStatus(j store.Job, a *batonv1.Attempt) *batonv1.JobStatus {
	st := withIdentity(j, &batonv1.JobStatus{})
	st.WorkerId = a.GetWorkerId()
	st.State = a.GetState()
	st.ExitCode = a.ExitCode
	st.Signal = a.GetSignal()
	st.Reason = a.GetReason()
	st.StartedAt = a.GetStartedAt()
	st.EndedAt = a.GetEndedAt()
	st.Usage = a.GetUsage()
	st.StdoutBytes = a.GetStdoutBytes()
	st.StderrBytes = a.GetStderrBytes()
	st.Attempt = a.GetNumber()
	st.RunId = a.GetRunId()
	return proto.CloneOf(st)
}
