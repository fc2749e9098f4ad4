package scheduler

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

func unbuiltSchedules() error {
	return connect.NewError(connect.CodeUnimplemented, errors.New("schedules are not supported by this scheduler"))
}

func (h *handler) CreateSchedule(context.Context, *connect.Request[batonv1.CreateScheduleRequest]) (*connect.Response[batonv1.CreateScheduleResponse], error) {
	return nil, unbuiltSchedules()
}

func (h *handler) UpdateSchedule(context.Context, *connect.Request[batonv1.UpdateScheduleRequest]) (*connect.Response[batonv1.UpdateScheduleResponse], error) {
	return nil, unbuiltSchedules()
}

func (h *handler) GetSchedule(context.Context, *connect.Request[batonv1.GetScheduleRequest]) (*connect.Response[batonv1.GetScheduleResponse], error) {
	return nil, unbuiltSchedules()
}

func (h *handler) ListSchedules(context.Context, *connect.Request[batonv1.ListSchedulesRequest]) (*connect.Response[batonv1.ListSchedulesResponse], error) {
	return nil, unbuiltSchedules()
}

func (h *handler) DeleteSchedule(context.Context, *connect.Request[batonv1.DeleteScheduleRequest]) (*connect.Response[batonv1.DeleteScheduleResponse], error) {
	return nil, unbuiltSchedules()
}

func (h *handler) PauseSchedule(context.Context, *connect.Request[batonv1.PauseScheduleRequest]) (*connect.Response[batonv1.PauseScheduleResponse], error) {
	return nil, unbuiltSchedules()
}

func (h *handler) ResumeSchedule(context.Context, *connect.Request[batonv1.ResumeScheduleRequest]) (*connect.Response[batonv1.ResumeScheduleResponse], error) {
	return nil, unbuiltSchedules()
}

func (h *handler) TriggerSchedule(context.Context, *connect.Request[batonv1.TriggerScheduleRequest]) (*connect.Response[batonv1.TriggerScheduleResponse], error) {
	return nil, unbuiltSchedules()
}
