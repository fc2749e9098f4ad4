package jobrun

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// bigScript is a bash script of exactly size bytes that prints its name,
// its arguments and its working directory; a comment pads it.
func bigScript(t testing.TB, size int) []byte {
	t.Helper()
	head := "#!/bin/bash\necho \"name=$(basename \"$0\") mode=$(stat -c %a \"$0\") size=$(stat -c %s \"$0\") args=$# [$1] [$2] cwd=$PWD\"\nexit 0\n#"
	if size < len(head)+1 {
		t.Fatalf("a script of %d bytes is too small", size)
	}
	return []byte(head + strings.Repeat("x", size-len(head)-1) + "\n")
}

func sha(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestScriptSentWithJob runs a 100 KiB script that the scripts directory
// does not have: it lands in the job's home, read-only, and runs with
// the arguments after it; the status describes it without its content,
// and so does the record a restarted Runner reads.
func TestScriptSentWithJob(t *testing.T) {
	t.Parallel()
	opts := Options{DataDir: t.TempDir(), ScriptsDir: t.TempDir(), AllowedCommands: testCommands}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	script := bigScript(t, 100<<10)
	spec := Spec{Command: "bash", Script: script, ScriptName: "deploy.sh", Args: []string{"a b", "c"}}
	st := mustStart(t, r, "s1", spec)
	if st.Spec.Script != nil || st.Spec.ScriptName != "deploy.sh" || st.Spec.ScriptSize != 100<<10 || st.Spec.ScriptSHA256 != sha(script) {
		t.Errorf("started spec: name %q size %d sha %q, content %d bytes", st.Spec.ScriptName, st.Spec.ScriptSize, st.Spec.ScriptSHA256, len(st.Spec.Script))
	}
	if spec.Script == nil {
		t.Error("Start took the caller's script away")
	}
	end := waitDone(t, r, "s1")
	out := string(readOutput(t, r, "s1", OutputRequest{}))
	home := filepath.Join(r.homesDir, "s1")
	if want := fmt.Sprintf("name=deploy.sh mode=500 size=%d args=2 [a b] [c] cwd=%s\n", len(script), home); end.State != StateSucceeded || out != want {
		t.Errorf("job: %v %s, output %q, want %q", end.State, end.Reason, out, want)
	}
	// Once the job ended, its script is removed, and with it the home it
	// alone was left in.
	if _, err := os.Lstat(home); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the job's home after its end: %v, want it removed", err)
	}
	if again, created, err := r.Start(t.Context(), "s1", spec); err != nil || created || again.ID != "s1" {
		t.Errorf("the same start again: created %v, %v", created, err)
	}
	other := spec
	other.Script = bigScript(t, 100<<10+1)
	if _, _, err := r.Start(t.Context(), "s1", other); !errors.Is(err, ErrConflict) {
		t.Errorf("the same id with another script: %v, want ErrConflict", err)
	}
	if err := r.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	r2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close(t.Context())
	got, err := r2.Status("s1")
	if err != nil || got.Spec.ScriptName != "deploy.sh" || got.Spec.ScriptSize != 100<<10 || got.Spec.ScriptSHA256 != sha(script) {
		t.Errorf("after a restart: %+v, %v", got.Spec, err)
	}
}

// TestScriptWithWorkingDir: a job with a script and a working directory
// runs in that directory, its script still in its home.
func TestScriptWithWorkingDir(t *testing.T) {
	t.Parallel()
	r, scripts := newRunner(t, nil)
	if err := os.Mkdir(filepath.Join(scripts, "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustStart(t, r, "w1", Spec{Command: "bash", Script: bigScript(t, 200), Dir: "work"})
	st := waitDone(t, r, "w1")
	out := string(readOutput(t, r, "w1", OutputRequest{}))
	if want := "name=script mode=500 size=200 args=0 [] [] cwd=" + filepath.Join(r.scriptsDir, "work") + "\n"; st.State != StateSucceeded || out != want {
		t.Errorf("job: %v %s, output %q, want %q", st.State, st.Reason, out, want)
	}
}

// TestScriptRefused: a start with a bad script, or one refused for any
// other reason, leaves nothing behind: no job, no home, no file.
func TestScriptRefused(t *testing.T) {
	t.Parallel()
	r, scripts := newRunner(t, nil)
	writeScript(t, scripts, "real.sh", "echo hi\n")
	ok := []byte("echo hi\n")
	for _, tc := range []struct {
		name string
		spec Spec
		err  error
	}{
		{"too big", Spec{Command: "bash", Script: make([]byte, MaxScriptBytes+1)}, ErrInvalidSpec},
		{"with a path", Spec{Command: "bash", Script: ok, Path: "real.sh"}, ErrInvalidSpec},
		{"dot dot", Spec{Command: "bash", Script: ok, ScriptName: ".."}, ErrInvalidSpec},
		{"dot", Spec{Command: "bash", Script: ok, ScriptName: "."}, ErrInvalidSpec},
		{"slash", Spec{Command: "bash", Script: ok, ScriptName: "../../x"}, ErrInvalidSpec},
		{"long name", Spec{Command: "bash", Script: ok, ScriptName: strings.Repeat("a", 129)}, ErrInvalidSpec},
		{"name without script", Spec{Command: "bash", ScriptName: "x.sh"}, ErrInvalidSpec},
		{"command not allowed", Spec{Command: "nosuch", Script: ok}, ErrCommandNotAllowed},
		{"missing working dir", Spec{Command: "bash", Script: ok, Dir: "nowhere"}, ErrScriptNotFound},
	} {
		id := "bad-" + strings.ReplaceAll(tc.name, " ", "-")
		_, _, err := r.Start(t.Context(), id, tc.spec)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.err)
		}
		if _, err := r.Status(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: the job is known after a refused start: %v", tc.name, err)
		}
	}
	if homes, err := os.ReadDir(r.homesDir); err != nil || len(homes) != 0 {
		t.Errorf("homes after refused starts: %v, %v", homes, err)
	}
	if escaped, _ := filepath.Glob(filepath.Join(filepath.Dir(r.homesDir), "*", "x")); len(escaped) != 0 {
		t.Errorf("a script outside its home: %v", escaped)
	}
}

// TestScriptOfAnotherJob: with per-job uids a job's script is its uid's,
// mode 0500, in a home no other job can enter; the script runs under its
// job's uid, and another job can neither read it nor list the home.
func TestScriptOfAnotherJob(t *testing.T) {
	t.Parallel()
	r, _ := uidRunner(t, testUIDs(900, 4), nil)
	const secret = "alice-script-secret"
	alice := mustStart(t, r, "alice", Spec{
		Command: "bash", ScriptName: "alice.sh",
		Script: []byte("# " + secret + "\nid -u\necho ready\nexec sleep 1000\n"),
	})
	lines := waitForLines(t, r, "alice", 2)
	file := filepath.Join(r.homesDir, "alice", "alice.sh")
	uid, gid, mode := fileOwner(t, file)
	if lines[0] != strconv.FormatUint(uint64(uid), 10) || mode != 0o500 || uid != gid || !r.id.uids.contains(uid) {
		t.Errorf("alice runs as %s; her script is uid %d gid %d mode %o", lines[0], uid, gid, mode)
	}
	mustStart(t, r, "bob", Spec{Command: "sh", Args: []string{"-c", `cat "$1"; echo "cat=$?"; ls "$2"; echo "ls=$?"`, "sh", file, filepath.Dir(file)}})
	st := waitDone(t, r, "bob")
	out := string(readOutput(t, r, "bob", OutputRequest{}))
	if st.State != StateSucceeded || !strings.Contains(out, "cat=1") || !strings.Contains(out, "ls=2") || strings.Contains(out, secret) {
		t.Errorf("bob reading alice's script: %v %s\n%s", st.State, st.Reason, out)
	}
	if _, err := r.Stop(t.Context(), alice.ID, "test"); err != nil {
		t.Fatal(err)
	}
}
