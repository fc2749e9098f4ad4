package jobrun

import (
	"strings"
	"syscall"
	"testing"
)

func TestParseUIDRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want UIDRange
		err  string
	}{
		{"61184-65519", UIDRange{61184, 65519}, ""},
		{" 100 - 100 ", UIDRange{100, 100}, ""},
		{"0-100", UIDRange{}, "includes uid 0"},
		{"200-100", UIDRange{}, "reversed"},
		{"1-4294967295", UIDRange{}, "not a valid uid"},
		{"100", UIDRange{}, "not a uid range"},
		{"a-b", UIDRange{}, "not a uid range"},
		{"-5-10", UIDRange{}, "not a uid range"},
		{"1-4294967296", UIDRange{}, "not a uid range"},
		{"", UIDRange{}, "not a uid range"},
	}
	for _, tc := range tests {
		got, err := ParseUIDRange(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("ParseUIDRange(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseUIDRange(%q) error = %v, want one saying %q", tc.in, err, tc.err)
		}
	}
}

// TestChooseIdentity is the choice of whose uid jobs run under, for a root
// worker and for one that is not, and what JobStatus.run_as then says.
func TestChooseIdentity(t *testing.T) {
	t.Parallel()
	rng := UIDRange{61184, 65519}
	batch := &User{Name: "batch", UID: 990, GID: 980, Groups: []uint32{4}}
	tests := []struct {
		name       string
		euid       int
		uids       UIDRange
		user       *User
		mode       runMode
		runAs      string
		credential *syscall.Credential
		err        string
	}{
		{"root with a range: per job", 0, rng, nil, runPerJob, "uid 61190 (per job)", &syscall.Credential{Uid: 61190, Gid: 61190, Groups: []uint32{}}, ""},
		{"root with a user: that user", 0, UIDRange{}, batch, runAsUser, "user batch (uid 990)", &syscall.Credential{Uid: 990, Gid: 980, Groups: []uint32{4}}, ""},
		{"not root, nothing set: the worker's uid", 1000, UIDRange{}, nil, runAsWorker, "the worker's uid 1000", nil, ""},
		{"root, nothing set: the worker's uid, root", 0, UIDRange{}, nil, runAsWorker, "the worker's uid 0", nil, ""},
		{"not root with a range", 1000, rng, nil, 0, "", nil, "need the worker to run as root"},
		{"not root with a user", 1000, UIDRange{}, batch, 0, "", nil, "needs the worker to run as root"},
		{"both", 0, rng, batch, 0, "", nil, "exclusive"},
		{"root user", 0, UIDRange{}, &User{Name: "toor"}, 0, "", nil, "never run as root"},
		{"range with root", 0, UIDRange{0, 10}, nil, 0, "", nil, "invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := chooseIdentity(tc.euid, tc.euid, tc.uids, tc.user)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error = %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.mode != tc.mode || id.runAs(61190) != tc.runAs {
				t.Errorf("mode %d, run as %q; want %d, %q", id.mode, id.runAs(61190), tc.mode, tc.runAs)
			}
			c := id.credential(61190)
			switch {
			case (c == nil) != (tc.credential == nil):
				t.Errorf("credential %+v, want %+v", c, tc.credential)
			case c != nil && (c.Uid != tc.credential.Uid || c.Gid != tc.credential.Gid || c.NoSetGroups || c.Groups == nil || len(c.Groups) != len(tc.credential.Groups)):
				t.Errorf("credential %+v, want %+v with setgroups", c, tc.credential)
			}
		})
	}
}
