package worker

import (
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
)

// Policy is WorkerService's authorization policy: only the scheduler calls
// a worker. Clients go through the scheduler, which says in a header whom
// it acts for (logged in the worker's access log).
func Policy() identity.Policy {
	scheduler := []identity.Role{identity.RoleScheduler}
	return identity.Policy{
		batonv1connect.WorkerServiceStartJobProcedure:        {Roles: scheduler, Mutating: true},
		batonv1connect.WorkerServiceStopJobProcedure:         {Roles: scheduler, Mutating: true},
		batonv1connect.WorkerServiceQueryJobProcedure:        {Roles: scheduler},
		batonv1connect.WorkerServiceListJobsProcedure:        {Roles: scheduler},
		batonv1connect.WorkerServiceStreamJobOutputProcedure: {Roles: scheduler},
		batonv1connect.WorkerServiceRunJobProcedure:          {Roles: scheduler, Mutating: true},
	}
}
