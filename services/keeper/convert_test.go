package keeper

import (
	"testing"
	"time"

	"github.com/baton-run/baton/services/jobrun"
)

// TestStatusUsageRoundTrip: a status's usage crosses the keeper protocol
// as it is; the wall time is recomputed from the times on the way in.
func TestStatusUsageRoundTrip(t *testing.T) {
	t.Parallel()
	start := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name     string
		st       jobrun.Status
		wantWall time.Duration
	}{
		{"ended, measured", jobrun.Status{
			ID: "a", State: jobrun.StateSucceeded, StartedAt: start, EndedAt: start.Add(1500 * time.Millisecond),
			Usage: jobrun.Usage{CPUUser: time.Second, CPUSystem: 20 * time.Millisecond, PeakMemory: 100 << 20, Source: jobrun.UsageCgroup},
		}, 1500 * time.Millisecond},
		{"lost, never measured", jobrun.Status{
			ID: "b", State: jobrun.StateLost, StartedAt: start, EndedAt: start.Add(time.Hour),
		}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := statusFromProto(statusToProto(tc.st)).Usage
			want := tc.st.Usage
			want.Wall = tc.wantWall
			if got != want {
				t.Errorf("usage %+v, want %+v", got, want)
			}
		})
	}
	running := jobrun.Status{ID: "c", State: jobrun.StateRunning, StartedAt: time.Now().Add(-time.Minute)}
	if w := statusFromProto(statusToProto(running)).Usage.Wall; w < time.Minute || w > 2*time.Minute {
		t.Errorf("a running job's wall %v, want about a minute", w)
	}
}
