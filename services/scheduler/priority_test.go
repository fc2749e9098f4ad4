package scheduler

import (
	"testing"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestPriorityLimitSparesTheDefault: with scheduler.max_user_priority set
// below the default, a user's job that asks for no priority is still
// taken; one that asks for more than the maximum is not.
func TestPriorityLimitSparesTheDefault(t *testing.T) {
	t.Parallel()
	s := &Scheduler{opts: Options{MaxUserPriority: 20}}
	ctx := t.Context() // no principal: not an admin
	if err := s.checkPriority(ctx, &batonv1.StartJobRequest{Command: "true"}); err != nil {
		t.Errorf("no priority asked, maximum 20: %v", err)
	}
	for p, ok := range map[int32]bool{0: true, 20: true, 21: false, 50: false} {
		err := s.checkPriority(ctx, &batonv1.StartJobRequest{Command: "true", Priority: new(p)})
		if (err == nil) != ok {
			t.Errorf("priority %d, maximum 20: %v", p, err)
		}
	}
}
