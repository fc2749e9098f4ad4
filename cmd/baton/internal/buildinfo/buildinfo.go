// Package buildinfo describes the running binary for bug reports: `baton
// version` and `baton --version`.
package buildinfo

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
)

// Prefix begins the first line of `baton version` and the whole of
// `baton --version`, which scripts and tests compare.
const Prefix = "baton version "

// Build describes the binary for bug reports. The commit fields are
// empty when the build had no version control information: a build
// outside a checkout, from the module proxy, or with -buildvcs=false.
type Build struct {
	// Version is the release: the -X main.version a release links in,
	// else the module's version of a `go install ...@v1.2.3`, else "dev".
	Version       string `json:"version"`
	Module        string `json:"module,omitempty"`
	ModuleVersion string `json:"moduleVersion,omitempty"`
	Commit        string `json:"commit,omitempty"`
	CommitTime    string `json:"commitTime,omitempty"`
	// Modified says the checkout had changes not in Commit.
	Modified  bool   `json:"modified"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Read describes the running binary, whose -X main.version is linked.
func Read(linked string) Build {
	bi, _ := debug.ReadBuildInfo()
	return describeBuild(linked, bi)
}

// describeBuild describes a build whose -X main.version is linked and
// whose build information is bi, which may be nil.
func describeBuild(linked string, bi *debug.BuildInfo) Build {
	v := Build{Version: linked, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if v.Version == "" {
		v.Version = "dev"
	}
	if bi == nil {
		return v
	}
	if bi.GoVersion != "" {
		v.GoVersion = bi.GoVersion
	}
	v.Module = bi.Main.Path
	if bi.Main.Version != "(devel)" {
		v.ModuleVersion = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.CommitTime = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	// A checkout's module version is a pseudo-version derived from its
	// commit, already shown as such; only a module built by version (no
	// checkout) names a release.
	if v.Version == "dev" && v.Commit == "" && v.ModuleVersion != "" {
		v.Version = v.ModuleVersion
	}
	return v
}

// writeVersion prints v as `baton version` does: the line of
// `baton --version`, then one field per line.
func writeVersion(w io.Writer, v Build) error {
	var b strings.Builder
	field := func(name, value string) { fmt.Fprintf(&b, "%-12s%s\n", name+":", value) }
	b.WriteString(Prefix + v.Version + "\n")
	if v.Module != "" {
		module := v.Module
		if v.ModuleVersion != "" {
			module += " " + v.ModuleVersion
		}
		field("Module", module)
	}
	switch {
	case v.Commit == "":
		field("Commit", "unknown (built without version control information)")
	case v.Modified:
		field("Commit", v.Commit+" (modified)")
	default:
		field("Commit", v.Commit)
	}
	if v.CommitTime != "" {
		field("Committed", v.CommitTime)
	}
	field("Go", v.GoVersion+" "+v.Platform)
	_, err := io.WriteString(w, b.String())
	return err
}

// NewCommand is `baton version`, for a binary whose -X main.version is
// linked.
func NewCommand(linked string) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print this binary's version, commit and Go version",
		Args:  cliout.UsageArgs(cobra.NoArgs),
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		v := Read(linked)
		switch output {
		case "table":
			return writeVersion(cmd.OutOrStdout(), v)
		case "json":
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(v)
		}
		return cliout.UsageErrorf("--output %q: use table or json", output)
	}
	return cmd
}
