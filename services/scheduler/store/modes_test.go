package store_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/baton-run/baton/services/scheduler/store"
)

// TestOpenTightensModes: the store holds every job's env values, so its
// directory and files are the scheduler's alone, also when an operator
// made them earlier with wider modes.
func TestOpenTightensModes(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "baton.db")
	first, err := store.Open(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, db, db + "-wal", db + "-shm"} {
		if err := os.Chmod(p, 0o755); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	s, err := store.Open(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := map[string]os.FileMode{dir: 0o700, db: 0o600, db + "-wal": 0o600, db + "-shm": 0o600}
	for p, mode := range want {
		info, err := os.Stat(p)
		if os.IsNotExist(err) && p != dir && p != db {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != mode {
			t.Errorf("%s has mode %#o, want %#o", filepath.Base(p), info.Mode().Perm(), mode)
		}
	}
}
