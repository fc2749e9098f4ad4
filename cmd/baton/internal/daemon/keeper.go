package daemon

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/services/keeper"
)

// NewKeeperCommand is the keeper process `baton worker` starts for its data
// directory (see package keeper). It is not for people to run: it reads its
// options from the worker on standard input.
func NewKeeperCommand() *cobra.Command {
	var (
		dataDir string
		check   bool
	)
	cmd := &cobra.Command{
		Use:    "keeper",
		Short:  "Keep a worker's jobs running across restarts of the worker (started by baton worker)",
		Args:   cobra.NoArgs,
		Hidden: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return cliout.UsageErrorf("keeper: --data-dir is required")
			}
			if check {
				return keeper.Check(dataDir, os.Stdin, cmd.OutOrStdout())
			}
			logger, err := config.NewLogger(config.LogConfig{Level: "info", Format: "json"}, os.Stderr)
			if err != nil {
				return err
			}
			err = keeper.Run(cmd.Context(), dataDir, os.Stdin, logger)
			if errors.Is(err, keeper.ErrRunning) {
				logger.Info("another keeper serves this data directory; leaving it to that one", "data_dir", dataDir)
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the worker's data directory")
	cmd.Flags().BoolVar(&check, "check", false, "only check that this build can carry on with the handoff on standard input")
	return cmd
}

// newDecommissionCommand stops a worker's jobs for good: the keeper stops
// every job (TERM, grace, KILL), records their ends and exits, and a worker
// process attached to it reports the ends and leaves.
func newDecommissionCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "decommission",
		Short: "Stop every job of this worker and end its keeper (the worker process, if running, leaves the scheduler)",
		Args:  cobra.NoArgs,
	}
	loadConfig := bindWorkerConfig(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		found, err := keeper.Decommission(cmd.Context(), cfg.Worker.DataDir)
		if err != nil {
			return err
		}
		if !found {
			fmt.Fprintf(cmd.OutOrStdout(), "no keeper runs for %s: no job of this worker is running\n", cfg.Worker.DataDir)
			return nil
		}
		fmt.Fprintf(cmd.OutOrStdout(), "every job of %s stopped; its keeper ended\n", cfg.Worker.DataDir)
		return nil
	}
	return cmd
}
