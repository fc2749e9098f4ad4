package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestFeedMigrationNumbersExistingJobs opens a file written before the
// change feed (schema version 8) and checks that its jobs are in the feed,
// in the order they were inserted, before the jobs written after.
func TestFeedMigrationNumbersExistingJobs(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "scheduler.db")
	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		t.Fatal(err)
	}
	const before = 8
	for v, m := range migrations[:before] {
		if _, err := db.ExecContext(ctx, m); err != nil {
			t.Fatalf("migration %d: %v", v+1, err)
		}
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE schema_migrations (version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT`); err != nil {
		t.Fatal(err)
	}
	for v := range before {
		if _, err := db.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)`, v+1); err != nil {
			t.Fatal(err)
		}
	}
	blob, err := proto.Marshal(&batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING})
	if err != nil {
		t.Fatal(err)
	}
	old := []string{"old-b", "old-a"}
	for _, id := range old {
		if _, err := db.ExecContext(ctx, `INSERT INTO jobs (job_id, worker_id, owner, state, created_at, status) VALUES (?, 'w1', 'alice', ?, ?, ?)`,
			id, int32(batonv1.JobState_JOB_STATE_RUNNING), time.Now().UnixNano(), blob); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if err := s.CreateJob(ctx, Job{ID: "new", WorkerID: "w1", Owner: "alice", Status: &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	errDone := errors.New("done")
	err = s.Changes(cctx, 0, func(c Change) error {
		if c.Deleted || c.Job.Status.GetState() != batonv1.JobState_JOB_STATE_RUNNING {
			t.Errorf("change %+v, want a RUNNING job", c)
		}
		got = append(got, c.JobID)
		if c.JobID == "new" {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("Changes = %v after %v", err, got)
	}
	if want := append(slices.Clone(old), "new"); !slices.Equal(got, want) {
		t.Fatalf("changes from the start = %v, want %v", got, want)
	}
	if rev, err := s.JobsRev(ctx); err != nil || rev != 3 {
		t.Fatalf("JobsRev = %d, %v; want 3", rev, err)
	}
}
