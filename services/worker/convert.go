package worker

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/jobrun"
)

// jobStates maps the runtime's states onto the API's.
var jobStates = map[jobrun.State]batonv1.JobState{
	jobrun.StatePending:   batonv1.JobState_JOB_STATE_PENDING,
	jobrun.StateRunning:   batonv1.JobState_JOB_STATE_RUNNING,
	jobrun.StateSucceeded: batonv1.JobState_JOB_STATE_SUCCEEDED,
	jobrun.StateFailed:    batonv1.JobState_JOB_STATE_FAILED,
	jobrun.StateStopped:   batonv1.JobState_JOB_STATE_STOPPED,
	jobrun.StateTimedOut:  batonv1.JobState_JOB_STATE_TIMED_OUT,
	jobrun.StateLost:      batonv1.JobState_JOB_STATE_LOST,
}

// containment names how a job's processes are held together.
var containment = map[string]string{
	"v2": "cgroup-v2",
	"v1": "cgroup-v1",
	"":   "process-group",
}

// specFromRequest turns a validated StartJob request into a runtime spec.
func specFromRequest(req *batonv1.WorkerServiceStartJobRequest) jobrun.Spec {
	return jobrun.Spec{
		Command:     req.GetCommand(),
		Path:        req.GetPath(),
		Args:        req.GetArgs(),
		Env:         req.GetEnv(),
		Dir:         req.GetWorkingDir(),
		Timeout:     req.GetTimeout().AsDuration(),
		OutputLimit: req.GetOutputLimit(),
		MemoryLimit: req.GetMemoryLimitBytes(),
		CPULimit:    req.GetCpuLimit(),
		Owner:       req.GetOwner(),
		Labels:      req.GetLabels(),
		GroupID:     req.GetGroupId(),
		Script:      req.GetScript(),
		ScriptName:  req.GetScriptName(),
	}
}

// statusToProto renders a runtime status for the API.
func statusToProto(st jobrun.Status, workerID string) *batonv1.JobStatus {
	out := &batonv1.JobStatus{
		JobId:       st.ID,
		WorkerId:    workerID,
		State:       jobStates[st.State],
		Pid:         int32(st.PID),
		Reason:      st.Reason,
		CreatedAt:   timestamp(st.CreatedAt),
		StartedAt:   timestamp(st.StartedAt),
		EndedAt:     timestamp(st.EndedAt),
		Owner:       st.Spec.Owner,
		StoppedBy:   st.StoppedBy,
		StdoutBytes: st.StdoutBytes,
		StderrBytes: st.StderrBytes,
		GroupId:     st.Spec.GroupID,
		Containment: containment[st.Cgroup],
		RunAs:       st.RunAs,
		Spec: &batonv1.JobSpec{
			Command:          st.Spec.Command,
			Path:             st.Spec.Path,
			Args:             st.Spec.Args,
			Env:              st.Spec.Env,
			WorkingDir:       st.Spec.Dir,
			OutputLimit:      st.Spec.OutputLimit,
			MemoryLimitBytes: st.Spec.MemoryLimit,
			CpuLimit:         st.Spec.CPULimit,
			Labels:           st.Spec.Labels,
			ScriptName:       st.Spec.ScriptName,
			ScriptSize:       st.Spec.ScriptSize,
			ScriptSha256:     st.Spec.ScriptSHA256,
		},
	}
	if st.Spec.Timeout > 0 {
		out.Spec.Timeout = durationpb.New(st.Spec.Timeout)
	}
	out.Usage = usageToProto(st)
	out.Signal = st.SignalName()
	if st.State.Terminal() && st.ExitCode >= 0 && st.Signal == 0 && !st.StartedAt.IsZero() {
		code := int32(st.ExitCode)
		out.ExitCode = &code
	}
	return out
}

// usageToProto renders what the job cost: nothing before it started, the
// wall time alone while nothing was measured (a running job without a
// cgroup that can say, a LOST one has not even that).
func usageToProto(st jobrun.Status) *batonv1.JobUsage {
	u := st.Usage
	if u.Source == "" && u.Wall == 0 {
		return nil
	}
	out := &batonv1.JobUsage{Wall: durationpb.New(u.Wall), Source: u.Source}
	if u.Source != "" {
		out.CpuUser, out.CpuSystem, out.PeakMemoryBytes = durationpb.New(u.CPUUser), durationpb.New(u.CPUSystem), u.PeakMemory
	}
	return out
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// streamToProto and streamFromProto translate output stream names.
func streamToProto(s jobrun.Stream) batonv1.OutputStream {
	switch s {
	case jobrun.StreamStdout:
		return batonv1.OutputStream_OUTPUT_STREAM_STDOUT
	case jobrun.StreamStderr:
		return batonv1.OutputStream_OUTPUT_STREAM_STDERR
	}
	return batonv1.OutputStream_OUTPUT_STREAM_UNSPECIFIED
}

func streamFromProto(s batonv1.OutputStream) jobrun.Stream {
	switch s {
	case batonv1.OutputStream_OUTPUT_STREAM_STDOUT:
		return jobrun.StreamStdout
	case batonv1.OutputStream_OUTPUT_STREAM_STDERR:
		return jobrun.StreamStderr
	}
	return 0
}
