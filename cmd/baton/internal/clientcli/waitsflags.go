package clientcli

import (
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// waitOptions are the flags of jobs that wait for others (--after,
// --after-group) and of arrays (--array).
type waitOptions struct {
	after      []string
	afterGroup []string
	array      string
}

func bindWaitFlags(fs *pflag.FlagSet, o *waitOptions) {
	fs.StringArrayVar(&o.after, "after", nil, "start once job ID ended: [succeeded|failed|ended:]ID, succeeded by default (repeat for more)")
	fs.StringArrayVar(&o.afterGroup, "after-group", nil, "start once every job of group ID ended: [succeeded|failed|ended:]ID (repeat for more)")
	fs.StringVar(&o.array, "array", "", "start one job per index: FIRST-LAST[%MAX] runs at most MAX at once; the index is in BATON_ARRAY_INDEX")
}

// apply sets the request's dependencies and array from the flags.
func (o *waitOptions) apply(req *batonv1.StartJobRequest) error {
	for _, v := range o.after {
		cond, id, err := parseAfter("--after", v)
		if err != nil {
			return err
		}
		req.After = append(req.After, &batonv1.Dependency{JobId: id, Condition: cond})
	}
	for _, v := range o.afterGroup {
		cond, id, err := parseAfter("--after-group", v)
		if err != nil {
			return err
		}
		req.After = append(req.After, &batonv1.Dependency{GroupId: id, Condition: cond})
	}
	if o.array != "" {
		a, err := parseArray(o.array)
		if err != nil {
			return err
		}
		if req.GetAll() {
			return cliout.UsageErrorf("--array and --all do not go together")
		}
		req.Array = a
	}
	return nil
}

var afterConditions = map[string]batonv1.DependencyCondition{
	"succeeded": batonv1.DependencyCondition_DEPENDENCY_CONDITION_SUCCEEDED,
	"failed":    batonv1.DependencyCondition_DEPENDENCY_CONDITION_FAILED,
	"ended":     batonv1.DependencyCondition_DEPENDENCY_CONDITION_ENDED,
}

// parseAfter reads [CONDITION:]ID.
func parseAfter(flag, v string) (batonv1.DependencyCondition, string, error) {
	cond := batonv1.DependencyCondition_DEPENDENCY_CONDITION_SUCCEEDED
	id := v
	if name, rest, ok := strings.Cut(v, ":"); ok {
		c, known := afterConditions[name]
		if !known {
			return 0, "", cliout.UsageErrorf("%s %q: the condition is succeeded, failed or ended", flag, v)
		}
		cond, id = c, rest
	}
	if id == "" {
		return 0, "", cliout.UsageErrorf("%s %q: give a job or group id", flag, v)
	}
	return cond, id, nil
}

// parseArray reads FIRST-LAST[%MAX], or N[%MAX] for the one index N.
func parseArray(v string) (*batonv1.ArraySpec, error) {
	bad := func() (*batonv1.ArraySpec, error) {
		return nil, cliout.UsageErrorf("--array %q: use FIRST-LAST[%%MAX], e.g. 0-99%%10", v)
	}
	span, most, throttled := strings.Cut(v, "%")
	firstS, lastS, ranged := strings.Cut(span, "-")
	if !ranged {
		lastS = firstS
	}
	first, err1 := strconv.ParseInt(firstS, 10, 32)
	last, err2 := strconv.ParseInt(lastS, 10, 32)
	if err1 != nil || err2 != nil || first < 0 || last < first {
		return bad()
	}
	if last-first >= 10000 {
		return nil, cliout.UsageErrorf("--array %q: an array has at most 10000 jobs", v)
	}
	a := &batonv1.ArraySpec{First: int32(first), Last: int32(last)}
	if throttled {
		n, err := strconv.ParseInt(most, 10, 32)
		if err != nil || n < 1 {
			return bad()
		}
		a.MaxRunning = int32(n)
	}
	return a, nil
}
