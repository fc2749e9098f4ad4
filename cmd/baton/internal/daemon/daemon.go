// Package daemon builds and runs Baton's daemons from their configuration:
// the scheduler, the worker and the worker's keeper, and their commands.
// Every command and test that starts a daemon goes through it.
package daemon

import "github.com/baton-run/baton/cmd/baton/internal/config"

// Configs are the configurations of every baton command, for
// config.Source.Others: a shell may export BATON_ variables for several
// commands (the worker's and the client's), and each skips the others'.
func Configs() []any {
	return []any{SchedulerConfig{}, WorkerConfig{}, config.ClientConfig{}}
}
