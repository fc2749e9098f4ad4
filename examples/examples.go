// Package examples holds the example scripts, configuration files and
// systemd unit of the repository, and builds the scripts into the binary:
// `baton dev` runs them from any directory, without a checkout beside it.
package examples

import (
	"embed"
	"io/fs"
)

//go:embed scripts
var scripts embed.FS

// Scripts returns the example scripts (examples/scripts), rooted at that
// directory: "count.sh", not "scripts/count.sh". The files carry no mode;
// whoever writes them out decides it. Safe for concurrent use.
func Scripts() fs.FS {
	sub, err := fs.Sub(scripts, "scripts")
	if err != nil {
		// fs.Sub fails only for an invalid path, and "scripts" is valid.
		panic(err)
	}
	return sub
}
