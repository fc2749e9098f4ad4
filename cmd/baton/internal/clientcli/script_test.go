package clientcli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
)

// TestScriptRequest: --script sends the file's content under its name,
// run by --interpreter (bash by default) with every argument after it;
// a file over 1 MiB, an empty or missing one is refused before anything
// is sent, saying why.
func TestScriptRequest(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	deploy := write("deploy.sh", []byte("echo deploy\n"))
	odd := write("my script.sh", []byte("echo odd\n"))
	most := write("most.sh", bytes.Repeat([]byte("#"), 1<<20))
	big := write("big.sh", bytes.Repeat([]byte("#"), 1<<20+1))
	empty := write("empty.sh", nil)

	ro, args := parseRunFlags(t, []string{"--script", deploy, "--env", "K=v", "a", "--flag-of-the-script", "b.sh"})
	req, err := ro.startRequest(args)
	if err != nil {
		t.Fatal(err)
	}
	if req.GetCommand() != "bash" || req.GetPath() != "" || string(req.GetScript()) != "echo deploy\n" || req.GetScriptName() != "deploy.sh" ||
		!slices.Equal(req.GetArgs(), []string{"a", "--flag-of-the-script", "b.sh"}) || req.GetEnv()["K"] != "v" {
		t.Errorf("request: %v", req)
	}
	ro, args = parseRunFlags(t, []string{"--script", odd, "--interpreter", "sh"})
	if req, err = ro.startRequest(args); err != nil || req.GetCommand() != "sh" || req.GetScriptName() != "" || len(req.GetArgs()) != 0 {
		t.Errorf("a file name the schema does not take: %v, %v", req, err)
	}
	ro, args = parseRunFlags(t, []string{"--script", most})
	if req, err = ro.startRequest(args); err != nil || len(req.GetScript()) != 1<<20 {
		t.Errorf("a script of 1 MiB: %d bytes, %v", len(req.GetScript()), err)
	}
	for _, tc := range []struct {
		name  string
		args  []string
		usage string
	}{
		{"over 1 MiB", []string{"--script", big}, "larger than 1 MiB"},
		{"empty", []string{"--script", empty}, "is empty"},
		{"missing", []string{"--script", filepath.Join(dir, "nope.sh")}, "no such file"},
		{"a directory", []string{"--script", dir}, "not a file"},
		{"with --no-path", []string{"--script", deploy, "--no-path"}, "--no-path"},
		{"interpreter alone", []string{"--interpreter", "sh", "--", "echo"}, "--interpreter goes with --script"},
	} {
		ro, args := parseRunFlags(t, tc.args)
		_, err := ro.startRequest(args)
		var ue *cliout.UsageError
		if !errors.As(err, &ue) || !strings.Contains(ue.Error(), tc.usage) {
			t.Errorf("%s: %v, want a usage error saying %q", tc.name, err, tc.usage)
		}
	}
}
