package clientcli

import (
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
)

func newConfigCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Inspect configuration",
		Args:  cliout.UsageArgs(cobra.NoArgs),
	}
	cmd.AddCommand(newConfigPrintCommand())
	return cmd
}

// newConfigPrintCommand prints a command's effective configuration: what
// it would run with after the defaults, the file, BATON_ variables and the
// flags (which are the command's own). A token is shown as "<redacted>".
func newConfigPrintCommand() *cobra.Command {
	print := &cobra.Command{
		Use:   "print [scheduler|worker|client]",
		Short: "Print the effective configuration of a command as TOML (default: client)",
		Long: `print shows the configuration a command would run with, after its
defaults, its config file, BATON_ environment variables and the flags given
here (the same flags the command itself takes), as TOML. Without an
argument it prints the client commands' configuration. The output is a
valid config file; a client token is printed as "<redacted>".`,
		Args: cliout.UsageArgs(cobra.NoArgs),
	}
	co := bindClientFlags(print)
	_ = print.Flags().MarkHidden("output")
	print.RunE = func(cmd *cobra.Command, _ []string) error { return printClientConfig(cmd.OutOrStdout(), co) }

	sched := &cobra.Command{
		Use:   "scheduler",
		Short: "Print the effective configuration of baton scheduler",
		Args:  cliout.UsageArgs(cobra.NoArgs),
	}
	loadSched := config.BindFlags(sched, daemon.SchedulerFlags, daemon.Configs())
	sched.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg := daemon.DefaultSchedulerConfig()
		if err := loadSched(&cfg); err != nil {
			return err
		}
		// As `baton scheduler` fills it in.
		if cfg.Scheduler.DataDir == "" {
			cfg.Scheduler.DataDir = filepath.Join(config.StateDir(), "scheduler")
		}
		if err := config.PrintTOML(cmd.OutOrStdout(), &cfg); err != nil {
			return err
		}
		return cfg.Validate()
	}

	worker := &cobra.Command{
		Use:   "worker",
		Short: "Print the effective configuration of baton worker",
		Args:  cliout.UsageArgs(cobra.NoArgs),
	}
	loadWorker := config.BindFlags(worker, daemon.WorkerFlags, daemon.Configs())
	worker.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg := daemon.DefaultWorkerConfig()
		if err := loadWorker(&cfg); err != nil {
			return err
		}
		// As `baton worker` fills it in.
		if cfg.Worker.DataDir == "" {
			cfg.Worker.DataDir = daemon.DefaultWorkerDataDir(cfg.Worker.Name)
		}
		cfg.Worker.FillJobUIDs(os.Geteuid())
		if err := config.PrintTOML(cmd.OutOrStdout(), &cfg); err != nil {
			return err
		}
		return cfg.Validate()
	}

	client := &cobra.Command{
		Use:   "client",
		Short: "Print the effective configuration of the client commands",
		Args:  cliout.UsageArgs(cobra.NoArgs),
	}
	cco := bindClientFlags(client)
	_ = client.Flags().MarkHidden("output")
	client.RunE = func(cmd *cobra.Command, _ []string) error { return printClientConfig(cmd.OutOrStdout(), cco) }
	print.AddCommand(sched, worker, client)
	return print
}

// printClientConfig prints the client configuration with its token hidden,
// then checks that its scheduler address is usable.
func printClientConfig(w io.Writer, co *clientOptions) error {
	cfg, err := co.config()
	if err != nil {
		return err
	}
	if cfg.Client.Token != "" {
		cfg.Client.Token = "<redacted>"
	}
	if err := config.PrintTOML(w, &cfg); err != nil {
		return err
	}
	return checkSchedulerAddr(cfg.Client)
}
