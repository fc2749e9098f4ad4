package jobrun

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// UIDRange is an inclusive range of user IDs, such as 61184-65519, the range
// systemd gives its dynamic users. The zero value is no range. It is a plain
// value, safe to copy and share.
type UIDRange struct {
	First, Last uint32
}

// IsZero reports whether r is the zero value, no range.
func (r UIDRange) IsZero() bool { return r == UIDRange{} }

// String returns "first-last".
func (r UIDRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// Len is the number of uids in the range.
func (r UIDRange) Len() int { return int(r.Last-r.First) + 1 }

func (r UIDRange) contains(uid uint32) bool { return uid >= r.First && uid <= r.Last }

// ParseUIDRange parses "first-last", both included. It refuses a range that
// is reversed or includes uid 0 (root) or 4294967295 (the "no change" value
// of chown(2)).
func ParseUIDRange(s string) (UIDRange, error) {
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	first, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 32)
	last, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return UIDRange{}, fmt.Errorf("%q is not a uid range: write it as first-last, such as \"61184-65519\"", s)
	}
	r := UIDRange{First: uint32(first), Last: uint32(last)}
	switch {
	case r.First > r.Last:
		return UIDRange{}, fmt.Errorf("uid range %q is reversed: %d comes after %d", s, r.First, r.Last)
	case r.First == 0:
		return UIDRange{}, fmt.Errorf("uid range %q includes uid 0 (root); jobs never run as root", s)
	case r.Last == 1<<32-1:
		return UIDRange{}, fmt.Errorf("uid range %q includes 4294967295, which is not a valid uid", s)
	}
	return r, nil
}

// User is a host account that jobs run as (Options.JobUser). Create it with
// LookupUser. It is a plain value; the Runner keeps its own copy.
type User struct {
	Name string
	UID  uint32
	GID  uint32
	// Groups are the account's supplementary groups, set for its jobs as
	// login(1) and systemd's User= would.
	Groups []uint32
}

// LookupUser resolves a user name through os/user. It refuses root: jobs
// never run as root.
func LookupUser(name string) (*User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("no user named %q on this host", name)
		}
		return nil, fmt.Errorf("cannot look up user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %q has a non-numeric uid or gid", name)
	}
	if uid == 0 {
		return nil, fmt.Errorf("user %q is root (uid 0); jobs never run as root", name)
	}
	out := &User{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Groups: []uint32{}}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("cannot list the groups of user %q: %w", name, err)
	}
	for _, s := range ids {
		g, err := strconv.ParseUint(s, 10, 32)
		if err == nil && uint32(g) != out.GID {
			out.Groups = append(out.Groups, uint32(g))
		}
	}
	return out, nil
}

// runMode says whose uid jobs run under.
type runMode int

const (
	// runAsWorker: the worker's own uid (a worker that is not root, or a
	// root Runner configured with neither JobUIDs nor JobUser).
	runAsWorker runMode = iota
	// runAsUser: one configured account for every job.
	runAsUser
	// runPerJob: a uid of its own for each job, leased from a range.
	runPerJob
)

// identity is the decision of chooseIdentity. It is read-only after New.
type identity struct {
	mode   runMode
	uid    uint32 // runAsWorker: the worker's; runAsUser: the user's
	gid    uint32
	groups []uint32
	user   string
	uids   UIDRange // runPerJob
}

// chooseIdentity decides whose uid jobs run under, for a worker running
// with effective uid euid and gid egid: a uid of its own per job from uids,
// or the fixed account u, or the worker's own uid when neither is set. What
// cannot be provided is an error, never a quieter fallback: per-job uids and
// a fixed account both need root.
func chooseIdentity(euid, egid int, uids UIDRange, u *User) (identity, error) {
	switch {
	case !uids.IsZero() && u != nil:
		return identity{}, errors.New("per-job uids and a fixed job user are exclusive: set one")
	case !uids.IsZero():
		if uids.First == 0 || uids.First > uids.Last {
			return identity{}, fmt.Errorf("invalid job uid range %s", uids)
		}
		if euid != 0 {
			return identity{}, fmt.Errorf("per-job uids need the worker to run as root (it runs as uid %d)", euid)
		}
		return identity{mode: runPerJob, uids: uids}, nil
	case u != nil:
		if u.UID == 0 {
			return identity{}, fmt.Errorf("user %q is root (uid 0); jobs never run as root", u.Name)
		}
		if euid != 0 {
			return identity{}, fmt.Errorf("running jobs as user %q needs the worker to run as root (it runs as uid %d)", u.Name, euid)
		}
		return identity{mode: runAsUser, uid: u.UID, gid: u.GID, groups: append([]uint32{}, u.Groups...), user: u.Name}, nil
	}
	return identity{mode: runAsWorker, uid: uint32(euid), gid: uint32(egid)}, nil
}

// runAs is Status.RunAs for a job that runs under uid.
func (id *identity) runAs(uid uint32) string {
	switch id.mode {
	case runPerJob:
		return fmt.Sprintf("uid %d (per job)", uid)
	case runAsUser:
		return fmt.Sprintf("user %s (uid %d)", id.user, id.uid)
	}
	return fmt.Sprintf("the worker's uid %d", id.uid)
}

// credential returns what the child switches to before execve(2), or nil to
// keep the worker's. NoSetGroups stays false, so the child always calls
// setgroups(2) and keeps none of root's supplementary groups.
func (id *identity) credential(uid uint32) *syscall.Credential {
	switch id.mode {
	case runPerJob:
		return &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}
	case runAsUser:
		return &syscall.Credential{Uid: id.uid, Gid: id.gid, Groups: append([]uint32{}, id.groups...)}
	}
	return nil
}

// may reports whether a job can read (4), write (2) or execute/search (1)
// the file, judged by its mode bits as the kernel would for the job's uid
// and groups. A per-job uid owns nothing outside its job, so only the
// "other" bits count for it. Jobs under the worker's uid are not checked.
func (id *identity) may(fi fs.FileInfo, want fs.FileMode) bool {
	if id.mode == runAsWorker {
		return true
	}
	perm := fi.Mode().Perm()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && id.mode == runAsUser {
		switch {
		case st.Uid == id.uid:
			return perm>>6&want == want
		case st.Gid == id.gid || containsUint32(id.groups, st.Gid):
			return perm>>3&want == want
		}
	}
	return perm&want == want
}

func containsUint32(s []uint32, v uint32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// checkReachable returns an error naming the first directory on the way to
// dir (an absolute path without symlinks) that jobs cannot search.
func (id *identity) checkReachable(dir string) error {
	if id.mode == runAsWorker {
		return nil
	}
	p := string(filepath.Separator)
	for _, part := range append([]string{""}, strings.Split(strings.TrimPrefix(dir, p), p)...) {
		p = filepath.Join(p, part)
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !id.may(fi, 1) {
			return fmt.Errorf("%s (mode %04o) is not searchable by the jobs' users", p, fi.Mode().Perm())
		}
	}
	return nil
}
