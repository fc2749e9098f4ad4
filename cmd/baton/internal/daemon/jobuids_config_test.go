package daemon

import (
	"os/user"
	"strings"
	"testing"

	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	"github.com/baton-run/baton/services/jobrun"
)

// TestJobIdentityConfig loads [worker] job_uids and job_user as `baton
// worker` does, for a worker running as root and as uid 1000, and checks
// what jobs would run as, or that the error names the key at fault.
func TestJobIdentityConfig(t *testing.T) {
	t.Parallel()
	_, nobodyErr := user.Lookup("nobody")
	tests := []struct {
		name    string
		file    string
		environ []string
		euid    int
		uids    jobrun.UIDRange
		user    string
		err     []string // all of these in the error
	}{
		{"root: the default range", "", nil, 0, jobrun.UIDRange{First: 61184, Last: 65519}, "", nil},
		{"root: a range", `job_uids = "70000-70999"`, nil, 0, jobrun.UIDRange{First: 70000, Last: 70999}, "", nil},
		{"root: a range from the environment", "", []string{"BATON_WORKER_JOB_UIDS=80000-80009"}, 0, jobrun.UIDRange{First: 80000, Last: 80009}, "", nil},
		{"root: a user", `job_user = "nobody"`, nil, 0, jobrun.UIDRange{}, "nobody", nil},
		{"not root: the worker's uid", "", nil, 1000, jobrun.UIDRange{}, "", nil},
		{"range with root", `job_uids = "0-100"`, nil, 0, jobrun.UIDRange{}, "", []string{"worker.job_uids", "includes uid 0"}},
		{"reversed range", `job_uids = "65519-61184"`, nil, 0, jobrun.UIDRange{}, "", []string{"worker.job_uids", "reversed"}},
		{"not a range", `job_uids = "lots"`, nil, 0, jobrun.UIDRange{}, "", []string{"worker.job_uids", "not a uid range"}},
		{"one number", `job_uids = "61184"`, nil, 0, jobrun.UIDRange{}, "", []string{"worker.job_uids", "not a uid range"}},
		{"unknown user", `job_user = "no-such-user-baton"`, nil, 0, jobrun.UIDRange{}, "", []string{"worker.job_user", `no user named "no-such-user-baton"`}},
		{"root as job user", `job_user = "root"`, nil, 0, jobrun.UIDRange{}, "", []string{"worker.job_user", "never run as root"}},
		{"both", "job_uids = \"61184-65519\"\njob_user = \"nobody\"", nil, 0, jobrun.UIDRange{}, "", []string{"worker.job_uids and worker.job_user"}},
		{"not root with a range", `job_uids = "61184-65519"`, nil, 1000, jobrun.UIDRange{}, "", []string{"worker.job_uids", "need the worker to run as root"}},
		{"not root with a user", `job_user = "nobody"`, nil, 1000, jobrun.UIDRange{}, "", []string{"worker.job_user", "needs the worker to run as root"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if strings.Contains(tc.file, "nobody") && nobodyErr != nil {
				t.Skipf("this host has no user nobody: %v", nobodyErr)
			}
			src := config.Source{Environ: tc.environ}
			if src.Environ == nil {
				src.Environ = []string{}
			}
			src.File = e2e.WriteConfig(t, "[worker]\nname = \"w\"\n"+tc.file+"\n")
			cfg := DefaultWorkerConfig()
			if _, err := config.Load(&cfg, src); err != nil {
				t.Fatal(err)
			}
			err := cfg.validateAs(tc.euid)
			uids, u, idErr := cfg.Worker.jobIdentity(tc.euid)
			if tc.err != nil {
				for _, want := range tc.err {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Errorf("validate: %v, want an error with %q", err, want)
					}
				}
				if idErr == nil {
					t.Errorf("jobIdentity accepted what validate refuses")
				}
				return
			}
			if err != nil {
				t.Fatalf("validate: %v", err)
			}
			name := ""
			if u != nil {
				name = u.Name
			}
			if idErr != nil || uids != tc.uids || name != tc.user {
				t.Errorf("jobs run with uids %v, user %q (%v); want %v, %q", uids, name, idErr, tc.uids, tc.user)
			}
		})
	}
}

// TestJobUIDsPrinted: `config print worker` shows the range a root worker
// applies, and nothing where jobs run as a user or as the worker's uid.
func TestJobUIDsPrinted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		euid int
		in   WorkerSection
		want string
	}{
		{"root", 0, WorkerSection{}, DefaultJobUIDs},
		{"root with a user", 0, WorkerSection{JobUser: "nobody"}, ""},
		{"root with a range", 0, WorkerSection{JobUIDs: "70000-70001"}, "70000-70001"},
		{"not root", 1000, WorkerSection{}, ""},
	} {
		s := tc.in
		s.FillJobUIDs(tc.euid)
		if s.JobUIDs != tc.want {
			t.Errorf("%s: job_uids = %q, want %q", tc.name, s.JobUIDs, tc.want)
		}
	}
}
