package jobrun

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

const (
	// MaxScriptBytes is the largest script Start takes with a job (1 MiB).
	MaxScriptBytes = 1 << 20
	// DefaultScriptName is the file name of a script sent without one.
	DefaultScriptName = "script"

	maxScriptNameLen = 128
)

// takeScript checks the script of spec, fills in its description and
// takes the content out of spec, so that no copy the Runner keeps holds
// it. It returns the content, nil for a spec without a script.
func takeScript(spec *Spec) ([]byte, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidSpec}, a...)...)
	}
	script := spec.Script
	spec.Script = nil
	if len(script) == 0 {
		if spec.ScriptName != "" || spec.ScriptSize != 0 || spec.ScriptSHA256 != "" {
			return nil, bad("a script name needs a script")
		}
		return nil, nil
	}
	if len(script) > MaxScriptBytes {
		return nil, bad("the script is %s; a script sent with the job may be at most %s", formatBytes(int64(len(script))), formatBytes(MaxScriptBytes))
	}
	if spec.Path != "" {
		return nil, bad("a job with a script takes no script path: the script is the path")
	}
	if spec.ScriptName == "" {
		spec.ScriptName = DefaultScriptName
	}
	if err := checkScriptName(spec.ScriptName); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(script)
	spec.ScriptSize, spec.ScriptSHA256 = int64(len(script)), hex.EncodeToString(sum[:])
	return script, nil
}

// checkScriptName refuses a name that is not one plain file name: the
// script is written beneath the job's home directory and must stay there.
func checkScriptName(name string) error {
	if name == "." || name == ".." || len(name) > maxScriptNameLen {
		return fmt.Errorf("%w: script name %q is not a file name", ErrInvalidSpec, name)
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: script name %q may contain only letters, digits, '.', '_' and '-'", ErrInvalidSpec, name)
		}
	}
	return nil
}

// addScript makes room in p's argv for the script's path, which is known
// once the job has its home directory (see spawn).
func (p *plan) addScript(spec *Spec) {
	if spec.ScriptName != "" {
		p.scriptAt = len(p.args)
		p.args = append(p.args, "")
	}
}

// writeJobScript writes the script into home, a directory just made and
// still the worker's alone, before it is handed to the job's uid: no job
// process can have planted anything there. The file is read-only and
// executable for its owner, the job's uid when chown is set.
func writeJobScript(home, name string, content []byte, uid, gid int, chown bool) (err error) {
	// O_EXCL: never follow or reuse what is there (open(2): with O_CREAT
	// and O_EXCL a symbolic link is not followed).
	f, err := os.OpenFile(filepath.Join(home, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o500)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if _, err := f.Write(content); err != nil {
		return err
	}
	// The mode is set whatever the umask.
	if err := f.Chmod(0o500); err != nil {
		return err
	}
	if chown {
		return f.Chown(uid, gid)
	}
	return nil
}
