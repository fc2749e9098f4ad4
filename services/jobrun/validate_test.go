package jobrun

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStartRejectsUntrustedInput checks that every malformed or hostile
// spec is refused with the right sentinel and that no process runs: each
// script would create a marker file, and the test's child count must not
// grow. It is not parallel so that no other test's jobs are among the
// children.
func TestStartRejectsUntrustedInput(t *testing.T) {
	r, scripts := newRunner(t, func(o *Options) { o.CgroupParent = "-" })
	marker := filepath.Join(t.TempDir(), "ran")
	body := "#!/bin/sh\ntouch " + marker + "\n"
	writeScript(t, scripts, "ok.sh", body)
	writeScript(t, scripts, "sub/inner.sh", body)
	if err := os.WriteFile(filepath.Join(scripts, "noexec"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := writeScript(t, t.TempDir(), "outside.sh", body)
	for name, target := range map[string]string{
		"binsh":    "/bin/sh",
		"escape":   "../" + filepath.Base(filepath.Dir(outside)) + "/outside.sh",
		"absolute": outside,
		"relative": "ok.sh", // a relative symlink inside the root is fine
	} {
		if err := os.Symlink(target, filepath.Join(scripts, name)); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Remove(filepath.Join(scripts, "escape"))
	if err := os.Symlink(outside, filepath.Join(scripts, "escape")); err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(scripts, outside)
	if err := os.Symlink(rel, filepath.Join(scripts, "relescape")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		spec Spec
		want error
	}{
		{"dotdot path", Spec{Command: "sh", Path: "../../etc/passwd"}, ErrInvalidSpec},
		{"absolute path", Spec{Command: "sh", Path: "/etc/passwd"}, ErrInvalidSpec},
		{"escaping dotdot", Spec{Command: "sh", Path: "sub/../../x"}, ErrInvalidSpec},
		{"NUL in path", Spec{Command: "sh", Path: "a\x00b"}, ErrInvalidSpec},
		{"NUL in arg", Spec{Command: "sh", Path: "ok.sh", Args: []string{"a\x00"}}, ErrInvalidSpec},
		{"NUL in env", Spec{Command: "sh", Path: "ok.sh", Env: map[string]string{"A": "\x00"}}, ErrInvalidSpec},
		{"env name with =", Spec{Command: "sh", Path: "ok.sh", Env: map[string]string{"A=B": "c"}}, ErrInvalidSpec},
		{"5000-byte path", Spec{Command: "sh", Path: strings.Repeat("a", 5000)}, ErrInvalidSpec},
		{"long component", Spec{Command: "sh", Path: strings.Repeat("a", 300)}, ErrInvalidSpec},
		{"missing script", Spec{Command: "sh", Path: "nope.sh"}, ErrScriptNotFound},
		{"directory", Spec{Command: "sh", Path: "sub"}, ErrInvalidSpec},
		{"symlink to /bin/sh", Spec{Command: "binsh"}, ErrInvalidSpec},
		{"script symlink to /bin/sh", Spec{Command: "sh", Path: "binsh"}, ErrInvalidSpec},
		{"absolute symlink", Spec{Command: "sh", Path: "escape"}, ErrInvalidSpec},
		{"relative symlink escaping", Spec{Command: "sh", Path: "relescape"}, ErrInvalidSpec},
		{"command not allow-listed", Spec{Command: "python9"}, ErrCommandNotAllowed},
		{"absolute command", Spec{Command: "/bin/sh", Path: "ok.sh"}, ErrCommandNotAllowed},
		{"command via dotdot", Spec{Command: "../bin/sh"}, ErrInvalidSpec},
		{"not executable", Spec{Command: "./noexec"}, ErrCommandNotAllowed},
		{"empty command", Spec{Path: "ok.sh"}, ErrInvalidSpec},
		{"missing dir", Spec{Command: "sh", Path: "ok.sh", Dir: "nodir"}, ErrScriptNotFound},
		{"dir is a file", Spec{Command: "sh", Path: "ok.sh", Dir: "ok.sh"}, ErrInvalidSpec},
		{"escaping dir", Spec{Command: "sh", Path: "ok.sh", Dir: ".."}, ErrInvalidSpec},
		{"negative timeout", Spec{Command: "sh", Path: "ok.sh", Timeout: -1}, ErrInvalidSpec},
		{"unenforceable memory limit", Spec{Command: "sh", Path: "ok.sh", MemoryLimit: 64 << 20}, errLimitsOrNil(r)},
	}
	before, _ := liveChildren(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == nil {
				t.Skip("this host enforces memory limits")
			}
			_, _, err := r.Start(t.Context(), "attack", tc.spec)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), scripts) || strings.Contains(err.Error(), r.jobsDir) {
				t.Errorf("error leaks a host path: %v", err)
			}
		})
	}
	if after, _ := liveChildren(t); after > before {
		t.Errorf("children: %d before, %d after", before, after)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused script ran")
	}
	if entries, _ := os.ReadDir(r.jobsDir); len(entries) != 0 {
		t.Errorf("files left behind: %v", entries)
	}
	// The well-formed variants run.
	for i, spec := range []Spec{{Command: "sh", Path: "ok.sh"}, {Command: "ok.sh"}, {Command: "./sub/inner.sh", Dir: "sub"}, {Command: "relative"}} {
		id := "fine-" + string(rune('a'+i))
		mustStart(t, r, id, spec)
		if st := waitDone(t, r, id); st.State != StateSucceeded {
			t.Errorf("%+v: %v %s", spec, st.State, st.Reason)
		}
	}
}

// errLimitsOrNil returns ErrLimitsUnsupported when the Runner cannot
// enforce memory limits, nil otherwise.
func errLimitsOrNil(r *Runner) error {
	if r.cg.memoryOK() {
		return nil
	}
	return ErrLimitsUnsupported
}

func FuzzResolve(f *testing.F) {
	for _, s := range []string{"ok.sh", "../x", "/etc/passwd", "a/../ok.sh", "sub/../../x", "a\x00b", "link", ".", "sub/", "//ok.sh"} {
		f.Add(s)
	}
	scripts := f.TempDir()
	writeScript(f, scripts, "ok.sh", "#!/bin/sh\n")
	writeScript(f, scripts, "sub/x.sh", "#!/bin/sh\n")
	_ = os.Symlink("/etc/passwd", filepath.Join(scripts, "link"))
	r := &Runner{scriptsDir: scripts, allowed: map[string]string{"sh": "/bin/sh"}}
	f.Fuzz(func(t *testing.T, name string) {
		spec := Spec{Command: "sh", Path: name, Dir: name}
		if name == "" || r.checkSpec(&spec) != nil {
			return
		}
		spec.Dir = ""
		p, err := r.resolve(&spec)
		if err == nil {
			script := p.args[1]
			if !strings.HasPrefix(script, scripts+"/") {
				t.Fatalf("resolved %q outside the scripts directory: %q", name, script)
			}
			fi, err := os.Lstat(script)
			if err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("resolved %q to a non-regular file %q", name, script)
			}
			return
		}
		if !errors.Is(err, ErrInvalidSpec) && !errors.Is(err, ErrScriptNotFound) {
			t.Fatalf("unexpected error class for %q: %v", name, err)
		}
		if strings.Contains(err.Error(), scripts) {
			t.Fatalf("error leaks the scripts path: %v", err)
		}
	})
}
