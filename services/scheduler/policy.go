package scheduler

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/scheduler/store"
)

// Who may call what. Users are further limited, in the handler, to their
// own jobs; see sees.
var (
	clients  = []identity.Role{identity.RoleAdmin, identity.RoleUser}
	readers  = []identity.Role{identity.RoleAdmin, identity.RoleUser, identity.RoleViewer}
	admins   = []identity.Role{identity.RoleAdmin}
	members  = []identity.Role{identity.RoleWorker}
	selfOnly = func(p identity.Principal, req any) error {
		// A worker acts only as the name in its own certificate.
		var id string
		switch r := req.(type) {
		case interface{ GetName() string }:
			id = r.GetName()
		case interface{ GetWorkerId() string }:
			id = r.GetWorkerId()
		}
		if p.Role == identity.RoleWorker && id != p.Name {
			return fmt.Errorf("%s may not act as worker %q", p, id)
		}
		return nil
	}
)

// Policy is SchedulerService's authorization policy.
func Policy() identity.Policy {
	return identity.Policy{
		batonv1connect.SchedulerServiceRegisterWorkerProcedure:   {Roles: members, Mutating: true, Check: selfOnly},
		batonv1connect.SchedulerServiceHeartbeatProcedure:        {Roles: members, Check: selfOnly},
		batonv1connect.SchedulerServiceDeregisterWorkerProcedure: {Roles: members, Mutating: true, Check: selfOnly},
		batonv1connect.SchedulerServiceStartJobProcedure:         {Roles: clients, Mutating: true},
		batonv1connect.SchedulerServiceRunJobProcedure:           {Roles: clients, Mutating: true},
		batonv1connect.SchedulerServiceStopJobProcedure:          {Roles: clients, Mutating: true},
		batonv1connect.SchedulerServiceQueryJobProcedure:         {Roles: readers},
		batonv1connect.SchedulerServiceListJobsProcedure:         {Roles: readers},
		batonv1connect.SchedulerServiceStreamJobOutputProcedure:  {Roles: readers},
		batonv1connect.SchedulerServiceListWorkersProcedure:      {Roles: readers},
		batonv1connect.SchedulerServiceDrainWorkerProcedure:      {Roles: admins, Mutating: true},
		// A worker checks only its own address: the scheduler expects
		// the caller's identity there (see checkWorkerAddress).
		batonv1connect.SchedulerServiceCheckWorkerAddressProcedure: {Roles: members},
		// Schedules are their owner's and admins' only (see scheduleFor).
		batonv1connect.SchedulerServiceCreateScheduleProcedure:  {Roles: clients, Mutating: true},
		batonv1connect.SchedulerServiceUpdateScheduleProcedure:  {Roles: clients, Mutating: true},
		batonv1connect.SchedulerServiceGetScheduleProcedure:     {Roles: clients},
		batonv1connect.SchedulerServiceListSchedulesProcedure:   {Roles: clients},
		batonv1connect.SchedulerServiceDeleteScheduleProcedure:  {Roles: clients, Mutating: true},
		batonv1connect.SchedulerServicePauseScheduleProcedure:   {Roles: clients, Mutating: true},
		batonv1connect.SchedulerServiceResumeScheduleProcedure:  {Roles: clients, Mutating: true},
		batonv1connect.SchedulerServiceTriggerScheduleProcedure: {Roles: clients, Mutating: true},
	}
}

// caller is the principal of the call; the authorizer guarantees one.
func caller(ctx context.Context) identity.Principal {
	p, _ := identity.FromContext(ctx)
	return p
}

// ownerName is what a job started by p records as its owner: the whole
// principal ("user/alice"), so that an admin and a user who happen to share
// a name do not share jobs.
func ownerName(p identity.Principal) string { return p.String() }

// seesAll reports whether p may see and act on every job (within what
// its role may call at all); a user sees only its own.
func seesAll(p identity.Principal) bool {
	return p.Anonymous || p.Role == identity.RoleAdmin || p.Role == identity.RoleViewer
}

// sees reports whether p may see a job or group owned by owner.
func sees(p identity.Principal, owner string) bool {
	return seesAll(p) || owner == ownerName(p)
}

// redacted is st as p may see it: a job's env values are for its owner and
// admins only; anyone else who may see the job (a viewer) gets the names
// with the values replaced by "[redacted]". st itself is never changed.
func redacted(p identity.Principal, st *batonv1.JobStatus) *batonv1.JobStatus {
	env := st.GetSpec().GetEnv()
	if len(env) == 0 || p.Anonymous || p.Role == identity.RoleAdmin || st.GetOwner() == ownerName(p) {
		return st
	}
	out := proto.CloneOf(st)
	for name := range out.Spec.Env {
		out.Spec.Env[name] = "[redacted]"
	}
	return out
}

// hidden is the error for a job p may not see: the same as for a job that
// does not exist, so that users cannot learn other users' job ids.
func hidden(kind, id string) error {
	return fmt.Errorf("%s %s: %w", kind, id, store.ErrNotFound)
}
