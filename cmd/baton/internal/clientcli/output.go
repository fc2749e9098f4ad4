package clientcli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// outputFormat is what -o asks for.
type outputFormat string

const (
	formatTable outputFormat = "table"
	formatJSON  outputFormat = "json"
)

// writeJSON prints one protobuf message as indented protojson.
func writeJSON(w io.Writer, msg proto.Message) error {
	raw, err := protojson.Marshal(msg)
	if err != nil {
		return err
	}
	return writeIndented(w, raw)
}

// writeJSONList prints messages as one indented JSON array ("[]" when
// empty), so a listing is a single document whatever its length.
func writeJSONList[M proto.Message](w io.Writer, msgs []M) error {
	items := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		raw, err := protojson.Marshal(m)
		if err != nil {
			return err
		}
		items = append(items, raw)
	}
	raw, err := json.Marshal(items)
	if err != nil {
		return err
	}
	return writeIndented(w, raw)
}

// writeJSONLine prints one protobuf message as compact JSON on one line.
func writeJSONLine(w io.Writer, msg proto.Message) error {
	raw, err := protojson.Marshal(msg)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

// writeIndented re-indents JSON: protojson varies its spacing on purpose,
// and scripts diffing our output should not see that.
func writeIndented(w io.Writer, raw []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// tableStyle fixes what table output depends on besides the data, so that
// tests can render it deterministically.
type tableStyle struct {
	now time.Time
	loc *time.Location
}

func liveStyle() tableStyle { return tableStyle{now: time.Now(), loc: time.Local} }

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// writeJobsTable prints one line per job.
func writeJobsTable(w io.Writer, jobs []*batonv1.JobStatus, style tableStyle) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "JOB ID\tWORKER\tSTATE\tEXIT\tOWNER\tAGE\tCOMMAND")
	for _, j := range jobs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			j.GetJobId(), dash(j.GetWorkerId()), stateText(j), exitText(j),
			dash(j.GetOwner()), style.age(j.GetCreatedAt()), truncate(commandLine(j.GetSpec()), 60))
	}
	return tw.Flush()
}

// writeWorkersTable prints one line per worker.
func writeWorkersTable(w io.Writer, workers []*batonv1.Worker, style tableStyle) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tSTATE\tADDRESS\tJOBS\tLABELS\tHEARTBEAT")
	for _, wk := range workers {
		jobs := strconv.Itoa(int(wk.GetRunningJobs()))
		if wk.GetCapacity() > 0 {
			jobs += "/" + strconv.Itoa(int(wk.GetCapacity()))
		}
		hb := "-"
		if wk.GetLastHeartbeat() != nil {
			hb = style.age(wk.GetLastHeartbeat()) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n",
			wk.GetName(), workerStateName(wk.GetState()), dash(wk.GetAddress()), jobs, dash(labelText(wk.GetLabels())), hb)
	}
	return tw.Flush()
}

// writeJobStatus prints everything known about one job, a field a line.
func writeJobStatus(w io.Writer, j *batonv1.JobStatus, style tableStyle) error {
	tw := newTable(w)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("Job", j.GetJobId())
	row("Worker", j.GetWorkerId())
	row("State", stateText(j))
	row("Exit", exitText(j))
	row("Reason", j.GetReason())
	row("Owner", dash(j.GetOwner()))
	row("Stopped by", j.GetStoppedBy())
	row("Group", j.GetGroupId())
	spec := j.GetSpec()
	row("Command", commandLine(spec))
	row("Script", scriptNote(spec))
	if len(spec.GetEnv()) > 0 {
		row("Env", labelText(spec.GetEnv()))
	}
	if d := spec.GetTimeout(); d != nil && d.AsDuration() > 0 {
		row("Timeout", d.AsDuration().String())
	}
	if len(spec.GetSelector()) > 0 {
		row("Selector", labelText(spec.GetSelector()))
	}
	if p := spec.GetPriority(); p != 0 {
		row("Priority", strconv.Itoa(int(p)))
	}
	row("Queue wait", queueWaitText(spec))
	row("Working dir", spec.GetWorkingDir())
	if len(spec.GetLabels()) > 0 {
		row("Labels", labelText(spec.GetLabels()))
	}
	row("Created", style.when(j.GetCreatedAt()))
	row("Started", style.when(j.GetStartedAt()))
	ended := style.when(j.GetEndedAt())
	if ended != "" && j.GetStartedAt() != nil {
		ran := j.GetEndedAt().AsTime().Sub(j.GetStartedAt().AsTime())
		ended += ", ran " + ran.Round(time.Millisecond).String()
	}
	row("Ended", ended)
	if j.GetPid() > 0 {
		row("PID", strconv.Itoa(int(j.GetPid())))
	}
	row("Output", byteCount(j.GetStdoutBytes())+" stdout, "+byteCount(j.GetStderrBytes())+" stderr")
	row("Cost", costText(j))
	row("Containment", j.GetContainment())
	row("Run as", j.GetRunAs())
	if r := spec.GetRetry(); r != nil {
		row("Attempt", fmt.Sprintf("%d of %d", max(j.GetAttempt(), 1), r.GetAttempts()))
	}
	for _, a := range j.GetAttempts() {
		row("Attempt "+strconv.Itoa(int(a.GetNumber())), attemptText(a))
	}
	if len(spec.GetAfter()) > 0 {
		row("After", afterText(spec.GetAfter()))
	}
	if spec.ArrayIndex != nil {
		row("Array index", strconv.Itoa(int(spec.GetArrayIndex())))
	}
	return tw.Flush()
}

// attemptText is one earlier attempt in a line: "FAILED, exit 3 on w1,
// ran 1.2s".
func attemptText(a *batonv1.Attempt) string {
	var b strings.Builder
	b.WriteString(strings.TrimPrefix(a.GetState().String(), "JOB_STATE_"))
	if a.ExitCode != nil {
		fmt.Fprintf(&b, ", exit %d", a.GetExitCode())
	}
	if a.GetWorkerId() != "" {
		b.WriteString(" on " + a.GetWorkerId())
	}
	if a.GetStartedAt() != nil && a.GetEndedAt() != nil {
		b.WriteString(", ran " + a.GetEndedAt().AsTime().Sub(a.GetStartedAt().AsTime()).Round(time.Millisecond).String())
	}
	if a.GetReason() != "" {
		b.WriteString(" (" + a.GetReason() + ")")
	}
	if cost := costText(&batonv1.JobStatus{State: a.GetState(), Usage: a.GetUsage()}); cost != "" {
		b.WriteString("; " + cost)
	}
	return b.String()
}

// afterText lists what a job waits for: "succeeded:ID, ended:group/ID".
func afterText(deps []*batonv1.Dependency) string {
	parts := make([]string, 0, len(deps))
	for _, d := range deps {
		cond := strings.ToLower(strings.TrimPrefix(d.GetCondition().String(), "DEPENDENCY_CONDITION_"))
		if cond == "unspecified" {
			cond = "succeeded"
		}
		what := d.GetJobId()
		if d.GetGroupId() != "" {
			what = "group/" + d.GetGroupId()
		}
		parts = append(parts, cond+":"+what)
	}
	return strings.Join(parts, ", ")
}

// costText is what the job's run cost: "CPU 1.02s user + 52ms system, peak
// memory 100.5 MiB, wall 2.5s (cgroup)", "so far" while it runs, or only
// the wall time while nothing else is measured.
func costText(j *batonv1.JobStatus) string {
	u := j.GetUsage()
	if u == nil {
		return ""
	}
	d := func(p *durationpb.Duration) string { return p.AsDuration().Round(time.Millisecond).String() }
	wall := "wall " + d(u.GetWall())
	if !terminalState(j.GetState()) {
		wall += " so far"
	}
	if u.GetSource() == "" {
		return wall + " (CPU and memory not measured)"
	}
	peak := "unknown"
	if n := u.GetPeakMemoryBytes(); n > 0 {
		peak = byteCount(n)
	}
	return fmt.Sprintf("CPU %s user + %s system, peak memory %s, %s (%s)",
		d(u.GetCpuUser()), d(u.GetCpuSystem()), peak, wall, u.GetSource())
}

// terminalState reports whether s is an end.
func terminalState(s batonv1.JobState) bool {
	return s >= batonv1.JobState_JOB_STATE_SUCCEEDED && s <= batonv1.JobState_JOB_STATE_LOST
}

// stateText is a job's state as tables show it, with its place in the
// queue when it waits there: "QUEUED (#3)".
func stateText(j *batonv1.JobStatus) string {
	name := jobStateName(j.GetState())
	if p := j.GetQueuePosition(); j.GetState() == batonv1.JobState_JOB_STATE_QUEUED && p > 0 {
		name += " (#" + strconv.Itoa(int(p)) + ")"
	}
	return name
}

// queueWaitText is how long the job could wait for a slot ("up to 10m0s",
// "without limit"), or "" when it could not wait at all.
func queueWaitText(spec *batonv1.JobSpec) string {
	switch d := spec.GetQueueTimeout().AsDuration(); {
	case d < 0:
		return "without limit"
	case d > 0:
		return "up to " + d.String()
	}
	return ""
}

// jobStateName drops the enum prefix: "RUNNING".
func jobStateName(s batonv1.JobState) string {
	return strings.TrimPrefix(s.String(), "JOB_STATE_")
}

func workerStateName(s batonv1.WorkerState) string {
	return strings.TrimPrefix(s.String(), "WORKER_STATE_")
}

// exitText is the exit code, else the signal, else "-" (still running, or
// ended without either, like a LOST job).
func exitText(j *batonv1.JobStatus) string {
	switch {
	case j.ExitCode != nil:
		return strconv.Itoa(int(j.GetExitCode()))
	case j.GetSignal() != "":
		return j.GetSignal()
	}
	return "-"
}

// commandLine shows a spec the way it would be typed: command, path, args,
// with arguments quoted where a shell would need it.
func commandLine(spec *batonv1.JobSpec) string {
	words := []string{spec.GetCommand()}
	if spec.GetPath() != "" {
		words = append(words, spec.GetPath())
	}
	if spec.GetScriptName() != "" {
		words = append(words, spec.GetScriptName())
	}
	words = append(words, spec.GetArgs()...)
	for i, w := range words {
		words[i] = cliout.ShellQuote(w)
	}
	return strings.TrimSpace(strings.Join(words, " "))
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// labelText is "k=v,k2=v2", sorted by key.
func labelText(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// age is how long ago ts was, in the largest whole unit ("45s", "3m",
// "2h", "4d"), or "-" when unset.
func (s tableStyle) age(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	d := max(s.now.Sub(ts.AsTime()), 0)
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + "d"
}

// when is a full local time with its age, or "" when unset.
func (s tableStyle) when(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().In(s.loc).Format("2006-01-02 15:04:05 MST") + " (" + s.age(ts) + " ago)"
}

// byteCount is a size in B, KiB, MiB or GiB with one decimal.
func byteCount(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	v, unit := float64(n)/1024, "KiB"
	for _, u := range []string{"MiB", "GiB", "TiB"} {
		if v < 1024 {
			break
		}
		v, unit = v/1024, u
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + unit
}

// isTTY reports whether w is a terminal.
func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// spinner shows that the CLI is waiting, on a terminal only: scripts and
// logs reading stderr never see it. It appears after a short delay, so a
// quick answer shows nothing at all.
type spinner struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once
	w    io.Writer
	tty  bool
	msg  atomic.Pointer[string]
	said sync.Once
}

// spinnerDelay is how long a wait lasts before the spinner appears.
const spinnerDelay = 200 * time.Millisecond

func startSpinner(w io.Writer, msg string) *spinner {
	s := &spinner{stop: make(chan struct{}), done: make(chan struct{}), w: w, tty: isTTY(w)}
	s.msg.Store(&msg)
	if !s.tty {
		close(s.done)
		return s
	}
	go func() {
		defer close(s.done)
		frames := []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}
		timer := time.NewTimer(spinnerDelay)
		defer timer.Stop()
		shown := false
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				if shown {
					fmt.Fprint(w, "\r\033[K")
				}
				return
			case <-timer.C:
				fmt.Fprintf(w, "\r\033[K%s %s", frames[i%len(frames)], *s.msg.Load())
				shown = true
				timer.Reset(100 * time.Millisecond)
			}
		}
	}()
	return s
}

// say changes what the spinner says; without a terminal it writes the news
// once, as a line.
func (s *spinner) say(msg string) {
	if s.tty {
		s.msg.Store(&msg)
		return
	}
	s.said.Do(func() { fmt.Fprintln(s.w, "baton: "+msg) })
}

// end erases the spinner and returns once it is gone; safe to call twice.
func (s *spinner) end() {
	s.once.Do(func() { close(s.stop) })
	<-s.done
}
