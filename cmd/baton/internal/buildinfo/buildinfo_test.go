package buildinfo

import (
	"bytes"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// TestDescribeBuild: what `baton version` reports for each way the binary
// can be built, including CI's -buildvcs=false and no build information.
func TestDescribeBuild(t *testing.T) {
	t.Parallel()
	const module = "github.com/baton-run/baton"
	checkout := []debug.BuildSetting{
		{Key: "-buildmode", Value: "exe"},
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "46ba8fdef269a24fa75bbee9d4e1499dd438f432"},
		{Key: "vcs.time", Value: "2026-12-04T22:01:02Z"},
		{Key: "vcs.modified", Value: "true"},
	}
	tests := []struct {
		name   string
		linked string
		bi     *debug.BuildInfo
		want   Build
	}{
		{
			name:   "no build information",
			linked: "dev",
			want:   Build{Version: "dev"},
		},
		{
			name:   "buildvcs=false",
			linked: "dev",
			bi:     &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: module, Version: "(devel)"}},
			want:   Build{Version: "dev", Module: module, GoVersion: "go1.26.8"},
		},
		{
			name:   "checkout with changes",
			linked: "dev",
			bi: &debug.BuildInfo{GoVersion: "go1.26.8", Settings: checkout,
				Main: debug.Module{Path: module, Version: "v0.0.0-20261204220102-46ba8fdef269+dirty"}},
			want: Build{Version: "dev", Module: module, ModuleVersion: "v0.0.0-20261204220102-46ba8fdef269+dirty",
				Commit: "46ba8fdef269a24fa75bbee9d4e1499dd438f432", CommitTime: "2026-12-04T22:01:02Z", Modified: true, GoVersion: "go1.26.8"},
		},
		{
			name:   "release linked in",
			linked: "v1.2.3",
			bi:     &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: module, Version: "(devel)"}},
			want:   Build{Version: "v1.2.3", Module: module, GoVersion: "go1.26.8"},
		},
		{
			name:   "go install at a version",
			linked: "dev",
			bi:     &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: module, Version: "v1.4.0"}},
			want:   Build{Version: "v1.4.0", Module: module, ModuleVersion: "v1.4.0", GoVersion: "go1.26.8"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.want.Platform = runtime.GOOS + "/" + runtime.GOARCH
			if tt.want.GoVersion == "" {
				tt.want.GoVersion = runtime.Version()
			}
			if got := describeBuild(tt.linked, tt.bi); got != tt.want {
				t.Errorf("describeBuild:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestVersionGolden renders fixed builds as `baton version` prints them;
// go test -run TestVersionGolden -update rewrites testdata/version*.golden.
func TestVersionGolden(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		v    Build
	}{
		{"version", Build{Version: "dev", Module: "github.com/baton-run/baton",
			ModuleVersion: "v0.0.0-20261204220102-46ba8fdef269+dirty", Commit: "46ba8fdef269a24fa75bbee9d4e1499dd438f432",
			CommitTime: "2026-12-04T22:01:02Z", Modified: true, GoVersion: "go1.26.8", Platform: "linux/amd64"}},
		{"version_novcs", Build{Version: "v1.2.3", Module: "github.com/baton-run/baton",
			GoVersion: "go1.26.8", Platform: "linux/arm64"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got bytes.Buffer
			if err := writeVersion(&got, tt.v); err != nil {
				t.Fatal(err)
			}
			e2e.CheckGolden(t, tt.name, got.Bytes())
		})
	}
}
