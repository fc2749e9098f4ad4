package jobrun

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

const (
	maxIDLen   = 64
	maxPathLen = 4096
)

func validateID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("%w: the job ID must be 1 to %d characters long", ErrInvalidSpec, maxIDLen)
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("%w: the job ID may contain only letters, digits and '-'", ErrInvalidSpec)
		}
	}
	return nil
}

func hasNUL(s string) bool { return strings.IndexByte(s, 0) >= 0 }

// checkSpec validates what can be checked without touching the file system.
func (r *Runner) checkSpec(spec *Spec) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidSpec}, a...)...)
	}
	if spec.Command == "" {
		return bad("a command is required")
	}
	for what, s := range map[string]string{"command": spec.Command, "script path": spec.Path, "working directory": spec.Dir, "owner": spec.Owner, "group id": spec.GroupID} {
		if hasNUL(s) {
			return bad("the %s contains a NUL byte", what)
		}
		if len(s) > maxPathLen {
			return bad("the %s is longer than %d bytes", what, maxPathLen)
		}
	}
	for i, a := range spec.Args {
		if hasNUL(a) {
			return bad("argument %d contains a NUL byte", i+1)
		}
	}
	for k, v := range spec.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || hasNUL(v) {
			return bad("environment variable %q is malformed", k)
		}
	}
	for k, v := range spec.Labels {
		if hasNUL(k) || hasNUL(v) {
			return bad("label %q contains a NUL byte", k)
		}
	}
	if spec.Timeout < 0 || spec.OutputLimit < 0 || spec.MemoryLimit < 0 {
		return bad("timeout and limits must not be negative")
	}
	if spec.CPULimit < 0 || math.IsNaN(spec.CPULimit) || math.IsInf(spec.CPULimit, 0) {
		return bad("the CPU limit must be a non-negative number of cores")
	}
	if spec.CPULimit > 0 && spec.CPULimit < 0.01 {
		return bad("the CPU limit must be at least 0.01 cores")
	}
	if spec.MemoryLimit > 0 && spec.MemoryLimit < 1<<20 {
		return bad("the memory limit must be at least 1 MiB")
	}
	if spec.MemoryLimit > 0 && !r.cg.memoryOK() {
		return fmt.Errorf("%w: this worker cannot enforce memory limits (no memory cgroup controller)", ErrLimitsUnsupported)
	}
	if spec.CPULimit > 0 && !r.cg.cpuOK() {
		return fmt.Errorf("%w: this worker cannot enforce CPU limits (no cpu cgroup controller)", ErrLimitsUnsupported)
	}
	return nil
}

// plan is a validated Spec, resolved to what will be executed.
type plan struct {
	path    string   // executable to run (absolute)
	args    []string // full argv
	workDir string   // "" means the job's own fresh directory
	// script is the content of a script sent with the job, and scriptAt
	// the index in args of its path, filled in once its home exists.
	script   []byte
	scriptAt int
}

// resolve checks every path of the spec against the scripts directory. It
// creates nothing.
func (r *Runner) resolve(spec *Spec) (*plan, error) {
	p := &plan{}
	if exe, ok := r.allowed[spec.Command]; ok && spec.Path == "" && spec.Dir == "" {
		// Nothing to look up in the scripts directory: skip opening it.
		p.path = exe
		p.args = []string{filepath.Base(spec.Command)}
		p.addScript(spec)
		p.args = append(p.args, spec.Args...)
		return p, nil
	}
	root, err := os.OpenRoot(r.scriptsDir)
	if err != nil {
		return nil, fmt.Errorf("%w: the scripts directory is unavailable", ErrExec)
	}
	defer root.Close()

	cmd := spec.Command
	if exe, ok := r.allowed[cmd]; ok {
		p.path = exe
		p.args = []string{filepath.Base(cmd)}
	} else {
		if filepath.IsAbs(cmd) {
			return nil, fmt.Errorf("%w: command %q is neither allow-listed nor inside the scripts directory", ErrCommandNotAllowed, cmd)
		}
		abs, fi, err := r.open(root, cmd, "command")
		if err != nil {
			// A bare name that is neither allow-listed nor a script-dir file
			// is a command that is not allowed, not a missing script.
			if !strings.ContainsRune(cmd, '/') && errors.Is(err, ErrScriptNotFound) {
				return nil, fmt.Errorf("%w: command %q is not allow-listed on this worker", ErrCommandNotAllowed, cmd)
			}
			return nil, err
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%w: command %q is not a regular file", ErrInvalidSpec, cmd)
		}
		if fi.Mode().Perm()&0o111 == 0 {
			return nil, fmt.Errorf("%w: command %q is not executable", ErrCommandNotAllowed, cmd)
		}
		if !r.id.may(fi, 0o5) {
			return nil, fmt.Errorf("%w: command %q is not readable and executable by the jobs' users (chmod o+rx)", ErrCommandNotAllowed, cmd)
		}
		p.path = abs
		p.args = []string{abs}
	}
	if spec.Path != "" {
		abs, fi, err := r.open(root, spec.Path, "script")
		if err != nil {
			return nil, err
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%w: script %q is not a regular file", ErrInvalidSpec, spec.Path)
		}
		if !r.id.may(fi, 0o4) {
			return nil, fmt.Errorf("%w: script %q is not readable by the jobs' users (chmod o+r)", ErrCommandNotAllowed, spec.Path)
		}
		p.args = append(p.args, abs)
	}
	p.addScript(spec)
	p.args = append(p.args, spec.Args...)
	if spec.Dir != "" {
		abs, fi, err := r.open(root, spec.Dir, "working directory")
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("%w: working directory %q is not a directory", ErrInvalidSpec, spec.Dir)
		}
		if !r.id.may(fi, 0o1) {
			return nil, fmt.Errorf("%w: working directory %q is not searchable by the jobs' users (chmod o+x)", ErrCommandNotAllowed, spec.Dir)
		}
		p.workDir = abs
	}
	return p, nil
}

// open resolves name beneath the scripts root. os.Root refuses "..", absolute
// names and symlinks that are absolute or lead outside the root. It returns
// the absolute path of what was opened, read back from the open descriptor,
// so the path handed to execve is free of symlinks as of the check.
func (r *Runner) open(root *os.Root, name, what string) (string, fs.FileInfo, error) {
	if filepath.IsAbs(name) {
		return "", nil, fmt.Errorf("%w: %s %q must be relative to the scripts directory", ErrInvalidSpec, what, name)
	}
	// O_NONBLOCK: opening a FIFO planted in the scripts directory must not
	// block Start.
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
			return "", nil, fmt.Errorf("%w: %s %q not found in the scripts directory", ErrScriptNotFound, what, name)
		case errors.Is(err, syscall.ENAMETOOLONG):
			return "", nil, fmt.Errorf("%w: %s %q is too long", ErrInvalidSpec, what, name)
		case errors.Is(err, syscall.ELOOP):
			return "", nil, fmt.Errorf("%w: %s %q has too many levels of symbolic links", ErrInvalidSpec, what, name)
		}
		return "", nil, fmt.Errorf("%w: %s %q points outside the scripts directory", ErrInvalidSpec, what, name)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", nil, fmt.Errorf("%w: %s %q cannot be read", ErrInvalidSpec, what, name)
	}
	abs, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil || !strings.HasPrefix(abs, r.scriptsDir+string(filepath.Separator)) && abs != r.scriptsDir {
		abs = filepath.Join(r.scriptsDir, filepath.Clean(name))
	}
	return abs, fi, nil
}

// environ builds the job's environment: a fixed base, the inherited worker
// variables, then the spec's, with BATON_JOB_ID always last and authoritative.
func (r *Runner) environ(id, home string, spec *Spec) []string {
	env := map[string]string{
		"PATH": "/usr/local/bin:/usr/bin:/bin",
		"HOME": home,
		"LANG": "C.UTF-8",
	}
	for _, name := range r.opts.InheritEnv {
		v, ok := r.opts.InheritedValues[name]
		if r.opts.InheritedValues == nil {
			v, ok = os.LookupEnv(name)
		}
		if ok {
			env[name] = v
		}
	}
	maps.Copy(env, spec.Env)
	delete(env, "BATON_JOB_ID")
	out := make([]string, 0, len(env)+1)
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return append(out, "BATON_JOB_ID="+id)
}

// resolveAllowed maps allow-listed names to absolute executables.
func resolveAllowed(names []string, explicit bool, log interface {
	Debug(string, ...any)
	Warn(string, ...any)
}) map[string]string {
	out := make(map[string]string, len(names))
	for _, name := range names {
		path, err := exec.LookPath(name)
		switch {
		case errors.Is(err, exec.ErrDot):
			log.Warn("allow-listed command resolves to a relative path; skipped", "command", name)
			continue
		case err != nil:
			if explicit {
				log.Debug("allow-listed command not found; skipped", "command", name)
			} else {
				log.Debug("default command not found; skipped", "command", name)
			}
			continue
		case !filepath.IsAbs(path):
			log.Warn("allow-listed command resolves to a relative path; skipped", "command", name)
			continue
		}
		out[name] = path
	}
	return out
}

func cloneSpec(s Spec) Spec {
	s.Args = slices.Clone(s.Args)
	s.Env = maps.Clone(s.Env)
	s.Labels = maps.Clone(s.Labels)
	return s
}

func specEqual(a, b *Spec) bool {
	return a.Command == b.Command && a.Path == b.Path && slices.Equal(a.Args, b.Args) &&
		maps.Equal(a.Env, b.Env) && a.Dir == b.Dir && a.Timeout == b.Timeout &&
		a.OutputLimit == b.OutputLimit && a.MemoryLimit == b.MemoryLimit &&
		a.CPULimit == b.CPULimit && a.Owner == b.Owner && maps.Equal(a.Labels, b.Labels) &&
		a.GroupID == b.GroupID && a.ScriptName == b.ScriptName && a.ScriptSize == b.ScriptSize &&
		a.ScriptSHA256 == b.ScriptSHA256
}
