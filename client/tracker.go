package client

import (
	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// tracker is where the follow of one job stands, across the streams that
// carry it: which job, how much of its output the caller has, and what
// the handlers were told. Not safe for concurrent use.
type tracker struct {
	h     Handlers
	jobID string
	// offset is the end of the output passed to h.Output, in the view
	// followed: where a resumed stream starts.
	offset int64
	// waiting says the job was last seen queued (or being started), and
	// started that h.Started was called.
	waiting bool
	started bool
	// queued is the queued status h.Queued was last called with.
	queued *batonv1.JobStatus
}

// waitingAs notes that the job waits, telling h.Queued when it is queued
// somewhere else than it last said.
func (t *tracker) waitingAs(st *batonv1.JobStatus) {
	t.waiting = true
	if st.GetJobId() != "" {
		t.jobID = st.GetJobId()
	}
	if st.GetState() != batonv1.JobState_JOB_STATE_QUEUED {
		return
	}
	if t.queued != nil && t.queued.GetQueuePosition() == st.GetQueuePosition() && t.queued.GetReason() == st.GetReason() {
		return
	}
	t.queued = st
	if t.h.Queued != nil {
		t.h.Queued(st)
	}
}

// startedAs notes that the job runs, telling h.Started the first time.
func (t *tracker) startedAs(st *batonv1.JobStatus) {
	t.waiting = false
	if st.GetJobId() != "" {
		t.jobID = st.GetJobId()
	}
	if t.started {
		return
	}
	t.started = true
	if t.h.Started != nil {
		t.h.Started(st)
	}
}

// output passes a chunk to h.Output and moves the offset past it.
func (t *tracker) output(c *batonv1.OutputChunk) error {
	if t.h.Output != nil {
		if err := t.h.Output(c); err != nil {
			return err
		}
	}
	t.offset = c.GetOffset() + int64(len(c.GetData()))
	return nil
}

// drainRun reads a RunJob stream to its end. It returns the job's final
// status if the stream brought it, whether the stream brought anything,
// the stream's error, and h.Output's, which ends the follow.
func (t *tracker) drainRun(s *connect.ServerStreamForClient[batonv1.RunJobResponse]) (st *batonv1.JobStatus, progress bool, streamErr, sinkErr error) {
	defer s.Close()
	for s.Receive() {
		progress = true
		switch ev := s.Msg().GetEvent().(type) {
		case *batonv1.RunJobResponse_Queued:
			t.waitingAs(ev.Queued)
		case *batonv1.RunJobResponse_Started:
			t.startedAs(ev.Started)
		case *batonv1.RunJobResponse_Chunk:
			if err := t.output(ev.Chunk); err != nil {
				return nil, progress, nil, err
			}
		case *batonv1.RunJobResponse_Status:
			return ev.Status, progress, nil, nil
		}
	}
	return nil, progress, s.Err(), nil
}

// drainOutput reads a StreamJobOutput stream to its end, as drainRun
// reads a RunJob stream.
func (t *tracker) drainOutput(s *connect.ServerStreamForClient[batonv1.StreamJobOutputResponse]) (st *batonv1.JobStatus, progress bool, streamErr, sinkErr error) {
	defer s.Close()
	for s.Receive() {
		m := s.Msg()
		if st := m.GetStatus(); st != nil {
			return st, progress, nil, nil
		}
		if c := m.GetChunk(); c != nil {
			progress = true
			if err := t.output(c); err != nil {
				return nil, progress, nil, err
			}
		}
	}
	return nil, progress, s.Err(), nil
}
