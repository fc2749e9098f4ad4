package worker

import (
	"context"

	"github.com/baton-run/baton/services/jobrun"
	"github.com/baton-run/baton/services/keeper"
)

// Jobs is the job runtime a Worker serves: a jobrun.Runner of its own, or
// the keeper's, which outlives the worker process (keeper.Client).
type Jobs interface {
	Start(ctx context.Context, id string, spec jobrun.Spec) (jobrun.Status, bool, error)
	Stop(ctx context.Context, id, by string) (jobrun.Status, error)
	Status(ctx context.Context, id string) (jobrun.Status, error)
	Page(ctx context.Context, q jobrun.Query) ([]jobrun.Status, bool, error)
	Output(ctx context.Context, id string, req jobrun.OutputRequest, fn func(jobrun.Chunk) error) (jobrun.Status, error)
	Running() int
	// Close releases the runtime: a Runner of the worker's own stops every
	// job; a keeper's runs on.
	Close(ctx context.Context) error
}

var (
	_ Jobs = local{}
	_ Jobs = (*keeper.Client)(nil)
)

// local is a Runner in the worker process: its jobs end with the worker.
type local struct{ *jobrun.Runner }

func (l local) Status(_ context.Context, id string) (jobrun.Status, error) {
	return l.Runner.Status(id)
}

func (l local) Page(_ context.Context, q jobrun.Query) ([]jobrun.Status, bool, error) {
	jobs, more := l.Runner.Page(q)
	return jobs, more, nil
}
