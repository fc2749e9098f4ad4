package clientcli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// newScheduleCommand is `baton schedule`: define, list, show, remove,
// pause, resume and fire schedules.
func newScheduleCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Start jobs at the times a cron expression names",
		Long: `schedule manages schedules: a job spec the scheduler starts at the times a
cron expression names, in a time zone, as the schedule's owner. Each fire
time starts exactly one job, even across scheduler restarts.`,
	}
	cmd.AddCommand(newScheduleAddCommand(), newScheduleListCommand(), newScheduleShowCommand(),
		scheduleRefCommand("rm", "Delete a schedule (the jobs it started stay)", deleteSchedule),
		scheduleRefCommand("pause", "Stop a schedule from firing until it is resumed", pauseSchedule),
		scheduleRefCommand("resume", "Let a paused schedule fire again, from now on", resumeSchedule),
		scheduleRefCommand("run-now", "Fire a schedule now, once", triggerSchedule))
	return cmd
}

// scheduleFlags are the schedule's own flags of `schedule add`.
type scheduleFlags struct {
	cron     string
	zone     string
	overlap  string
	catchUp  time.Duration
	history  int
	update   bool
	ro       runOptions
	explicit func(name string) bool
}

func newScheduleAddCommand() *cobra.Command {
	var sf scheduleFlags
	cmd := &cobra.Command{
		Use:   "add NAME --cron SPEC [flags] -- COMMAND [ARGS...]",
		Short: "Define a schedule (or, with --update, replace one)",
		Long: `add defines a schedule named NAME that starts COMMAND [ARGS...] at the times
--cron names: 5 fields (minute hour day-of-month month day-of-week), 6 with
seconds first, a descriptor (@hourly, @daily, @weekly, @monthly, @yearly) or
"@every DURATION". The job flags are start's; without --queue-timeout a
fire's job waits in the queue at most the schedule's catch-up time.`,
		Args: cliout.UsageArgs(cobra.MinimumNArgs(2)),
	}
	co := bindClientFlags(cmd)
	bindRunFlags(cmd, &sf.ro)
	fs := cmd.Flags()
	// NAME comes before the flags; COMMAND after "--".
	fs.SetInterspersed(true)
	fs.StringVar(&sf.cron, "cron", "", "when to fire: cron fields, @hourly-style descriptor or @every DURATION (required)")
	fs.StringVar(&sf.zone, "tz", "", "IANA time zone the cron is read in, e.g. Europe/Paris (default UTC)")
	fs.StringVar(&sf.overlap, "overlap", "allow", "when an earlier fire's job still runs: allow, forbid (skip) or replace (stop it first)")
	fs.DurationVar(&sf.catchUp, "catch-up", 0, "how late a fire may start after the scheduler was down; later ones are missed (default 1m)")
	fs.IntVar(&sf.history, "history", 0, "how many recent fires to keep (default 20)")
	fs.BoolVar(&sf.update, "update", false, "replace the definition of an existing schedule NAME")
	sf.explicit = fs.Changed
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if dash := cmd.ArgsLenAtDash(); dash != 1 {
			return cliout.UsageErrorf("usage: baton schedule add NAME --cron SPEC [flags] -- COMMAND [ARGS...]")
		}
		sc, err := sf.schedule(args[0], args[1:])
		if err != nil {
			return err
		}
		c, err := prepare(cmd, co)
		if err != nil {
			return err
		}
		defer c.client.Close()
		sched := c.client.Scheduler()
		var out *batonv1.Schedule
		if sf.update {
			res, err := sched.UpdateSchedule(c.ctx, connect.NewRequest(&batonv1.UpdateScheduleRequest{Schedule: sc}))
			if err != nil {
				return explain(err)
			}
			out = res.Msg.GetSchedule()
		} else {
			res, err := sched.CreateSchedule(c.ctx, connect.NewRequest(&batonv1.CreateScheduleRequest{Schedule: sc}))
			if err != nil {
				return explain(err)
			}
			out = res.Msg.GetSchedule()
		}
		if c.format == formatJSON {
			return writeJSON(c.out, out)
		}
		return writeSchedule(c.out, out, liveStyle())
	}
	return cmd
}

// schedule builds the schedule from the flags, NAME and COMMAND [ARGS...].
func (sf *scheduleFlags) schedule(name string, command []string) (*batonv1.Schedule, error) {
	if sf.cron == "" {
		return nil, cliout.UsageErrorf("--cron is required, e.g. --cron '0 3 * * *' or --cron '@every 10m'")
	}
	overlap, ok := map[string]batonv1.OverlapPolicy{
		"allow":   batonv1.OverlapPolicy_OVERLAP_POLICY_ALLOW,
		"forbid":  batonv1.OverlapPolicy_OVERLAP_POLICY_FORBID,
		"replace": batonv1.OverlapPolicy_OVERLAP_POLICY_REPLACE,
	}[strings.ToLower(sf.overlap)]
	if !ok {
		return nil, cliout.UsageErrorf("--overlap %q: use allow, forbid or replace", sf.overlap)
	}
	if sf.catchUp < 0 || sf.history < 0 || sf.history > 1000 {
		return nil, cliout.UsageErrorf("--catch-up must not be negative, and --history must be 0 to 1000")
	}
	job, err := sf.ro.startRequest(command)
	if err != nil {
		return nil, err
	}
	if err := sf.ro.setQueueing(job); err != nil {
		return nil, err
	}
	if !sf.ro.noWait && !sf.explicit("queue-timeout") {
		job.QueueTimeout = nil // the scheduler's default for a fire: its catch-up time
	}
	sc := &batonv1.Schedule{Name: name, Cron: sf.cron, TimeZone: sf.zone, Overlap: overlap, HistoryLimit: int32(sf.history), Job: job}
	if sf.catchUp > 0 {
		sc.CatchUp = durationpb.New(sf.catchUp)
	}
	return sc, nil
}

func newScheduleListCommand() *cobra.Command {
	var owner string
	cmd := clientCommand(&cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List schedules with their last and next fire",
		Args:    cliout.UsageArgs(cobra.NoArgs),
	}, func(c *clientCall, _ []string) error {
		var all []*batonv1.Schedule
		token := ""
		for range 1000 {
			res, err := c.client.Scheduler().ListSchedules(c.ctx, connect.NewRequest(&batonv1.ListSchedulesRequest{Owner: owner, PageSize: 1000, PageToken: token}))
			if err != nil {
				return err
			}
			all = append(all, res.Msg.GetSchedules()...)
			if res.Msg.GetNextPageToken() == "" || res.Msg.GetNextPageToken() == token {
				break
			}
			token = res.Msg.GetNextPageToken()
		}
		if c.format == formatJSON {
			return writeJSONList(c.out, all)
		}
		return writeSchedulesTable(c.out, all, liveStyle())
	})
	cmd.Flags().StringVar(&owner, "owner", "", "only this owner's schedules (admins), e.g. user/alice")
	return cmd
}

func newScheduleShowCommand() *cobra.Command {
	var owner string
	cmd := clientCommand(&cobra.Command{
		Use:   "show NAME",
		Short: "Show a schedule and its recent fires",
		Args:  cliout.UsageArgs(cobra.ExactArgs(1)),
	}, func(c *clientCall, args []string) error {
		res, err := c.client.Scheduler().GetSchedule(c.ctx, connect.NewRequest(&batonv1.GetScheduleRequest{Schedule: &batonv1.ScheduleRef{Name: args[0], Owner: owner}}))
		if err != nil {
			return err
		}
		if c.format == formatJSON {
			return writeJSON(c.out, res.Msg.GetSchedule())
		}
		return writeSchedule(c.out, res.Msg.GetSchedule(), liveStyle())
	})
	cmd.Flags().StringVar(&owner, "owner", "", "the schedule's owner, for an admin reaching another's, e.g. user/alice")
	return cmd
}

// scheduleRefCommand is a command that acts on one schedule by name.
func scheduleRefCommand(use, short string, act func(c *clientCall, ref *batonv1.ScheduleRef) error) *cobra.Command {
	var owner string
	cmd := clientCommand(&cobra.Command{
		Use:   use + " NAME",
		Short: short,
		Args:  cliout.UsageArgs(cobra.ExactArgs(1)),
	}, func(c *clientCall, args []string) error {
		return act(c, &batonv1.ScheduleRef{Name: args[0], Owner: owner})
	})
	cmd.Flags().StringVar(&owner, "owner", "", "the schedule's owner, for an admin reaching another's, e.g. user/alice")
	return cmd
}

func deleteSchedule(c *clientCall, ref *batonv1.ScheduleRef) error {
	if _, err := c.client.Scheduler().DeleteSchedule(c.ctx, connect.NewRequest(&batonv1.DeleteScheduleRequest{Schedule: ref})); err != nil {
		return err
	}
	if c.format == formatTable {
		fmt.Fprintf(c.out, "deleted schedule %s\n", ref.GetName())
	}
	return nil
}

func pauseSchedule(c *clientCall, ref *batonv1.ScheduleRef) error {
	res, err := c.client.Scheduler().PauseSchedule(c.ctx, connect.NewRequest(&batonv1.PauseScheduleRequest{Schedule: ref}))
	if err != nil {
		return err
	}
	return c.printSchedule(res.Msg.GetSchedule())
}

func resumeSchedule(c *clientCall, ref *batonv1.ScheduleRef) error {
	res, err := c.client.Scheduler().ResumeSchedule(c.ctx, connect.NewRequest(&batonv1.ResumeScheduleRequest{Schedule: ref}))
	if err != nil {
		return err
	}
	return c.printSchedule(res.Msg.GetSchedule())
}

func triggerSchedule(c *clientCall, ref *batonv1.ScheduleRef) error {
	res, err := c.client.Scheduler().TriggerSchedule(c.ctx, connect.NewRequest(&batonv1.TriggerScheduleRequest{Schedule: ref}))
	if err != nil {
		return err
	}
	if c.format == formatJSON {
		return writeJSON(c.out, res.Msg)
	}
	f := res.Msg.GetFire()
	fmt.Fprintf(c.out, "%s\t%s\n", outcomeName(f.GetOutcome()), fireDetail(f))
	return nil
}

func (c *clientCall) printSchedule(sc *batonv1.Schedule) error {
	if c.format == formatJSON {
		return writeJSON(c.out, sc)
	}
	return writeSchedule(c.out, sc, liveStyle())
}

// writeSchedulesTable writes one line per schedule.
func writeSchedulesTable(w io.Writer, list []*batonv1.Schedule, style tableStyle) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tOWNER\tCRON\tZONE\tSTATE\tLAST\tNEXT\tFIRES\tMISSES\tSKIPS")
	for _, sc := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", sc.GetName(), sc.GetOwner(), sc.GetCron(),
			zoneName(sc), pausedText(sc), style.age(sc.GetLastFireTime()), style.until(sc.GetNextFireTime()),
			sc.GetFires(), sc.GetMisses(), sc.GetSkips())
	}
	return tw.Flush()
}

// writeSchedule writes one schedule's definition, state and recent fires.
func writeSchedule(w io.Writer, sc *batonv1.Schedule, style tableStyle) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "name:\t%s\n", sc.GetName())
	fmt.Fprintf(tw, "owner:\t%s\n", sc.GetOwner())
	fmt.Fprintf(tw, "cron:\t%s (%s)\n", sc.GetCron(), zoneName(sc))
	fmt.Fprintf(tw, "overlap:\t%s\n", strings.ToLower(strings.TrimPrefix(sc.GetOverlap().String(), "OVERLAP_POLICY_")))
	fmt.Fprintf(tw, "state:\t%s\n", pausedText(sc))
	words := []string{sc.GetJob().GetCommand()}
	if p := sc.GetJob().GetPath(); p != "" {
		words = append(words, p)
	}
	fmt.Fprintf(tw, "command:\t%s\n", strings.Join(append(words, sc.GetJob().GetArgs()...), " "))
	fmt.Fprintf(tw, "last fire:\t%s\n", dash(style.when(sc.GetLastFireTime())))
	if next := sc.GetNextFireTime(); next != nil {
		fmt.Fprintf(tw, "next fire:\t%s (in %s)\n", next.AsTime().In(style.loc).Format("2006-01-02 15:04:05 MST"), style.until(next))
	}
	fmt.Fprintf(tw, "fires:\t%d started, %d missed, %d skipped\n", sc.GetFires(), sc.GetMisses(), sc.GetSkips())
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(sc.GetRecent()) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = newTable(w)
	fmt.Fprintln(tw, "FIRE TIME\tOUTCOME\tDETAIL")
	for _, f := range sc.GetRecent() {
		at := f.GetFireTime().AsTime().In(style.loc).Format("2006-01-02 15:04:05 MST")
		if f.GetManual() {
			at += " (manual)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", at, outcomeName(f.GetOutcome()), fireDetail(f))
	}
	return tw.Flush()
}

func outcomeName(o batonv1.FireOutcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "FIRE_OUTCOME_"))
}

// fireDetail is a fire's job, group or reason.
func fireDetail(f *batonv1.ScheduleFire) string {
	switch {
	case f.GetGroupId() != "":
		return "group " + f.GetGroupId()
	case f.GetJobId() != "":
		return "job " + f.GetJobId()
	}
	return dash(f.GetReason())
}

func zoneName(sc *batonv1.Schedule) string {
	if sc.GetTimeZone() == "" {
		return "UTC"
	}
	return sc.GetTimeZone()
}

func pausedText(sc *batonv1.Schedule) string {
	if sc.GetPaused() {
		return "paused"
	}
	return "active"
}

// until is how long until ts, in the largest whole unit, or "-".
func (s tableStyle) until(ts interface{ AsTime() time.Time }) string {
	if ts == nil || ts.AsTime().IsZero() {
		return "-"
	}
	d := max(ts.AsTime().Sub(s.now), 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}
