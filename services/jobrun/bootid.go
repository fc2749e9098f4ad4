package jobrun

import (
	"os"
	"strings"
	"sync"
)

// bootID returns the kernel's id of the current boot, or "" if it cannot
// be read. Pids and the start times of proc_pid_stat(5) count afresh from
// each boot, so a pid and start time recorded before a reboot may name
// another process after it: a record identifies a live process only if it
// was made in this boot (random(4): boot_id is a random UUID per boot).
func bootID() string { return bootIDOnce() }

// bootIDOnce reads the boot id once per process: it cannot change while
// the process lives.
var bootIDOnce = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
})
