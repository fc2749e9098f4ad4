package keeper

import (
	"syscall"
	"time"

	keeperv1 "github.com/baton-run/baton/gen/baton/keeper/v1"
	"github.com/baton-run/baton/services/jobrun"
)

// The keeper protocol mirrors the runtime's types field by field; these
// functions are the only place they meet.

func specToProto(s jobrun.Spec) *keeperv1.Spec {
	return &keeperv1.Spec{
		Command:      s.Command,
		Path:         s.Path,
		Args:         s.Args,
		Env:          s.Env,
		Dir:          s.Dir,
		TimeoutNanos: int64(s.Timeout),
		OutputLimit:  s.OutputLimit,
		MemoryLimit:  s.MemoryLimit,
		CpuLimit:     s.CPULimit,
		Owner:        s.Owner,
		Labels:       s.Labels,
		GroupId:      s.GroupID,
		Script:       s.Script,
		ScriptName:   s.ScriptName,
		ScriptSize:   s.ScriptSize,
		ScriptSha256: s.ScriptSHA256,
	}
}

func specFromProto(s *keeperv1.Spec) jobrun.Spec {
	return jobrun.Spec{
		Command:      s.GetCommand(),
		Path:         s.GetPath(),
		Args:         s.GetArgs(),
		Env:          s.GetEnv(),
		Dir:          s.GetDir(),
		Timeout:      time.Duration(s.GetTimeoutNanos()),
		OutputLimit:  s.GetOutputLimit(),
		MemoryLimit:  s.GetMemoryLimit(),
		CPULimit:     s.GetCpuLimit(),
		Owner:        s.GetOwner(),
		Labels:       s.GetLabels(),
		GroupID:      s.GetGroupId(),
		Script:       s.GetScript(),
		ScriptName:   s.GetScriptName(),
		ScriptSize:   s.GetScriptSize(),
		ScriptSHA256: s.GetScriptSha256(),
	}
}

func statusToProto(st jobrun.Status) *keeperv1.Status {
	return &keeperv1.Status{
		Id:                 st.ID,
		Spec:               specToProto(st.Spec),
		State:              keeperv1.JobState(st.State + 1),
		Pid:                int64(st.PID),
		ExitCode:           int32(st.ExitCode),
		Signal:             int32(st.Signal),
		Reason:             st.Reason,
		StoppedBy:          st.StoppedBy,
		CreatedAtUnixNanos: unixNanos(st.CreatedAt),
		StartedAtUnixNanos: unixNanos(st.StartedAt),
		EndedAtUnixNanos:   unixNanos(st.EndedAt),
		StdoutBytes:        st.StdoutBytes,
		StderrBytes:        st.StderrBytes,
		Cgroup:             st.Cgroup,
		RunAs:              st.RunAs,
		CpuUserNanos:       int64(st.Usage.CPUUser),
		CpuSystemNanos:     int64(st.Usage.CPUSystem),
		PeakMemoryBytes:    st.Usage.PeakMemory,
		UsageSource:        st.Usage.Source,
	}
}

func statusFromProto(st *keeperv1.Status) jobrun.Status {
	out := jobrun.Status{
		ID:          st.GetId(),
		Spec:        specFromProto(st.GetSpec()),
		State:       stateFromProto(st.GetState()),
		PID:         int(st.GetPid()),
		ExitCode:    int(st.GetExitCode()),
		Signal:      syscall.Signal(st.GetSignal()),
		Reason:      st.GetReason(),
		StoppedBy:   st.GetStoppedBy(),
		CreatedAt:   fromUnixNanos(st.GetCreatedAtUnixNanos()),
		StartedAt:   fromUnixNanos(st.GetStartedAtUnixNanos()),
		EndedAt:     fromUnixNanos(st.GetEndedAtUnixNanos()),
		StdoutBytes: st.GetStdoutBytes(),
		StderrBytes: st.GetStderrBytes(),
		Cgroup:      st.GetCgroup(),
		RunAs:       st.GetRunAs(),
	}
	// The wall time is not sent: it follows from the times, and for a
	// running job it is as of when it is read. An end nobody measured
	// (LOST) has none, as in the runtime.
	src := st.GetUsageSource()
	if src != "" {
		out.Usage = jobrun.Usage{
			CPUUser:    time.Duration(st.GetCpuUserNanos()),
			CPUSystem:  time.Duration(st.GetCpuSystemNanos()),
			PeakMemory: st.GetPeakMemoryBytes(),
			Source:     src,
		}
	}
	if src != "" || !out.State.Terminal() {
		out.Usage.Wall = out.Elapsed(time.Now())
	}
	return out
}

// stateFromProto maps a state; one this build does not know (a newer
// keeper's) reads as LOST, which says the least.
func stateFromProto(s keeperv1.JobState) jobrun.State {
	if s < keeperv1.JobState_JOB_STATE_PENDING || s > keeperv1.JobState_JOB_STATE_LOST {
		return jobrun.StateLost
	}
	return jobrun.State(s - 1)
}

func chunkToProto(c jobrun.Chunk, out *keeperv1.Chunk) {
	out.Stream = int32(c.Stream)
	out.Data = c.Data
	out.Offset = c.Offset
	out.TimeUnixNanos = unixNanos(c.Time)
}

func chunkFromProto(c *keeperv1.Chunk) jobrun.Chunk {
	return jobrun.Chunk{
		Stream: jobrun.Stream(c.GetStream()),
		Data:   c.GetData(),
		Offset: c.GetOffset(),
		Time:   fromUnixNanos(c.GetTimeUnixNanos()),
	}
}

func unixNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
