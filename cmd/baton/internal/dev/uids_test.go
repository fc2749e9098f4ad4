package dev

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

// TestUnsearchable: baton dev gives jobs uids of their own only when they
// can reach the data and scripts directories; unsearchable names the
// directory in the way, which the dev cluster then prints.
func TestUnsearchable(t *testing.T) {
	t.Parallel()
	root := e2e.JobsTempDir(t)
	open := filepath.Join(root, "open", "data")
	closed := filepath.Join(root, "closed", "data")
	for _, d := range []string{open, closed} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Dir(closed), 0o700); err != nil {
		t.Fatal(err)
	}
	if got := unsearchable(open); got != "" {
		t.Errorf("unsearchable(%s) = %q, want none", open, got)
	}
	if got := unsearchable(closed); got != filepath.Dir(closed) {
		t.Errorf("unsearchable(%s) = %q, want %s", closed, got, filepath.Dir(closed))
	}
}
