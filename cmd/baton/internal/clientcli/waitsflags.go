package clientcli

import (
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// waitOptions are the flags of jobs that wait for others (--after,
// --after-group) and of arrays (--array).
type waitOptions struct {
	after      []string
	afterGroup []string
	array      string
	// retries is the most attempts (0: the flag was not given).
	retries         int
	retryBackoff    time.Duration
	retryMaxBackoff time.Duration
	retryOn         []string
}

func bindWaitFlags(fs *pflag.FlagSet, o *waitOptions) {
	fs.StringArrayVar(&o.after, "after", nil, "start once job ID ended: [succeeded|failed|ended:]ID, succeeded by default (repeat for more)")
	fs.StringArrayVar(&o.afterGroup, "after-group", nil, "start once every job of group ID ended: [succeeded|failed|ended:]ID (repeat for more)")
	fs.StringVar(&o.array, "array", "", "start one job per index: FIRST-LAST[%MAX] runs at most MAX at once; the index is in BATON_ARRAY_INDEX")
	fs.IntVar(&o.retries, "retry", 0, "run the job up to N times in all while its attempts fail (see --retry-on)")
	fs.DurationVar(&o.retryBackoff, "retry-backoff", time.Second, "wait before the second attempt; each later wait doubles")
	fs.DurationVar(&o.retryMaxBackoff, "retry-max-backoff", 5*time.Minute, "the longest wait between attempts")
	fs.StringSliceVar(&o.retryOn, "retry-on", nil, "which ends are retried: exit codes and timed-out, lost (default: any non-zero exit code, and lost)")
}

// retryPolicy is the policy the retry flags ask for, or nil.
func (o *waitOptions) retryPolicy() (*batonv1.RetryPolicy, error) {
	if o.retries == 0 {
		if len(o.retryOn) > 0 {
			return nil, cliout.UsageErrorf("--retry-on needs --retry N")
		}
		return nil, nil
	}
	if o.retries < 1 || o.retries > 100 {
		return nil, cliout.UsageErrorf("--retry %d: give the most attempts, 1 to 100", o.retries)
	}
	if o.retryBackoff < 0 || o.retryBackoff > 24*time.Hour || o.retryMaxBackoff < 0 || o.retryMaxBackoff > 24*time.Hour {
		return nil, cliout.UsageErrorf("--retry-backoff and --retry-max-backoff: 0 to 24h")
	}
	p := &batonv1.RetryPolicy{
		Attempts:       int32(o.retries),
		InitialBackoff: durationpb.New(o.retryBackoff),
		MaxBackoff:     durationpb.New(o.retryMaxBackoff),
		Lost:           len(o.retryOn) == 0,
	}
	for _, v := range o.retryOn {
		switch v {
		case "timed-out":
			p.TimedOut = true
		case "lost":
			p.Lost = true
		default:
			code, err := strconv.Atoi(v)
			if err != nil || code < 1 || code > 255 {
				return nil, cliout.UsageErrorf("--retry-on %q: exit codes 1 to 255, timed-out or lost", v)
			}
			p.ExitCodes = append(p.ExitCodes, int32(code))
		}
	}
	if len(o.retryOn) > 0 && len(p.ExitCodes) == 0 {
		return nil, cliout.UsageErrorf("--retry-on %s: name the exit codes to retry too (any non-zero is the default only without --retry-on)", strings.Join(o.retryOn, ","))
	}
	return p, nil
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
	policy, err := o.retryPolicy()
	if err != nil {
		return err
	}
	req.Retry = policy
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
