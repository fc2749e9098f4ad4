// Package clientcli holds the client commands, which call a scheduler:
// run, start, stop, status, logs, jobs, workers, drain and schedule; and the
// commands that read configuration without running a daemon, `baton
// config` and `baton check`.
package clientcli

import "github.com/spf13/cobra"

// Commands returns the client commands, `baton config` and `baton check`.
func Commands() []*cobra.Command {
	return []*cobra.Command{
		newRunCommand(), newStartCommand(), newStopCommand(), newStatusCommand(),
		newLogsCommand(), newJobsCommand(), newWorkersCommand(), newDrainCommand(),
		newScheduleCommand(), newConfigCommand(), newCheckCommand(),
	}
}
