// Package cliout holds what every baton command shares to end a command
// line: the errors main turns into exit statuses, and quoting for the
// commands it prints.
package cliout

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// UsageError is a command line the CLI cannot act on: the process prints
// it and exits with status 2, as shells and getopt tools do.
type UsageError struct{ msg string }

func (e *UsageError) Error() string { return e.msg }

// UsageErrorf formats a UsageError.
func UsageErrorf(format string, args ...any) error {
	return &UsageError{msg: fmt.Sprintf(format, args...)}
}

// UsageArgs turns cobra's argument-count errors into usage errors.
func UsageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return FlagError(cmd, err)
		}
		return nil
	}
}

// FlagError is the root command's flag error function: a flag cobra
// cannot parse is a usage error naming the command.
func FlagError(cmd *cobra.Command, err error) error {
	return &UsageError{msg: cmd.CommandPath() + ": " + err.Error()}
}

// ExitError ends the process with status Code and no message.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// ShellQuote quotes a word in single quotes unless it is made only of
// characters no shell treats specially.
func ShellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
