package clientcli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// maxScriptBytes is the most a script sent with a job may hold, as the
// scheduler checks it (with the command, arguments and environment).
const maxScriptBytes = 1 << 20

// scriptNamePattern is the schema's pattern for script_name.
var scriptNamePattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// scriptRequest builds the StartJob request of `run --script FILE
// [ARGS...]`: FILE's content goes with the job, under its base name, and
// --interpreter runs it with ARGS after it.
func (o *runOptions) scriptRequest(args []string) (*batonv1.StartJobRequest, error) {
	if o.noPath {
		return nil, cliout.UsageErrorf("--no-path does not go with --script: every argument is the script's")
	}
	if o.interpreter == "" {
		return nil, cliout.UsageErrorf("--interpreter must name a command, such as bash")
	}
	script, err := readScript(o.script)
	if err != nil {
		return nil, err
	}
	req := &batonv1.StartJobRequest{Command: o.interpreter, Script: script, Args: args}
	// The file's own name, when the schema takes it, so that $0 and the
	// job's status say which script ran.
	if name := filepath.Base(o.script); scriptNamePattern.MatchString(name) && name != "." && name != ".." {
		req.ScriptName = name
	}
	if err := o.setCommon(req); err != nil {
		return nil, err
	}
	return req, nil
}

// readScript reads the file of --script, refusing one over
// maxScriptBytes before it is sent.
func readScript(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, cliout.UsageErrorf("--script %s: no such file", path)
		}
		return nil, cliout.UsageErrorf("--script %s: %v", path, errors.Unwrap(err))
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() && fi.Mode()&fs.ModeNamedPipe == 0 {
		return nil, cliout.UsageErrorf("--script %s is not a file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxScriptBytes+1))
	switch {
	case err != nil:
		return nil, cliout.UsageErrorf("--script %s: %v", path, err)
	case len(b) > maxScriptBytes:
		return nil, cliout.UsageErrorf("--script %s is larger than 1 MiB (%d bytes), the most a script sent with a job may hold; install it in the workers' scripts directory instead", path, maxScriptBytes)
	case len(b) == 0:
		return nil, cliout.UsageErrorf("--script %s is empty", path)
	}
	return b, nil
}

// scriptNote describes a script sent with the job, "" for none.
func scriptNote(spec *batonv1.JobSpec) string {
	if spec.GetScriptName() == "" {
		return ""
	}
	return fmt.Sprintf("%s, sent with the job: %s, sha256 %s", spec.GetScriptName(), byteCount(spec.GetScriptSize()), spec.GetScriptSha256())
}
