// Command baton is the single Baton binary: the scheduler, the worker, a
// local development cluster and the client CLI.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// run executes the command line and returns the process's exit status.
func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCommand()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var exit *exitError
	if errors.As(err, &exit) {
		return exit.code
	}
	if usage := new(usageError); errors.As(err, &usage) {
		fmt.Fprintf(os.Stderr, "baton: %s\n", usage.msg)
		return 2
	}
	if ce := new(connect.Error); errors.As(err, &ce) {
		fmt.Fprintf(os.Stderr, "baton: %s: %s\n", ce.Code(), ce.Message())
	} else {
		fmt.Fprintf(os.Stderr, "baton: %v\n", err)
	}
	return 1
}

// exitError ends the process with a given status and no message.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// version names this build; releases set it with
// -ldflags "-X main.version=v1.2.3".
var version = "dev"

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "baton",
		Version:       readBuildVersion().Version,
		Short:         "Baton runs jobs on a fleet of workers, conducted by one scheduler.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDevCommand())
	root.AddCommand(newSchedulerCommand())
	root.AddCommand(newWorkerCommand(), newKeeperCommand())
	root.AddCommand(newBenchCommand())
	root.AddCommand(newCertsCommand())
	root.AddCommand(newTokenCommand())
	root.AddCommand(newRunCommand(), newStartCommand(), newStopCommand(), newStatusCommand(),
		newLogsCommand(), newJobsCommand(), newWorkersCommand(), newDrainCommand())
	root.AddCommand(newConfigCommand(), newCheckCommand())
	root.AddCommand(newVersionCommand())
	root.SetVersionTemplate(versionPrefix + "{{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{msg: cmd.CommandPath() + ": " + err.Error()}
	})
	return root
}
