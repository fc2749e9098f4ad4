package store

import (
	"context"
	"errors"
	"fmt"
)

// ErrNotEmpty reports a copy refused because its target already holds a
// store's records.
var ErrNotEmpty = errors.New("the target store is not empty")

// copyBatch is how many records CopySQLiteToEtcd hands Import at once.
const copyBatch = 256

// CopySQLiteToEtcd copies the SQLite store at path into dst, which must
// hold no worker, group, job or schedule (ErrNotEmpty), and checks that
// dst then holds as many records of each kind as were read. It returns
// what it copied. The SQLite file is read as ExportSQLite reads it: left
// as it was, and refused (ErrInUse) while a scheduler has it open.
func CopySQLiteToEtcd(ctx context.Context, path string, dst *Etcd) (RecordCounts, error) {
	held, err := dst.CountRecords(ctx)
	if err != nil {
		return RecordCounts{}, err
	}
	if !held.Empty() {
		return RecordCounts{}, fmt.Errorf("%w: the keys under %q hold %s; copy only into an empty prefix", ErrNotEmpty, dst.p, held)
	}
	var batch []Record
	flush := func() error {
		err := dst.Import(ctx, batch)
		batch = batch[:0]
		return err
	}
	read, err := ExportSQLite(ctx, path, func(r Record) error {
		batch = append(batch, r)
		if len(batch) < copyBatch {
			return nil
		}
		return flush()
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return RecordCounts{}, err
	}
	wrote, err := dst.CountRecords(ctx)
	if err != nil {
		return read, fmt.Errorf("verify the copy: %w", err)
	}
	if wrote != read {
		return read, fmt.Errorf("verify the copy: read %s, but the target holds %s", read, wrote)
	}
	return read, nil
}

// String lists the counts: "2 workers, 1 group, 5 jobs, 1 schedule, 3 fires".
func (c RecordCounts) String() string {
	return fmt.Sprintf("%s, %s, %s, %s, %s", plural(c.Workers, "worker"), plural(c.Groups, "group"),
		plural(c.Jobs, "job"), plural(c.Schedules, "schedule"), plural(c.Fires, "fire"))
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
