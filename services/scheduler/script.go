package scheduler

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// A script sent with the job (StartJobRequest.script) travels with the
// job to its worker, which writes it into the job's own directory and
// runs command with it as the path. The schema bounds it (1 MiB with the
// rest of the spec) and its name's characters; the status describes it
// (name, size, SHA-256) and never carries it. A job started at once sends
// it in the start call; a queued job keeps it in the store beside its
// place in the queue (store.Job.Script) until its start is settled.

// defaultScriptName is the file name of a script sent without one.
const defaultScriptName = "script"

var errBadScript = errors.New("bad script")

// checkScript refuses what the schema lets through but no worker would
// take: a script name without a script, and the names "." and "..".
func checkScript(req *batonv1.StartJobRequest) error {
	name := req.GetScriptName()
	switch {
	case len(req.GetScript()) == 0 && name != "":
		return newError(errBadScript, "script_name %q needs a script", name)
	case name == "." || name == "..":
		return newError(errBadScript, "script_name %q is not a file name", name)
	}
	return nil
}

// describeScript sets spec's description of the request's script.
func describeScript(spec *batonv1.JobSpec, req *batonv1.StartJobRequest) {
	script := req.GetScript()
	if len(script) == 0 {
		return
	}
	spec.ScriptName = req.GetScriptName()
	if spec.ScriptName == "" {
		spec.ScriptName = defaultScriptName
	}
	sum := sha256.Sum256(script)
	spec.ScriptSize, spec.ScriptSha256 = int64(len(script)), hex.EncodeToString(sum[:])
}
