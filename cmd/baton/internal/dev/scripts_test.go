package dev

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/baton-run/baton/examples"
)

// TestWriteExampleScripts: every start makes the scripts directory hold
// this binary's scripts, readable and runnable by other uids whatever an
// earlier start or a user left there, and keeps files of other names.
func TestWriteExampleScripts(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "scripts")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "count.sh")
	if err := os.WriteFile(stale, []byte("#!/bin/sh\necho edited\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A temporary file an interrupted start left, with a mode of its own.
	if err := os.WriteFile(stale+".tmp", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(dir, "mine.sh")
	if err := os.WriteFile(mine, []byte("echo mine\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writeExampleScripts(dir); err != nil {
		t.Fatal(err)
	}

	checkMode := func(path string, want fs.FileMode) {
		t.Helper()
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, %v; want mode %v", path, fi.Mode().Perm(), err, want)
		}
	}
	checkMode(dir, 0o755)
	n := 0
	err := fs.WalkDir(examples.Scripts(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		want, err := fs.ReadFile(examples.Scripts(), name)
		if err != nil {
			return err
		}
		path := filepath.Join(dir, filepath.FromSlash(name))
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s does not hold the embedded %s: %v", path, name, err)
		}
		checkMode(path, 0o755)
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("walk of the embedded scripts: %d files, %v", n, err)
	}
	if got, err := os.ReadFile(mine); err != nil || string(got) != "echo mine\n" {
		t.Errorf("a file of another name was changed: %q, %v", got, err)
	}
}

// TestPathPrograms: the dev allow-list names each executable file of the
// PATH directories once, following symlinks, and nothing else.
func TestPathPrograms(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	first, second := filepath.Join(root, "first"), filepath.Join(root, "second")
	files := []struct {
		path string
		mode fs.FileMode
	}{
		{filepath.Join(first, "tool"), 0o755},
		{filepath.Join(first, "shadowed"), 0o644}, // not executable here, but in second
		{filepath.Join(first, "notes.txt"), 0o644},
		{filepath.Join(second, "tool"), 0o755},
		{filepath.Join(second, "shadowed"), 0o700},
		{filepath.Join(root, "relative", "hidden"), 0o755},
	}
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.path, []byte("#!/bin/sh\n"), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(first, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(first, "tool"), filepath.Join(second, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "missing"), filepath.Join(second, "dangling")); err != nil {
		t.Fatal(err)
	}
	path := strings.Join([]string{first, "", "relative", filepath.Join(root, "absent"), second}, string(filepath.ListSeparator))
	want := []string{"link", "shadowed", "tool"}
	if got := pathPrograms(path); !slices.Equal(got, want) {
		t.Errorf("pathPrograms = %q, want %q", got, want)
	}
}
