package store_test

import (
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	_ "modernc.org/sqlite"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

func TestOpenCreatesPrivateFiles(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data", "scheduler")
	path := filepath.Join(dir, "state.db")
	s, err := store.Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	for _, tc := range []struct {
		name string
		path string
		mode os.FileMode
	}{
		{name: "directory", path: dir, mode: 0o700 | os.ModeDir},
		{name: "database", path: path, mode: 0o600},
		{name: "wal", path: path + "-wal", mode: 0o600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fi, err := os.Stat(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != tc.mode {
				t.Errorf("mode = %v, want %v", fi.Mode(), tc.mode)
			}
		})
	}
}

func TestOpenRejectsEmptyPath(t *testing.T) {
	t.Parallel()
	if _, err := store.Open(t.Context(), ""); err == nil {
		t.Fatal("Open(\"\") succeeded")
	}
}

func TestWorkerRoundTrip(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		hb := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("CET", 3600))
		tests := []struct {
			name string
			w    store.Worker
		}{
			{
				name: "full",
				w: store.Worker{
					ID: "w-full", Name: "alpha", Address: "10.0.0.1:7001",
					State:    batonv1.WorkerState_WORKER_STATE_READY,
					Labels:   map[string]string{"zone": "eu-1", "gpu": "true"},
					Capacity: 8, RunningJobs: 3, LastHeartbeat: hb, RegisteredAt: hb.Add(-time.Hour),
				},
			},
			{
				name: "minimal",
				w:    store.Worker{ID: "w-min", Name: "beta"},
			},
			{
				name: "draining without labels",
				w: store.Worker{
					ID: "w-drain", Name: "gamma", Address: "[::1]:7001",
					State: batonv1.WorkerState_WORKER_STATE_DRAINING, LastHeartbeat: hb,
				},
			},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				s, _ := b.open(t)
				if err := s.UpsertWorker(t.Context(), tc.w); err != nil {
					t.Fatalf("UpsertWorker: %v", err)
				}
				got, err := s.GetWorker(t.Context(), tc.w.ID)
				if err != nil {
					t.Fatalf("GetWorker: %v", err)
				}
				assertWorker(t, got, tc.w)

				// An upsert replaces every field.
				next := tc.w
				next.State = batonv1.WorkerState_WORKER_STATE_DOWN
				next.Labels = map[string]string{"zone": "us-2"}
				next.Address = "10.0.0.9:7001"
				next.LastHeartbeat = hb.Add(time.Minute)
				if err := s.UpsertWorker(t.Context(), next); err != nil {
					t.Fatalf("UpsertWorker again: %v", err)
				}
				got, err = s.GetWorker(t.Context(), tc.w.ID)
				if err != nil {
					t.Fatalf("GetWorker: %v", err)
				}
				assertWorker(t, got, next)
			})
		}
	})
}

func assertWorker(t *testing.T, got, want store.Worker) {
	t.Helper()
	if got.ID != want.ID || got.Name != want.Name || got.Address != want.Address || got.State != want.State ||
		got.Capacity != want.Capacity || got.RunningJobs != want.RunningJobs {
		t.Errorf("worker = %+v, want %+v", got, want)
	}
	if !maps.Equal(got.Labels, want.Labels) {
		t.Errorf("labels = %v, want %v", got.Labels, want.Labels)
	}
	if !got.LastHeartbeat.Equal(want.LastHeartbeat) || !got.RegisteredAt.Equal(want.RegisteredAt) {
		t.Errorf("times = %v, %v; want %v, %v", got.LastHeartbeat, got.RegisteredAt, want.LastHeartbeat, want.RegisteredAt)
	}
}

func TestGetWorkerNotFound(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		if _, err := s.GetWorker(t.Context(), "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetWorker = %v, want ErrNotFound", err)
		}
	})
}

func TestListWorkersByName(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ws, err := s.ListWorkers(t.Context())
		if err != nil || len(ws) != 0 {
			t.Fatalf("ListWorkers on empty store = %v, %v", ws, err)
		}
		for _, w := range []store.Worker{{ID: "1", Name: "charlie"}, {ID: "2", Name: "alpha"}, {ID: "3", Name: "bravo"}} {
			if err := s.UpsertWorker(t.Context(), w); err != nil {
				t.Fatal(err)
			}
		}
		ws, err = s.ListWorkers(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, w := range ws {
			names = append(names, w.Name)
		}
		if want := []string{"alpha", "bravo", "charlie"}; !slices.Equal(names, want) {
			t.Errorf("names = %v, want %v", names, want)
		}
	})
}

func TestJobRoundTrip(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		created := epoch.Add(42 * time.Second)
		full := newJob(1, "w1", "alice")
		full.IdempotencyKey = "retry-1"

		tests := []struct {
			name string
			job  store.Job
			// want is the job GetJob returns.
			want store.Job
		}{
			{
				name: "full status",
				job:  full,
				want: func() store.Job {
					w := full
					w.Status = proto.CloneOf(full.Status)
					w.Status.JobId, w.Status.WorkerId, w.Status.Owner = full.ID, "w1", "alice"
					w.Status.CreatedAt = timestamppb.New(full.CreatedAt)
					return w
				}(),
			},
			{
				name: "nil status is pending",
				job:  store.Job{ID: jobID(2), WorkerID: "w1", Owner: "bob", CreatedAt: created},
				want: store.Job{
					ID: jobID(2), WorkerID: "w1", Owner: "bob", CreatedAt: created,
					Status: &batonv1.JobStatus{
						JobId: jobID(2), WorkerId: "w1", Owner: "bob",
						State: batonv1.JobState_JOB_STATE_PENDING, CreatedAt: timestamppb.New(created),
					},
				},
			},
			{
				name: "identity from status",
				job: store.Job{Status: &batonv1.JobStatus{
					JobId: jobID(3), WorkerId: "w2", Owner: "carol",
					State: batonv1.JobState_JOB_STATE_RUNNING, CreatedAt: timestamppb.New(created),
				}},
				want: store.Job{
					ID: jobID(3), WorkerID: "w2", Owner: "carol", CreatedAt: created,
					Status: &batonv1.JobStatus{
						JobId: jobID(3), WorkerId: "w2", Owner: "carol",
						State: batonv1.JobState_JOB_STATE_RUNNING, CreatedAt: timestamppb.New(created),
					},
				},
			},
			{
				name: "job fields win over status",
				job: store.Job{ID: jobID(4), WorkerID: "w1", Owner: "dave", CreatedAt: created, Status: &batonv1.JobStatus{
					JobId: "other", WorkerId: "w9", Owner: "mallory", State: batonv1.JobState_JOB_STATE_PENDING,
				}},
				want: store.Job{
					ID: jobID(4), WorkerID: "w1", Owner: "dave", CreatedAt: created,
					Status: &batonv1.JobStatus{
						JobId: jobID(4), WorkerId: "w1", Owner: "dave",
						State: batonv1.JobState_JOB_STATE_PENDING, CreatedAt: timestamppb.New(created),
					},
				},
			},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				s, _ := b.open(t)
				before := proto.CloneOf(tc.job.Status)
				mustCreateJob(t, t.Context(), s, tc.job)
				if !proto.Equal(tc.job.Status, before) {
					t.Errorf("CreateJob modified the caller's status")
				}
				assertJob(t, mustGetJob(t, t.Context(), s, tc.want.ID), tc.want)
			})
		}
	})
}

func assertJob(t *testing.T, got, want store.Job) {
	t.Helper()
	if got.ID != want.ID || got.WorkerID != want.WorkerID || got.Owner != want.Owner ||
		got.GroupID != want.GroupID || got.IdempotencyKey != want.IdempotencyKey || !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("job = %+v, want %+v", got, want)
	}
	if !proto.Equal(got.Status, want.Status) {
		t.Errorf("status = %v, want %v", got.Status, want.Status)
	}
}

func TestGetJobNotFound(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		if _, err := s.GetJob(t.Context(), jobID(1)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetJob = %v, want ErrNotFound", err)
		}
	})
}

func TestCreateJobConflicts(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		first := newJob(1, "w1", "alice")
		first.IdempotencyKey = "key-1"

		tests := []struct {
			name    string
			second  store.Job
			wantErr error
			// wantKeyJob: after the conflict, the owner's key still finds first.
			wantKeyJob bool
		}{
			{
				name:    "same job id",
				second:  func() store.Job { j := newJob(1, "w2", "bob"); return j }(),
				wantErr: store.ErrConflict,
			},
			{
				name:       "same owner and idempotency key",
				second:     func() store.Job { j := newJob(2, "w2", "alice"); j.IdempotencyKey = "key-1"; return j }(),
				wantErr:    store.ErrConflict,
				wantKeyJob: true,
			},
			{
				name:   "same key of another owner",
				second: func() store.Job { j := newJob(2, "w1", "bob"); j.IdempotencyKey = "key-1"; return j }(),
			},
			{
				name:   "another key of the same owner",
				second: func() store.Job { j := newJob(2, "w1", "alice"); j.IdempotencyKey = "key-2"; return j }(),
			},
			{
				name:   "no key",
				second: newJob(2, "w1", "alice"),
			},
			{
				name:    "unknown group",
				second:  func() store.Job { j := newJob(2, "w1", "alice"); j.GroupID = "g-missing"; return j }(),
				wantErr: store.ErrNotFound,
			},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				s, _ := b.open(t)
				mustCreateJob(t, t.Context(), s, first)
				err := s.CreateJob(t.Context(), tc.second)
				if tc.wantErr == nil && err != nil || !errors.Is(err, tc.wantErr) {
					t.Fatalf("CreateJob = %v, want %v", err, tc.wantErr)
				}
				if tc.wantKeyJob {
					got, err := s.GetJobByIdempotencyKey(t.Context(), tc.second.Owner, tc.second.IdempotencyKey)
					if err != nil {
						t.Fatalf("GetJobByIdempotencyKey: %v", err)
					}
					if got.ID != first.ID {
						t.Errorf("GetJobByIdempotencyKey = %s, want %s", got.ID, first.ID)
					}
				}
			})
		}
	})
}

func TestGetJobByIdempotencyKey(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		j := newJob(1, "w1", "alice")
		j.IdempotencyKey = "k"
		mustCreateJob(t, t.Context(), s, j)
		mustCreateJob(t, t.Context(), s, newJob(2, "w1", "alice"))

		tests := []struct {
			name, owner, key string
			wantID           string
		}{
			{name: "found", owner: "alice", key: "k", wantID: j.ID},
			{name: "other owner", owner: "bob", key: "k"},
			{name: "other key", owner: "alice", key: "x"},
			{name: "empty key", owner: "alice", key: ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				got, err := s.GetJobByIdempotencyKey(t.Context(), tc.owner, tc.key)
				if tc.wantID == "" {
					if !errors.Is(err, store.ErrNotFound) {
						t.Fatalf("GetJobByIdempotencyKey = %v, %v; want ErrNotFound", got.ID, err)
					}
					return
				}
				if err != nil || got.ID != tc.wantID || got.IdempotencyKey != tc.key {
					t.Fatalf("GetJobByIdempotencyKey = %v (key %q), %v; want %s", got.ID, got.IdempotencyKey, err, tc.wantID)
				}
			})
		}
	})
}

func TestUpdateJobStatus(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		end := epoch.Add(time.Hour)
		running := &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING, Pid: 77, Reason: "still going"}

		tests := []struct {
			name string
			// updates are applied in order.
			updates   []*batonv1.JobStatus
			wantState batonv1.JobState
			wantPid   int32
		}{
			{
				name:      "running to succeeded",
				updates:   []*batonv1.JobStatus{{State: batonv1.JobState_JOB_STATE_SUCCEEDED, Pid: 5, EndedAt: timestamppb.New(end)}},
				wantState: batonv1.JobState_JOB_STATE_SUCCEEDED, wantPid: 5,
			},
			{
				name:      "non-terminal updates apply",
				updates:   []*batonv1.JobStatus{{State: batonv1.JobState_JOB_STATE_PENDING, Pid: 1}, running},
				wantState: batonv1.JobState_JOB_STATE_RUNNING, wantPid: 77,
			},
		}
		for _, st := range []batonv1.JobState{
			batonv1.JobState_JOB_STATE_SUCCEEDED, batonv1.JobState_JOB_STATE_FAILED, batonv1.JobState_JOB_STATE_STOPPED,
			batonv1.JobState_JOB_STATE_TIMED_OUT, batonv1.JobState_JOB_STATE_LOST,
		} {
			tests = append(tests, struct {
				name      string
				updates   []*batonv1.JobStatus
				wantState batonv1.JobState
				wantPid   int32
			}{
				name: fmt.Sprintf("%v is sticky", st),
				updates: []*batonv1.JobStatus{
					{State: st, Pid: 9, EndedAt: timestamppb.New(end)},
					running,
					{State: batonv1.JobState_JOB_STATE_FAILED, Pid: 10, Reason: "late report", EndedAt: timestamppb.New(end.Add(time.Hour))},
				},
				wantState: st, wantPid: 9,
			})
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				s, _ := b.open(t)
				j := newJob(1, "w1", "alice")
				mustCreateJob(t, t.Context(), s, j)
				for i, u := range tc.updates {
					if err := s.UpdateJobStatus(t.Context(), j.ID, u); err != nil {
						t.Fatalf("UpdateJobStatus #%d: %v", i, err)
					}
				}
				got := mustGetJob(t, t.Context(), s, j.ID)
				if got.Status.GetState() != tc.wantState || got.Status.GetPid() != tc.wantPid {
					t.Errorf("status = %v, want state %v pid %d", got.Status, tc.wantState, tc.wantPid)
				}
				// Identity and spec survive updates that do not carry them.
				if got.Status.GetJobId() != j.ID || got.Status.GetOwner() != "alice" || got.Status.GetWorkerId() != "w1" ||
					!got.Status.GetCreatedAt().AsTime().Equal(j.CreatedAt) {
					t.Errorf("identity lost: %v", got.Status)
				}
				if !proto.Equal(got.Status.GetSpec(), j.Status.GetSpec()) {
					t.Errorf("spec = %v, want %v", got.Status.GetSpec(), j.Status.GetSpec())
				}
			})
		}
	})
}

func TestUpdateJobStatusErrors(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		err := s.UpdateJobStatus(t.Context(), jobID(1), &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING})
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("UpdateJobStatus(missing) = %v, want ErrNotFound", err)
		}
		mustCreateJob(t, t.Context(), s, newJob(1, "w1", "alice"))
		if err := s.UpdateJobStatus(t.Context(), jobID(1), nil); err == nil {
			t.Error("UpdateJobStatus(nil) succeeded")
		}
	})
}

func TestUpdateJobStatusSetsEndTime(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		j := newJob(1, "w1", "alice")
		mustCreateJob(t, t.Context(), s, j)
		before := time.Now()
		if err := s.UpdateJobStatus(t.Context(), j.ID, &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_FAILED}); err != nil {
			t.Fatal(err)
		}
		got := mustGetJob(t, t.Context(), s, j.ID)
		if got.Status.GetEndedAt() == nil || got.Status.GetEndedAt().AsTime().Before(before) {
			t.Errorf("ended_at = %v, want a time after %v", got.Status.GetEndedAt(), before)
		}
		// The end time decides retention.
		if n, err := s.PruneJobs(t.Context(), time.Now().Add(time.Second)); err != nil || n != 1 {
			t.Errorf("PruneJobs = %d, %v; want 1", n, err)
		}
	})
}

func TestListJobsFilters(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		if err := s.CreateGroup(ctx, store.Group{ID: "g1", Owner: "alice", CreatedAt: epoch}); err != nil {
			t.Fatal(err)
		}
		// 1..6: worker, owner, group, final state.
		specs := []struct {
			worker, owner, group string
			state                batonv1.JobState
		}{
			1: {"w1", "alice", "g1", batonv1.JobState_JOB_STATE_RUNNING},
			2: {"w2", "alice", "g1", batonv1.JobState_JOB_STATE_SUCCEEDED},
			3: {"w1", "bob", "", batonv1.JobState_JOB_STATE_FAILED},
			4: {"w2", "bob", "", batonv1.JobState_JOB_STATE_PENDING},
			5: {"w1", "alice", "", batonv1.JobState_JOB_STATE_SUCCEEDED},
			6: {"w3", "carol", "", batonv1.JobState_JOB_STATE_LOST},
		}
		for i := 1; i < len(specs); i++ {
			sp := specs[i]
			j := newJob(i, sp.worker, sp.owner)
			j.GroupID = sp.group
			mustCreateJob(t, ctx, s, j)
			if err := s.UpdateJobStatus(ctx, j.ID, &batonv1.JobStatus{State: sp.state, EndedAt: timestamppb.New(epoch)}); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			name   string
			filter store.JobFilter
			want   []int
		}{
			{name: "all", want: []int{6, 5, 4, 3, 2, 1}},
			{name: "worker", filter: store.JobFilter{WorkerID: "w1"}, want: []int{5, 3, 1}},
			{name: "owner", filter: store.JobFilter{Owner: "alice"}, want: []int{5, 2, 1}},
			{name: "group", filter: store.JobFilter{GroupID: "g1"}, want: []int{2, 1}},
			{name: "one state", filter: store.JobFilter{States: []batonv1.JobState{batonv1.JobState_JOB_STATE_SUCCEEDED}}, want: []int{5, 2}},
			{
				name: "several states, repeated",
				filter: store.JobFilter{States: []batonv1.JobState{
					batonv1.JobState_JOB_STATE_PENDING, batonv1.JobState_JOB_STATE_RUNNING, batonv1.JobState_JOB_STATE_PENDING,
				}},
				want: []int{4, 1},
			},
			{name: "worker and owner", filter: store.JobFilter{WorkerID: "w1", Owner: "alice"}, want: []int{5, 1}},
			{
				name: "every field",
				filter: store.JobFilter{WorkerID: "w2", Owner: "alice", GroupID: "g1",
					States: []batonv1.JobState{batonv1.JobState_JOB_STATE_SUCCEEDED}},
				want: []int{2},
			},
			{name: "no match", filter: store.JobFilter{Owner: "nobody"}},
			{name: "undefined state", filter: store.JobFilter{States: []batonv1.JobState{batonv1.JobState(99)}}},
			{
				name:   "undefined and defined state",
				filter: store.JobFilter{States: []batonv1.JobState{batonv1.JobState(99), batonv1.JobState_JOB_STATE_LOST}},
				want:   []int{6},
			},
			{name: "page size", filter: store.JobFilter{PageSize: 2}, want: []int{6, 5}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				jobs, _, err := s.ListJobs(ctx, tc.filter)
				if err != nil {
					t.Fatalf("ListJobs: %v", err)
				}
				var want []string
				for _, i := range tc.want {
					want = append(want, jobID(i))
				}
				if got := ids(jobs); !slices.Equal(got, want) {
					t.Errorf("ListJobs = %v, want %v", got, want)
				}
			})
		}
	})
}

func TestListJobsPagination(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		const n = 1000
		s, _ := b.open(t)
		ctx := t.Context()
		// Creation times repeat in runs of three so that job_id breaks ties.
		for i := range n {
			j := newJob(i, fmt.Sprintf("w%d", i%4), "alice")
			j.CreatedAt = epoch.Add(time.Duration(i/3) * time.Second)
			mustCreateJob(t, ctx, s, j)
		}
		tests := []struct {
			name     string
			filter   store.JobFilter
			wantJobs int
			wantPage int // size of full pages
		}{
			{name: "default page size", wantJobs: n, wantPage: store.DefaultPageSize},
			{name: "page of 1", filter: store.JobFilter{PageSize: 1}, wantJobs: n, wantPage: 1},
			{name: "page of 7", filter: store.JobFilter{PageSize: 7}, wantJobs: n, wantPage: 7},
			{name: "page of 999", filter: store.JobFilter{PageSize: 999}, wantJobs: n, wantPage: 999},
			{name: "page of 1000", filter: store.JobFilter{PageSize: 1000}, wantJobs: n, wantPage: 1000},
			{name: "page size above max", filter: store.JobFilter{PageSize: 5000}, wantJobs: n, wantPage: store.MaxPageSize},
			{name: "filtered by worker", filter: store.JobFilter{WorkerID: "w1", PageSize: 30}, wantJobs: n / 4, wantPage: 30},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				f := tc.filter
				var all []store.Job
				for pages := 0; ; pages++ {
					if pages > n+1 {
						t.Fatal("pagination does not end")
					}
					jobs, next, err := s.ListJobs(ctx, f)
					if err != nil {
						t.Fatalf("ListJobs page %d: %v", pages, err)
					}
					if next != "" && len(jobs) != tc.wantPage {
						t.Fatalf("page %d has %d jobs, want %d", pages, len(jobs), tc.wantPage)
					}
					all = append(all, jobs...)
					if next == "" {
						break
					}
					f.PageToken = next
				}
				if len(all) != tc.wantJobs {
					t.Fatalf("listed %d jobs, want %d", len(all), tc.wantJobs)
				}
				seen := make(map[string]bool, len(all))
				for i, j := range all {
					if seen[j.ID] {
						t.Fatalf("job %s listed twice", j.ID)
					}
					seen[j.ID] = true
					if tc.filter.WorkerID != "" && j.WorkerID != tc.filter.WorkerID {
						t.Fatalf("job %s on worker %s listed for %s", j.ID, j.WorkerID, tc.filter.WorkerID)
					}
					if i > 0 {
						prev := all[i-1]
						if j.CreatedAt.After(prev.CreatedAt) || j.CreatedAt.Equal(prev.CreatedAt) && j.ID > prev.ID {
							t.Fatalf("job %s (%v) listed after %s (%v): not newest first", j.ID, j.CreatedAt, prev.ID, prev.CreatedAt)
						}
					}
				}
			})
		}
	})
}

func TestListJobsPaginationSeesNoNewJobs(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		for i := range 10 {
			mustCreateJob(t, ctx, s, newJob(i, "w1", "alice"))
		}
		first, next, err := s.ListJobs(ctx, store.JobFilter{PageSize: 5})
		if err != nil {
			t.Fatal(err)
		}
		// Jobs created between pages are newer than the cursor: the listing
		// neither repeats nor skips a job.
		mustCreateJob(t, ctx, s, newJob(10, "w1", "alice"))
		second, next2, err := s.ListJobs(ctx, store.JobFilter{PageSize: 5, PageToken: next})
		if err != nil {
			t.Fatal(err)
		}
		got := append(ids(first), ids(second)...)
		var want []string
		for i := 9; i >= 0; i-- {
			want = append(want, jobID(i))
		}
		if !slices.Equal(got, want) || next2 != "" {
			t.Errorf("pages = %v (next %q), want %v", got, next2, want)
		}
	})
}

func TestListJobsInvalidPageToken(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		for i := range 3 {
			mustCreateJob(t, ctx, s, newJob(i, "w1", "alice"))
		}
		_, token, err := s.ListJobs(ctx, store.JobFilter{Owner: "alice", PageSize: 1})
		if err != nil || token == "" {
			t.Fatalf("ListJobs = %q, %v", token, err)
		}
		tests := []struct {
			name   string
			filter store.JobFilter
		}{
			{name: "garbage", filter: store.JobFilter{PageToken: "not a token!"}},
			{name: "base64 of nothing useful", filter: store.JobFilter{PageToken: "AAAA"}},
			{name: "truncated", filter: store.JobFilter{Owner: "alice", PageToken: token[:len(token)-30]}},
			{name: "wrong version", filter: store.JobFilter{Owner: "alice", PageToken: "Ag" + token[2:]}},
			{name: "issued for another filter", filter: store.JobFilter{Owner: "bob", PageToken: token}},
			{name: "issued for a filtered listing", filter: store.JobFilter{PageToken: token}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				if _, _, err := s.ListJobs(ctx, tc.filter); !errors.Is(err, store.ErrInvalidPageToken) {
					t.Errorf("ListJobs = %v, want ErrInvalidPageToken", err)
				}
			})
		}
		// The same filter with another page size accepts the token.
		if _, _, err := s.ListJobs(ctx, store.JobFilter{Owner: "alice", PageSize: 50, PageToken: token}); err != nil {
			t.Errorf("ListJobs with a new page size: %v", err)
		}
	})
}

func TestJobsOnWorker(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		for i := range 6 {
			mustCreateJob(t, ctx, s, newJob(i, []string{"w1", "w2"}[i%2], "alice"))
		}
		// Jobs 0 and 4 on w1 end.
		for _, i := range []int{0, 4} {
			j := mustGetJob(t, ctx, s, jobID(i))
			if err := s.UpdateJobStatus(ctx, j.ID, terminal(j, batonv1.JobState_JOB_STATE_SUCCEEDED, epoch.Add(time.Hour))); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			name        string
			worker      string
			nonTerminal bool
			want        []int
		}{
			{name: "all", worker: "w1", want: []int{4, 2, 0}},
			{name: "non-terminal", worker: "w1", nonTerminal: true, want: []int{2}},
			{name: "other worker", worker: "w2", nonTerminal: true, want: []int{5, 3, 1}},
			{name: "unknown worker", worker: "w9"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				jobs, err := s.JobsOnWorker(ctx, tc.worker, tc.nonTerminal)
				if err != nil {
					t.Fatal(err)
				}
				var want []string
				for _, i := range tc.want {
					want = append(want, jobID(i))
				}
				if got := ids(jobs); !slices.Equal(got, want) {
					t.Errorf("JobsOnWorker = %v, want %v", got, want)
				}
			})
		}
	})
}

func TestMarkWorkerJobsLost(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		at := epoch.Add(2 * time.Hour)
		end := epoch.Add(time.Hour)

		// On w1: 0 pending, 1 running, 2 succeeded, 3 stopped. On w2: 4 running.
		for i := range 5 {
			worker := "w1"
			if i == 4 {
				worker = "w2"
			}
			mustCreateJob(t, ctx, s, newJob(i, worker, "alice"))
		}
		updates := map[int]*batonv1.JobStatus{
			0: {State: batonv1.JobState_JOB_STATE_PENDING},
			2: {State: batonv1.JobState_JOB_STATE_SUCCEEDED, EndedAt: timestamppb.New(end), ExitCode: new(int32(0))},
			3: {State: batonv1.JobState_JOB_STATE_STOPPED, EndedAt: timestamppb.New(end), StoppedBy: "bob"},
		}
		for i, u := range updates {
			if err := s.UpdateJobStatus(ctx, jobID(i), u); err != nil {
				t.Fatal(err)
			}
		}
		n, err := s.MarkWorkerJobsLost(ctx, "w1", "worker down", at)
		if err != nil || n != 2 {
			t.Fatalf("MarkWorkerJobsLost = %d, %v; want 2", n, err)
		}
		tests := []struct {
			name      string
			job       int
			wantState batonv1.JobState
			wantEnd   time.Time
			wantWhy   string
		}{
			{name: "pending becomes lost", job: 0, wantState: batonv1.JobState_JOB_STATE_LOST, wantEnd: at, wantWhy: "worker down"},
			{name: "running becomes lost", job: 1, wantState: batonv1.JobState_JOB_STATE_LOST, wantEnd: at, wantWhy: "worker down"},
			{name: "succeeded stays", job: 2, wantState: batonv1.JobState_JOB_STATE_SUCCEEDED, wantEnd: end},
			{name: "stopped stays", job: 3, wantState: batonv1.JobState_JOB_STATE_STOPPED, wantEnd: end},
			{name: "other worker untouched", job: 4, wantState: batonv1.JobState_JOB_STATE_RUNNING},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				st := mustGetJob(t, ctx, s, jobID(tc.job)).Status
				if st.GetState() != tc.wantState || st.GetReason() != tc.wantWhy {
					t.Errorf("status = %v, want %v %q", st, tc.wantState, tc.wantWhy)
				}
				if tc.wantEnd.IsZero() != (st.GetEndedAt() == nil) || st.GetEndedAt() != nil && !st.GetEndedAt().AsTime().Equal(tc.wantEnd) {
					t.Errorf("ended_at = %v, want %v", st.GetEndedAt(), tc.wantEnd)
				}
				if st.GetSpec().GetCommand() != "bash" {
					t.Errorf("spec lost: %v", st)
				}
			})
		}
		if n, err := s.MarkWorkerJobsLost(ctx, "w1", "again", at); err != nil || n != 0 {
			t.Errorf("second MarkWorkerJobsLost = %d, %v; want 0", n, err)
		}
	})
}

func TestGroups(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		g := store.Group{ID: "g1", Owner: "alice", CreatedAt: epoch, JobIDs: []string{"ignored"}}
		if err := s.CreateGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateGroup(ctx, store.Group{ID: "g2", Owner: "bob"}); err != nil {
			t.Fatal(err)
		}
		// Created out of order: JobIDs lists them oldest first.
		for _, i := range []int{3, 1, 2} {
			j := newJob(i, fmt.Sprintf("w%d", i), "alice")
			j.GroupID = "g1"
			mustCreateJob(t, ctx, s, j)
		}
		mustCreateJob(t, ctx, s, newJob(4, "w1", "alice"))

		tests := []struct {
			name    string
			id      string
			want    store.Group
			wantErr error
		}{
			{name: "with jobs", id: "g1", want: store.Group{ID: "g1", Owner: "alice", CreatedAt: epoch, JobIDs: []string{jobID(1), jobID(2), jobID(3)}}},
			{name: "without jobs", id: "g2", want: store.Group{ID: "g2", Owner: "bob"}},
			{name: "unknown", id: "g3", wantErr: store.ErrNotFound},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				got, err := s.GetGroup(ctx, tc.id)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("GetGroup = %v, want %v", err, tc.wantErr)
				}
				if err != nil {
					return
				}
				if got.ID != tc.want.ID || got.Owner != tc.want.Owner || !slices.Equal(got.JobIDs, tc.want.JobIDs) {
					t.Errorf("GetGroup = %+v, want %+v", got, tc.want)
				}
				if !tc.want.CreatedAt.IsZero() && !got.CreatedAt.Equal(tc.want.CreatedAt) || got.CreatedAt.IsZero() {
					t.Errorf("created_at = %v, want %v (or now)", got.CreatedAt, tc.want.CreatedAt)
				}
			})
		}
		if err := s.CreateGroup(ctx, store.Group{ID: "g1", Owner: "mallory"}); !errors.Is(err, store.ErrConflict) {
			t.Errorf("CreateGroup(existing) = %v, want ErrConflict", err)
		}
		if j := mustGetJob(t, ctx, s, jobID(1)); j.GroupID != "g1" || j.Status.GetGroupId() != "g1" {
			t.Errorf("job group = %q / %q, want g1", j.GroupID, j.Status.GetGroupId())
		}
	})
}

func TestPruneJobs(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		cut := epoch.Add(time.Hour)

		groups := []store.Group{
			{ID: "g-old-pruned", CreatedAt: epoch},     // only an old ended job: removed with it
			{ID: "g-old-kept", CreatedAt: epoch},       // keeps a running job
			{ID: "g-old-empty", CreatedAt: epoch},      // never had jobs, created before the cut: removed
			{ID: "g-new-empty", CreatedAt: cut.Add(1)}, // may still be getting its jobs: kept
		}
		for _, g := range groups {
			if err := s.CreateGroup(ctx, g); err != nil {
				t.Fatal(err)
			}
		}
		type spec struct {
			group string
			end   time.Time // zero: still running
		}
		jobs := []spec{
			0: {group: "g-old-pruned", end: cut.Add(-time.Minute)},
			1: {group: "g-old-kept", end: cut.Add(-time.Minute)},
			2: {group: "g-old-kept"},
			3: {end: cut.Add(-time.Nanosecond)},
			4: {end: cut},                  // not before the cut
			5: {end: cut.Add(time.Minute)}, // after
			6: {},
		}
		for i, sp := range jobs {
			j := newJob(i, "w1", "alice")
			j.GroupID = sp.group
			mustCreateJob(t, ctx, s, j)
			if !sp.end.IsZero() {
				if err := s.UpdateJobStatus(ctx, j.ID, terminal(j, batonv1.JobState_JOB_STATE_FAILED, sp.end)); err != nil {
					t.Fatal(err)
				}
			}
		}
		n, err := s.PruneJobs(ctx, cut)
		if err != nil || n != 3 {
			t.Fatalf("PruneJobs = %d, %v; want 3", n, err)
		}
		for i, wantGone := range []bool{true, true, false, true, false, false, false} {
			_, err := s.GetJob(ctx, jobID(i))
			if gone := errors.Is(err, store.ErrNotFound); gone != wantGone {
				t.Errorf("job %d: gone = %v (%v), want %v", i, gone, err, wantGone)
			}
		}
		for _, tc := range []struct {
			id       string
			wantGone bool
		}{{"g-old-pruned", true}, {"g-old-kept", false}, {"g-old-empty", true}, {"g-new-empty", false}} {
			_, err := s.GetGroup(ctx, tc.id)
			if gone := errors.Is(err, store.ErrNotFound); gone != tc.wantGone {
				t.Errorf("group %s: gone = %v (%v), want %v", tc.id, gone, err, tc.wantGone)
			}
		}
	})
}

func TestPruneJobsInBatches(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		const n = 1100 // more than one batch, not a multiple of it
		for i := range n + 1 {
			j := newJob(i, "w1", "alice")
			j.Status.State = batonv1.JobState_JOB_STATE_SUCCEEDED
			j.Status.EndedAt = timestamppb.New(epoch)
			if i == n {
				j.Status.EndedAt = timestamppb.New(epoch.Add(time.Hour))
			}
			mustCreateJob(t, ctx, s, j)
		}
		got, err := s.PruneJobs(ctx, epoch.Add(time.Minute))
		if err != nil || got != n {
			t.Fatalf("PruneJobs = %d, %v; want %d", got, err, n)
		}
		jobs, _, err := s.ListJobs(ctx, store.JobFilter{})
		if err != nil || len(jobs) != 1 || jobs[0].ID != jobID(n) {
			t.Errorf("left = %v, %v; want [%s]", ids(jobs), err, jobID(n))
		}
	})
}

func TestPersistence(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		s, path := b.open(t)
		w := store.Worker{ID: "w1", Name: "alpha", Address: "a:1", State: batonv1.WorkerState_WORKER_STATE_READY,
			Labels: map[string]string{"k": "v"}, Capacity: 2, LastHeartbeat: epoch, RegisteredAt: epoch}
		if err := s.UpsertWorker(ctx, w); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateGroup(ctx, store.Group{ID: "g1", Owner: "alice", CreatedAt: epoch}); err != nil {
			t.Fatal(err)
		}
		j := newJob(1, "w1", "alice")
		j.GroupID, j.IdempotencyKey = "g1", "k1"
		mustCreateJob(t, ctx, s, j)
		if err := s.UpdateJobStatus(ctx, j.ID, terminal(j, batonv1.JobState_JOB_STATE_FAILED, epoch.Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
		want := mustGetJob(t, ctx, s, j.ID)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		s, err := b.reopen(t, path)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		defer s.Close()
		gotW, err := s.GetWorker(ctx, "w1")
		if err != nil {
			t.Fatal(err)
		}
		assertWorker(t, gotW, w)
		assertJob(t, mustGetJob(t, ctx, s, j.ID), want)
		byKey, err := s.GetJobByIdempotencyKey(ctx, "alice", "k1")
		if err != nil || byKey.ID != j.ID {
			t.Errorf("GetJobByIdempotencyKey = %v, %v", byKey.ID, err)
		}
		g, err := s.GetGroup(ctx, "g1")
		if err != nil || !slices.Equal(g.JobIDs, []string{j.ID}) {
			t.Errorf("GetGroup = %+v, %v", g, err)
		}
		if err := s.UpdateJobStatus(ctx, j.ID, &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_RUNNING}); err != nil {
			t.Fatal(err)
		}
		if st := mustGetJob(t, ctx, s, j.ID).Status.GetState(); st != batonv1.JobState_JOB_STATE_FAILED {
			t.Errorf("state after reopen and update = %v, want FAILED", st)
		}
		if err := s.CreateJob(ctx, j); !errors.Is(err, store.ErrConflict) {
			t.Errorf("CreateJob after reopen = %v, want ErrConflict", err)
		}
	})
}

func TestOpenNewerSchemaFails(t *testing.T) {
	t.Parallel()
	_, path := openStore(t)

	// A newer scheduler has migrated the file further.
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(t.Context(), `INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)`); err != nil {
		t.Fatal(err)
	}
	_, err = store.Open(t.Context(), path)
	if !errors.Is(err, store.ErrSchemaTooNew) {
		t.Fatalf("Open = %v, want ErrSchemaTooNew", err)
	}
	t.Logf("Open: %v", err)
}

func TestClosedStoreFails(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetJob(t.Context(), jobID(1)); err == nil || errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetJob after Close = %v, want a failure", err)
		}
		if err := s.CreateJob(t.Context(), newJob(1, "w1", "alice")); err == nil {
			t.Error("CreateJob after Close succeeded")
		}
	})
}

func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		goroutines, perG := 16, 200
		if b.name == "etcd" {
			// Each etcd write is a network round trip and a raft entry.
			perG = 25
		}
		s, _ := b.open(t)
		ctx := t.Context()
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		for g := range goroutines {
			wg.Go(func() {
				worker := fmt.Sprintf("w%d", g)
				for i := range perG {
					n := g*perG + i
					j := newJob(n, worker, "alice")
					err := s.CreateJob(ctx, j)
					if err == nil {
						err = s.UpdateJobStatus(ctx, j.ID, terminal(j, batonv1.JobState_JOB_STATE_SUCCEEDED, epoch.Add(time.Hour)))
					}
					if err == nil && i%10 == 0 {
						// Readers run alongside the writers.
						_, _, err = s.ListJobs(ctx, store.JobFilter{WorkerID: worker, PageSize: 20})
					}
					if err != nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("job %d: %w", n, err))
						mu.Unlock()
						return
					}
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		total := 0
		f := store.JobFilter{PageSize: store.MaxPageSize, States: []batonv1.JobState{batonv1.JobState_JOB_STATE_SUCCEEDED}}
		for {
			jobs, next, err := s.ListJobs(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			total += len(jobs)
			if next == "" {
				break
			}
			f.PageToken = next
		}
		if want := goroutines * perG; total != want {
			t.Errorf("%d succeeded jobs, want %d", total, want)
		}
	})
}

func TestReturnedValuesAreCopies(t *testing.T) {
	t.Parallel()
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := t.Context()
		j := newJob(1, "w1", "alice")
		mustCreateJob(t, ctx, s, j)
		got := mustGetJob(t, ctx, s, j.ID)
		want := proto.CloneOf(got.Status)
		got.Status.Spec.Args[0] = "changed"
		got.Status.State = batonv1.JobState_JOB_STATE_LOST
		if again := mustGetJob(t, ctx, s, j.ID); !proto.Equal(again.Status, want) {
			t.Errorf("stored status = %v after changing a returned copy, want %v", again.Status, want)
		}
	})
}
