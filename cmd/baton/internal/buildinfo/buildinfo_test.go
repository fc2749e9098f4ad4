package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
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
		want   buildVersion
	}{
		{
			name:   "no build information",
			linked: "dev",
			want:   buildVersion{Version: "dev"},
		},
		{
			name:   "buildvcs=false",
			linked: "dev",
			bi:     &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: module, Version: "(devel)"}},
			want:   buildVersion{Version: "dev", Module: module, GoVersion: "go1.26.8"},
		},
		{
			name:   "checkout with changes",
			linked: "dev",
			bi: &debug.BuildInfo{GoVersion: "go1.26.8", Settings: checkout,
				Main: debug.Module{Path: module, Version: "v0.0.0-20261204220102-46ba8fdef269+dirty"}},
			want: buildVersion{Version: "dev", Module: module, ModuleVersion: "v0.0.0-20261204220102-46ba8fdef269+dirty",
				Commit: "46ba8fdef269a24fa75bbee9d4e1499dd438f432", CommitTime: "2026-12-04T22:01:02Z", Modified: true, GoVersion: "go1.26.8"},
		},
		{
			name:   "release linked in",
			linked: "v1.2.3",
			bi:     &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: module, Version: "(devel)"}},
			want:   buildVersion{Version: "v1.2.3", Module: module, GoVersion: "go1.26.8"},
		},
		{
			name:   "go install at a version",
			linked: "dev",
			bi:     &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: module, Version: "v1.4.0"}},
			want:   buildVersion{Version: "v1.4.0", Module: module, ModuleVersion: "v1.4.0", GoVersion: "go1.26.8"},
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
		v    buildVersion
	}{
		{"version", buildVersion{Version: "dev", Module: "github.com/baton-run/baton",
			ModuleVersion: "v0.0.0-20261204220102-46ba8fdef269+dirty", Commit: "46ba8fdef269a24fa75bbee9d4e1499dd438f432",
			CommitTime: "2026-12-04T22:01:02Z", Modified: true, GoVersion: "go1.26.8", Platform: "linux/amd64"}},
		{"version_novcs", buildVersion{Version: "v1.2.3", Module: "github.com/baton-run/baton",
			GoVersion: "go1.26.8", Platform: "linux/arm64"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got bytes.Buffer
			if err := writeVersion(&got, tt.v); err != nil {
				t.Fatal(err)
			}
			checkGolden(t, tt.name, got.Bytes())
		})
	}
}

// TestVersionCommand: `baton version` begins with the line `baton
// --version` prints, `-o json` is one document saying the same, and an
// unknown format is a usage error.
func TestVersionCommand(t *testing.T) {
	t.Parallel()
	execute := func(args ...string) (string, error) {
		root := newRootCommand()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(args)
		err := root.ExecuteContext(t.Context())
		return out.String(), err
	}
	flag, err := execute("--version")
	if err != nil {
		t.Fatalf("--version: %v", err)
	}
	text, err := execute("version")
	if err != nil {
		t.Fatalf("version: %v", err)
	}
	first, rest, _ := strings.Cut(text, "\n")
	if first+"\n" != flag || first != versionPrefix+version {
		t.Errorf("baton version begins %q, baton --version prints %q; want both %q", first, flag, versionPrefix+version)
	}
	if !strings.Contains(rest, "\nGo:") || !strings.Contains(rest, " "+runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH+"\n") {
		t.Errorf("baton version does not name the Go version %s:\n%s", runtime.Version(), text)
	}
	raw, err := execute("version", "-o", "json")
	if err != nil {
		t.Fatalf("version -o json: %v", err)
	}
	var v buildVersion
	if err := json.Unmarshal([]byte(raw), &v); err != nil || v.Version != version || v.GoVersion != runtime.Version() {
		t.Errorf("version -o json: %v %+v\n%s", err, v, raw)
	}
	var usage *usageError
	if _, err := execute("version", "-o", "yaml"); !errors.As(err, &usage) {
		t.Errorf("version -o yaml: %v, want a usage error", err)
	}
}

// TestVersionOfReleaseBuild runs a binary built with -X main.version: both
// `baton version` and `baton --version` name that release.
func TestVersionOfReleaseBuild(t *testing.T) {
	t.Parallel()
	bin := secondBaton(t)
	home := t.TempDir()
	flag, err := runBaton(t, bin, home, "--version")
	if err != nil {
		t.Fatalf("--version: %v\n%s", err, flag)
	}
	text, err := runBaton(t, bin, home, "version")
	if err != nil {
		t.Fatalf("version: %v\n%s", err, text)
	}
	if want := versionPrefix + "second\n"; flag != want || !strings.HasPrefix(text, want) {
		t.Errorf("--version %q, version %q; want both to begin %q", flag, text, want)
	}
}
