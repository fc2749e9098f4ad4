package bench

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler"
)

// maxBenchSchedules is the most schedules --schedules defines: one owner
// (the bench's admin) may define this many by default.
const maxBenchSchedules = scheduler.DefaultMaxSchedulesPerOwner

// benchScheduleCron names a time far enough away that no schedule fires
// during a run: midnight on 29 February (the next is in 2028 or later).
const benchScheduleCron = "0 0 29 2 *"

// defineSchedules defines n schedules on lc, none due during the run, so
// that the load measures what keeping them costs the scheduler: their
// place in its heap, its firing loop asleep on one timer, their rows.
func defineSchedules(ctx context.Context, lc *localCluster, n int) error {
	for i := range n {
		_, err := lc.admin.CreateSchedule(ctx, connect.NewRequest(&batonv1.CreateScheduleRequest{Schedule: &batonv1.Schedule{
			Name: fmt.Sprintf("bench-%05d", i), Cron: benchScheduleCron,
			Job: &batonv1.StartJobRequest{Command: "true"},
		}}))
		if err != nil {
			return fmt.Errorf("define schedule %d of %d: %w", i+1, n, err)
		}
	}
	return nil
}
