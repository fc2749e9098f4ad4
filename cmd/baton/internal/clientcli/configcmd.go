package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"

	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/spf13/cobra"
)

func newConfigCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Inspect configuration",
		Args:  usageArgs(cobra.NoArgs),
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
		Args: usageArgs(cobra.NoArgs),
	}
	co := bindClientFlags(print)
	_ = print.Flags().MarkHidden("output")
	print.RunE = func(cmd *cobra.Command, _ []string) error { return printClientConfig(cmd.OutOrStdout(), co) }

	sched := &cobra.Command{
		Use:   "scheduler",
		Short: "Print the effective configuration of baton scheduler",
		Args:  usageArgs(cobra.NoArgs),
	}
	loadSched := bindConfigFlags(sched, schedulerFlags)
	sched.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg := defaultSchedulerConfig()
		if err := loadSched(&cfg); err != nil {
			return err
		}
		// As `baton scheduler` fills it in.
		if cfg.Scheduler.DataDir == "" {
			cfg.Scheduler.DataDir = filepath.Join(stateDir(), "scheduler")
		}
		if err := printTOML(cmd.OutOrStdout(), &cfg); err != nil {
			return err
		}
		return cfg.validate()
	}

	worker := &cobra.Command{
		Use:   "worker",
		Short: "Print the effective configuration of baton worker",
		Args:  usageArgs(cobra.NoArgs),
	}
	loadWorker := bindConfigFlags(worker, workerFlags)
	worker.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg := defaultWorkerConfig()
		if err := loadWorker(&cfg); err != nil {
			return err
		}
		// As `baton worker` fills it in.
		if cfg.Worker.DataDir == "" {
			cfg.Worker.DataDir = defaultWorkerDataDir(cfg.Worker.Name)
		}
		cfg.Worker.fillJobUIDs(os.Geteuid())
		if err := printTOML(cmd.OutOrStdout(), &cfg); err != nil {
			return err
		}
		return cfg.validate()
	}

	client := &cobra.Command{
		Use:   "client",
		Short: "Print the effective configuration of the client commands",
		Args:  usageArgs(cobra.NoArgs),
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
	if err := printTOML(w, &cfg); err != nil {
		return err
	}
	return cfg.Client.checkScheduler()
}

// printTOML writes a config struct (a pointer) as TOML, in the form its
// file takes.
func printTOML(w io.Writer, cfg any) error {
	body, err := toml.Parser().Marshal(structMap(reflect.ValueOf(cfg).Elem()))
	if err != nil {
		return fmt.Errorf("config print: %w", err)
	}
	_, err = w.Write(body)
	return err
}
