package dev

import (
	"io/fs"
	"os"
	"path/filepath"

	"github.com/baton-run/baton/examples"
)

// writeExampleScripts writes the example scripts built into the binary to
// dir, so that `baton dev` needs no checkout beside it. Each start writes
// them again, so they are this binary's; files of other names in dir are
// left alone. Everyone may read and run them, whatever the umask: as root,
// the dev cluster's jobs run under uids of their own.
func writeExampleScripts(dir string) error {
	scripts := examples.Scripts()
	return fs.WalkDir(scripts, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		path := filepath.Join(dir, filepath.FromSlash(name))
		if d.IsDir() {
			if err := os.MkdirAll(path, 0o755); err != nil {
				return err
			}
			return os.Chmod(path, 0o755)
		}
		data, err := fs.ReadFile(scripts, name)
		if err != nil {
			return err
		}
		if err := writeIfChanged(path, data, 0o755); err != nil {
			return err
		}
		return os.Chmod(path, 0o755)
	})
}
