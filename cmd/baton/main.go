// Command baton is the single Baton binary: the scheduler, the worker, a
// local development cluster and the client CLI. This file only puts the
// commands of the packages under internal/ together and turns their errors
// into exit statuses.
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

	"github.com/baton-run/baton/cmd/baton/internal/bench"
	"github.com/baton-run/baton/cmd/baton/internal/buildinfo"
	"github.com/baton-run/baton/cmd/baton/internal/certs"
	"github.com/baton-run/baton/cmd/baton/internal/clientcli"
	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
	"github.com/baton-run/baton/cmd/baton/internal/dev"
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
	var exit *cliout.ExitError
	if errors.As(err, &exit) {
		return exit.Code
	}
	if usage := new(cliout.UsageError); errors.As(err, &usage) {
		fmt.Fprintf(os.Stderr, "baton: %s\n", usage.Error())
		return 2
	}
	if ce := new(connect.Error); errors.As(err, &ce) {
		fmt.Fprintf(os.Stderr, "baton: %s: %s\n", ce.Code(), ce.Message())
	} else {
		fmt.Fprintf(os.Stderr, "baton: %v\n", err)
	}
	return 1
}

// version names this build; releases set it with
// -ldflags "-X main.version=v1.2.3".
var version = "dev"

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "baton",
		Version:       buildinfo.Read(version).Version,
		Short:         "Baton runs jobs on a fleet of workers, conducted by one scheduler.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(dev.NewCommand())
	root.AddCommand(daemon.NewSchedulerCommand(), daemon.NewStoreCommand())
	root.AddCommand(daemon.NewWorkerCommand(), daemon.NewKeeperCommand())
	root.AddCommand(bench.NewCommand())
	root.AddCommand(certs.NewCommand(), certs.NewTokenCommand())
	root.AddCommand(clientcli.Commands()...)
	root.AddCommand(buildinfo.NewCommand(version))
	root.SetVersionTemplate(buildinfo.Prefix + "{{.Version}}\n")
	root.SetFlagErrorFunc(cliout.FlagError)
	return root
}
