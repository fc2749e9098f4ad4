package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/baton-run/baton/cmd/baton/internal/buildinfo"
	"github.com/baton-run/baton/cmd/baton/internal/cliout"
)

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
	if first+"\n" != flag || first != buildinfo.Prefix+version {
		t.Errorf("baton version begins %q, baton --version prints %q; want both %q", first, flag, buildinfo.Prefix+version)
	}
	if !strings.Contains(rest, "\nGo:") || !strings.Contains(rest, " "+runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH+"\n") {
		t.Errorf("baton version does not name the Go version %s:\n%s", runtime.Version(), text)
	}
	raw, err := execute("version", "-o", "json")
	if err != nil {
		t.Fatalf("version -o json: %v", err)
	}
	var v buildinfo.Build
	if err := json.Unmarshal([]byte(raw), &v); err != nil || v.Version != version || v.GoVersion != runtime.Version() {
		t.Errorf("version -o json: %v %+v\n%s", err, v, raw)
	}
	var usage *cliout.UsageError
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
	if want := buildinfo.Prefix + "second\n"; flag != want || !strings.HasPrefix(text, want) {
		t.Errorf("--version %q, version %q; want both to begin %q", flag, text, want)
	}
}
