package clientcli

import (
	"github.com/spf13/cobra"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
)

// newRootCommand is baton's root command as far as this package's
// commands go: the same name, flag errors and silences as main's.
func newRootCommand() *cobra.Command {
	root := &cobra.Command{Use: "baton", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(Commands()...)
	root.SetFlagErrorFunc(cliout.FlagError)
	return root
}
