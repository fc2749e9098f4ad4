package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/scheduler/store"
)

// The schedule RPCs. A schedule belongs to the principal that created it
// and runs its jobs as that principal; only its owner and admins see or
// change it. Anyone else is told it does not exist, as for another
// user's job, so that names do not leak.

// CreateSchedule defines a schedule owned by the caller.
func (h *handler) CreateSchedule(ctx context.Context, req *connect.Request[batonv1.CreateScheduleRequest]) (*connect.Response[batonv1.CreateScheduleResponse], error) {
	s := h.s
	def, err := s.checkSchedule(ctx, req.Msg.GetSchedule())
	if err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, mapError(err)
	}
	now := time.Now()
	sc := store.Schedule{
		ID: id.String(), Owner: ownerName(caller(ctx)), Name: def.GetName(), Definition: def,
		CreatedAt: now, UpdatedAt: now, Cursor: now,
	}
	if err := s.store.CreateSchedule(ctx, sc, s.opts.MaxSchedulesPerOwner); err != nil {
		if errors.Is(err, store.ErrLimit) {
			err = fmt.Errorf("%w: %s has %d schedules, the most the scheduler's max_schedules_per_owner allows; delete some first", store.ErrLimit, sc.Owner, s.opts.MaxSchedulesPerOwner)
		}
		return nil, mapError(err)
	}
	s.scheds.put(sc, false)
	s.logger.InfoContext(ctx, "schedule created", "owner", sc.Owner, "schedule", sc.Name, "cron", def.GetCron(), "time_zone", def.GetTimeZone())
	return connect.NewResponse(&batonv1.CreateScheduleResponse{Schedule: s.scheduleProto(sc, nil)}), nil
}

// UpdateSchedule replaces a schedule's definition; its counters and fires
// stay, and the new definition is due from now on.
func (h *handler) UpdateSchedule(ctx context.Context, req *connect.Request[batonv1.UpdateScheduleRequest]) (*connect.Response[batonv1.UpdateScheduleResponse], error) {
	s := h.s
	owner, err := scheduleOwner(ctx, req.Msg.GetOwner())
	if err != nil {
		return nil, mapError(hidden("schedule", req.Msg.GetSchedule().GetName()))
	}
	def, err := s.checkSchedule(ctx, req.Msg.GetSchedule())
	if err != nil {
		return nil, err
	}
	sc, err := s.store.UpdateSchedule(ctx, owner, def.GetName(), def, time.Now())
	if err != nil {
		return nil, mapError(err)
	}
	s.scheds.put(sc, false)
	return connect.NewResponse(&batonv1.UpdateScheduleResponse{Schedule: s.scheduleProto(sc, nil)}), nil
}

// GetSchedule reports a schedule with its recent fires.
func (h *handler) GetSchedule(ctx context.Context, req *connect.Request[batonv1.GetScheduleRequest]) (*connect.Response[batonv1.GetScheduleResponse], error) {
	s := h.s
	sc, err := s.scheduleFor(ctx, req.Msg.GetSchedule())
	if err != nil {
		return nil, mapError(err)
	}
	fires, err := s.store.ScheduleFires(ctx, sc.ID, historyLimitOf(sc.Definition))
	if err != nil {
		return nil, mapError(err)
	}
	return connect.NewResponse(&batonv1.GetScheduleResponse{Schedule: s.scheduleProto(sc, fires)}), nil
}

// ListSchedules lists the caller's schedules; an admin's listing holds
// everyone's, or owner's.
func (h *handler) ListSchedules(ctx context.Context, req *connect.Request[batonv1.ListSchedulesRequest]) (*connect.Response[batonv1.ListSchedulesResponse], error) {
	s := h.s
	owner := req.Msg.GetOwner()
	if p := caller(ctx); !isAdmin(p) {
		if owner != "" && owner != ownerName(p) {
			return connect.NewResponse(&batonv1.ListSchedulesResponse{}), nil
		}
		owner = ownerName(p)
	}
	list, next, err := s.store.ListSchedules(ctx, store.ScheduleFilter{
		Owner: owner, PageSize: int(req.Msg.GetPageSize()), PageToken: req.Msg.GetPageToken(),
	})
	if err != nil {
		return nil, mapError(err)
	}
	res := &batonv1.ListSchedulesResponse{NextPageToken: next}
	for _, sc := range list {
		out := s.scheduleProto(sc, nil)
		// A listing names a script sent with the job, and leaves its
		// content (up to 1 MiB a schedule) to GetSchedule.
		if j := out.GetJob(); j != nil {
			j.Script = nil
		}
		res.Schedules = append(res.Schedules, out)
	}
	return connect.NewResponse(res), nil
}

// DeleteSchedule removes a schedule; the jobs it started stay.
func (h *handler) DeleteSchedule(ctx context.Context, req *connect.Request[batonv1.DeleteScheduleRequest]) (*connect.Response[batonv1.DeleteScheduleResponse], error) {
	s := h.s
	ref := req.Msg.GetSchedule()
	owner, err := scheduleOwner(ctx, ref.GetOwner())
	if err != nil {
		return nil, mapError(hidden("schedule", ref.GetName()))
	}
	if _, err := s.store.DeleteSchedule(ctx, owner, ref.GetName()); err != nil {
		return nil, mapError(err)
	}
	s.scheds.remove(owner, ref.GetName())
	return connect.NewResponse(&batonv1.DeleteScheduleResponse{}), nil
}

// PauseSchedule stops a schedule from firing until it is resumed.
func (h *handler) PauseSchedule(ctx context.Context, req *connect.Request[batonv1.PauseScheduleRequest]) (*connect.Response[batonv1.PauseScheduleResponse], error) {
	sc, err := h.s.pause(ctx, req.Msg.GetSchedule(), true)
	if err != nil {
		return nil, mapError(err)
	}
	return connect.NewResponse(&batonv1.PauseScheduleResponse{Schedule: sc}), nil
}

// ResumeSchedule lets a paused schedule fire again, from now on.
func (h *handler) ResumeSchedule(ctx context.Context, req *connect.Request[batonv1.ResumeScheduleRequest]) (*connect.Response[batonv1.ResumeScheduleResponse], error) {
	sc, err := h.s.pause(ctx, req.Msg.GetSchedule(), false)
	if err != nil {
		return nil, mapError(err)
	}
	return connect.NewResponse(&batonv1.ResumeScheduleResponse{Schedule: sc}), nil
}

// TriggerSchedule fires a schedule now, once per call, marked manual. It
// follows the schedule's overlap policy, and works on a paused schedule.
func (h *handler) TriggerSchedule(ctx context.Context, req *connect.Request[batonv1.TriggerScheduleRequest]) (*connect.Response[batonv1.TriggerScheduleResponse], error) {
	s := h.s
	sc, err := s.scheduleFor(ctx, req.Msg.GetSchedule())
	if err != nil {
		return nil, mapError(err)
	}
	f, upd, err := s.fire(context.WithoutCancel(ctx), sc, time.Now(), true)
	if err != nil {
		return nil, mapError(err)
	}
	s.scheds.put(upd, true)
	return connect.NewResponse(&batonv1.TriggerScheduleResponse{Fire: fireProto(f), Schedule: s.scheduleProto(upd, nil)}), nil
}

func (s *Scheduler) pause(ctx context.Context, ref *batonv1.ScheduleRef, paused bool) (*batonv1.Schedule, error) {
	owner, err := scheduleOwner(ctx, ref.GetOwner())
	if err != nil {
		return nil, hidden("schedule", ref.GetName())
	}
	sc, err := s.store.PauseSchedule(ctx, owner, ref.GetName(), paused, time.Now())
	if err != nil {
		return nil, err
	}
	s.scheds.put(sc, false)
	return s.scheduleProto(sc, nil), nil
}

// isAdmin reports whether p may reach every owner's schedules.
func isAdmin(p identity.Principal) bool {
	return p.Anonymous || p.Role == identity.RoleAdmin
}

// scheduleOwner is the owner a schedule reference names: the caller's own
// schedules when empty; another's only for admins (an error otherwise,
// which the caller reports as not found).
func scheduleOwner(ctx context.Context, owner string) (string, error) {
	p := caller(ctx)
	if owner == "" || owner == ownerName(p) {
		return ownerName(p), nil
	}
	if !isAdmin(p) {
		return "", store.ErrNotFound
	}
	return owner, nil
}

// scheduleFor reads the schedule ref names, if the caller may see it.
func (s *Scheduler) scheduleFor(ctx context.Context, ref *batonv1.ScheduleRef) (store.Schedule, error) {
	owner, err := scheduleOwner(ctx, ref.GetOwner())
	if err != nil {
		return store.Schedule{}, hidden("schedule", ref.GetName())
	}
	return s.store.GetSchedule(ctx, owner, ref.GetName())
}

// checkSchedule checks a schedule definition as the scheduler will use
// it, its job as StartJob would, and returns the definition to store:
// the caller's fields only.
// Its errors are Connect errors.
func (s *Scheduler) checkSchedule(ctx context.Context, in *batonv1.Schedule) (*batonv1.Schedule, error) {
	if _, err := parseFireTimes(in.GetCron(), in.GetTimeZone()); err != nil {
		return nil, mapError(newError(errBadSchedule, "%v", err))
	}
	job := in.GetJob()
	switch {
	case len(job.GetAfter()) > 0:
		return nil, mapError(newError(errBadSchedule, "job.after is not allowed in a schedule: each fire would wait for the same jobs"))
	case job.GetArray() != nil:
		return nil, mapError(newError(errBadSchedule, "job.array is not allowed in a schedule"))
	}
	if err := checkScript(job); err != nil {
		return nil, mapError(err)
	}
	if err := s.checkPriority(ctx, job); err != nil {
		return nil, mapError(err)
	}
	if job.GetAll() && job.GetWorkerId() != "" {
		return nil, mapError(newError(errBadSchedule, "job.all and job.worker_id do not go together: all runs on every worker matching job.selector"))
	}
	return &batonv1.Schedule{
		Name: in.GetName(), Cron: in.GetCron(), TimeZone: in.GetTimeZone(), Overlap: in.GetOverlap(),
		CatchUp: in.GetCatchUp(), HistoryLimit: in.GetHistoryLimit(), Job: proto.CloneOf(job),
	}, nil
}

// scheduleProto is a stored schedule as the API shows it.
func (s *Scheduler) scheduleProto(sc store.Schedule, fires []store.Fire) *batonv1.Schedule {
	out := proto.CloneOf(sc.Definition)
	out.Name = sc.Name
	out.Paused = sc.Paused
	out.Owner = sc.Owner
	out.CreatedAt = timestamppb.New(sc.CreatedAt)
	out.UpdatedAt = timestamppb.New(sc.UpdatedAt)
	if !sc.LastFire.IsZero() {
		out.LastFireTime = timestamppb.New(sc.LastFire)
	}
	if !sc.Paused {
		ft := s.scheds.fireTimesOf(sc.Owner, sc.Name)
		if ft == nil {
			ft, _ = parseFireTimes(sc.Definition.GetCron(), sc.Definition.GetTimeZone())
		}
		if ft != nil {
			if next := ft.next(sc.Cursor); !next.IsZero() {
				out.NextFireTime = timestamppb.New(next)
			}
		}
	}
	out.Fires, out.Misses, out.Skips = sc.Fires, sc.Misses, sc.Skips
	for _, f := range fires {
		out.Recent = append(out.Recent, fireProto(f))
	}
	return out
}

func fireProto(f store.Fire) *batonv1.ScheduleFire {
	return &batonv1.ScheduleFire{
		FireTime: timestamppb.New(f.Time), Outcome: f.Outcome, JobId: f.JobID, GroupId: f.GroupID,
		Reason: f.Reason, Manual: f.Manual,
	}
}
