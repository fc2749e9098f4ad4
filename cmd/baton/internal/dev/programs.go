package dev

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
)

// pathPrograms returns the name of every executable file in the
// directories of path (a PATH value), sorted. It is the dev workers'
// allow-list: a local playground runs whatever its user could run from a
// shell, and an allow-list that admits `sh -c` protects nothing anyway.
// Workers resolve the names once, when they start, so a program installed
// later needs a restart of the dev cluster.
func pathPrograms(path string) []string {
	found := map[string]bool{}
	for _, dir := range filepath.SplitList(path) {
		// A relative entry depends on the working directory; workers
		// refuse names that resolve through one (exec.ErrDot).
		if !filepath.IsAbs(dir) {
			continue
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if found[e.Name()] || e.IsDir() {
				continue
			}
			// Stat, not the entry's type: most of /usr/bin may be symlinks.
			fi, err := os.Stat(filepath.Join(dir, e.Name()))
			if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				found[e.Name()] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(found))
}
