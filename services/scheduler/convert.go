package scheduler

import (
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// workerToProto turns a roster entry into its API form.
func workerToProto(w store.Worker) *batonv1.Worker {
	out := &batonv1.Worker{
		WorkerId:    w.ID,
		Name:        w.Name,
		Address:     w.Address,
		State:       w.State,
		Labels:      w.Labels,
		RunningJobs: w.RunningJobs,
		Capacity:    w.Capacity,
	}
	if !w.LastHeartbeat.IsZero() {
		out.LastHeartbeat = timestamppb.New(w.LastHeartbeat)
	}
	if !w.RegisteredAt.IsZero() {
		out.RegisteredAt = timestamppb.New(w.RegisteredAt)
	}
	return out
}

// specOf is the job spec a StartJobRequest asks for.
func specOf(req *batonv1.StartJobRequest) *batonv1.JobSpec {
	spec := &batonv1.JobSpec{
		Command:          req.GetCommand(),
		Path:             req.GetPath(),
		Args:             req.GetArgs(),
		Env:              req.GetEnv(),
		WorkingDir:       req.GetWorkingDir(),
		Timeout:          req.GetTimeout(),
		OutputLimit:      req.GetOutputLimit(),
		MemoryLimitBytes: req.GetMemoryLimitBytes(),
		CpuLimit:         req.GetCpuLimit(),
		Labels:           req.GetLabels(),
		Selector:         req.GetSelector(),
		Priority:         priorityOf(req),
		QueueTimeout:     req.GetQueueTimeout(),
		After:            req.GetAfter(),
		Retry:            req.GetRetry(),
		Worker:           req.GetWorkerId(),
	}
	describeScript(spec, req)
	return spec
}

// workerStartRequest is the WorkerService call that starts job id.
func workerStartRequest(req *batonv1.StartJobRequest, id, owner, group string) *batonv1.WorkerServiceStartJobRequest {
	return &batonv1.WorkerServiceStartJobRequest{
		JobId:            id,
		Command:          req.GetCommand(),
		Path:             req.GetPath(),
		Args:             req.GetArgs(),
		Env:              req.GetEnv(),
		WorkingDir:       req.GetWorkingDir(),
		Timeout:          req.GetTimeout(),
		OutputLimit:      req.GetOutputLimit(),
		MemoryLimitBytes: req.GetMemoryLimitBytes(),
		CpuLimit:         req.GetCpuLimit(),
		Labels:           req.GetLabels(),
		Owner:            owner,
		GroupId:          group,
		Script:           req.GetScript(),
		ScriptName:       req.GetScriptName(),
	}
}

// terminal reports whether a job in state st has ended.
func terminal(st batonv1.JobState) bool {
	switch st {
	case batonv1.JobState_JOB_STATE_SUCCEEDED, batonv1.JobState_JOB_STATE_FAILED,
		batonv1.JobState_JOB_STATE_STOPPED, batonv1.JobState_JOB_STATE_TIMED_OUT,
		batonv1.JobState_JOB_STATE_LOST:
		return true
	}
	return false
}

// summary gives the original design's done / error / error_text for one job.
func summary(st *batonv1.JobStatus) (done, failed bool, text string) {
	done = terminal(st.GetState())
	failed = done && st.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED
	if failed {
		text = st.GetReason()
		if text == "" {
			text = "job ended in " + st.GetState().String()
		}
	}
	return done, failed, text
}

// groupSummary aggregates jobs: done when all are done, error when any
// failed.
func groupSummary(jobs []*batonv1.JobStatus) (done, failed bool, text string) {
	done = true
	nFailed := 0
	for _, st := range jobs {
		d, f, t := summary(st)
		done = done && d
		if f {
			if nFailed == 0 {
				text = fmt.Sprintf("job %s on worker %q: %s", st.GetJobId(), st.GetWorkerId(), t)
			}
			nFailed++
		}
	}
	if nFailed > 1 {
		text = fmt.Sprintf("%d of %d jobs failed; first: %s", nFailed, len(jobs), text)
	}
	return done, nFailed > 0, text
}

// runID is the id job j's current attempt runs under on its worker: the
// job's id for its first attempt, one of its own for each retry.
func runID(j store.Job) string {
	if r := j.Status.GetRunId(); r != "" {
		return r
	}
	return j.ID
}
