// Command testreport reads the events of `go test -json` on stdin and
// reports what the run proved: each package's closing line as plain
// `go test` prints it, the whole output of every failed test (and of a
// package that failed outside its tests, such as a build failure, a panic
// or a timeout), the skipped tests with their reasons, and the counts.
//
// It exits 1 if a test or a package failed, or if no test ran at all: a
// run that proved nothing must not pass.
//
//	go test -json ./... | go run -C tools ./testreport
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
)

// event is one line of test2json output (go doc test2json).
type event struct {
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	ImportPath  string // build-output and build-fail events
	FailedBuild string // set on a package's fail event when its build failed
}

// line is one output event of a package, kept in arrival order so that a
// failed test's output reads as go test printed it.
type line struct {
	test string
	text string
}

// pkgRun is what is known about one package until its final event.
type pkgRun struct {
	lines  []line
	result map[string]string // test name to pass, fail or skip
	order  []string          // tests in the order they started
	last   string            // the closing line (ok, FAIL or ?), once seen
}

type skipped struct {
	pkg, test, reason string
}

type report struct {
	out      io.Writer
	pkgs     map[string]*pkgRun
	builds   map[string][]string // build output by ImportPath
	broken   []string            // ImportPaths whose build failed, in order
	shown    map[string]bool     // build failures already printed
	failed   []string            // "pkg TestName" of failed tests, for the recap
	skips    []skipped
	badPkgs  []string
	passN    int
	failN    int
	skipN    int
	problems int // build failures no package reported
}

func main() {
	r := &report{
		out:    os.Stdout,
		pkgs:   make(map[string]*pkgRun),
		builds: make(map[string][]string),
		shown:  make(map[string]bool),
	}
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintf(os.Stderr, "testreport: reading stdin: %v\n", err)
		os.Exit(1)
	}
	if !r.summary() {
		os.Exit(1)
	}
}

func (r *report) read(in io.Reader) error {
	br := bufio.NewReaderSize(in, 1<<16)
	for {
		raw, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(raw)) > 0 {
			var ev event
			if jerr := json.Unmarshal(raw, &ev); jerr != nil || ev.Action == "" {
				// go test prints some errors (a bad flag, a package that
				// cannot be loaded) as text, not events: pass them on.
				r.out.Write(raw)
				if !bytes.HasSuffix(raw, []byte("\n")) {
					fmt.Fprintln(r.out)
				}
			} else {
				r.handle(ev)
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (r *report) pkg(name string) *pkgRun {
	p := r.pkgs[name]
	if p == nil {
		p = &pkgRun{result: make(map[string]string)}
		r.pkgs[name] = p
	}
	return p
}

func (r *report) handle(ev event) {
	switch ev.Action {
	case "build-output":
		r.builds[ev.ImportPath] = append(r.builds[ev.ImportPath], ev.Output)
		return
	case "build-fail":
		// Printed with the package whose FailedBuild names it, or at the
		// end if none does.
		r.broken = append(r.broken, ev.ImportPath)
		return
	}
	if ev.Package == "" {
		return
	}
	p := r.pkg(ev.Package)
	switch ev.Action {
	case "run":
		if _, ok := p.result[ev.Test]; !ok && ev.Test != "" {
			p.result[ev.Test] = ""
			p.order = append(p.order, ev.Test)
		}
	case "output":
		if ev.Test == "" && isClosingLine(ev.Output) {
			p.last = strings.TrimRight(ev.Output, "\n")
			return
		}
		p.lines = append(p.lines, line{test: ev.Test, text: ev.Output})
	case "pass", "fail", "skip":
		if ev.Test != "" {
			p.result[ev.Test] = ev.Action
			if ev.Action == "skip" {
				r.skips = append(r.skips, skipped{ev.Package, ev.Test, skipReason(p.lines, ev.Test)})
			}
			return
		}
		r.finish(ev.Package, p, ev)
	}
}

// isClosingLine reports whether s is the line go test prints last for a
// package: "ok  \tpkg\t1.2s", "FAIL\tpkg\t1.2s", "FAIL\tpkg [build
// failed]" or "?   \tpkg\t[no test files]".
func isClosingLine(s string) bool {
	return strings.HasPrefix(s, "ok  \t") || strings.HasPrefix(s, "FAIL\t") || strings.HasPrefix(s, "?   \t")
}

// finish prints a package's result when its final event arrives: for a
// failure, the build output or the output of its failed tests and its own
// output, then the closing line, as plain go test does.
func (r *report) finish(name string, p *pkgRun, ev event) {
	delete(r.pkgs, name)
	for _, t := range p.order {
		switch p.result[t] {
		case "pass":
			r.passN++
		case "skip":
			r.skipN++
		case "fail":
			r.failN++
			r.failed = append(r.failed, name+" "+t)
		case "":
			if ev.Action == "fail" {
				// A timeout or a panic elsewhere ended the binary while this
				// test ran: it did not pass.
				p.result[t] = "fail"
				r.failN++
				r.failed = append(r.failed, name+" "+t+" (did not finish)")
			}
		}
	}
	last := p.last
	if ev.Action == "fail" {
		r.badPkgs = append(r.badPkgs, name)
		if ev.FailedBuild != "" {
			r.printBuild(ev.FailedBuild)
		}
		for _, l := range p.lines {
			if l.test == "" || p.result[l.test] == "fail" {
				if !isFraming(l.text) {
					fmt.Fprint(r.out, l.text)
				}
			}
		}
		if last == "" {
			last = fmt.Sprintf("FAIL\t%s\t%.3fs", name, ev.Elapsed)
		}
	}
	if last == "" {
		switch ev.Action {
		case "skip":
			last = fmt.Sprintf("?   \t%s\t[no test files]", name)
		default:
			last = fmt.Sprintf("ok  \t%s\t%.3fs", name, ev.Elapsed)
		}
	}
	fmt.Fprintln(r.out, last)
}

// isFraming reports whether s only says which test the next lines belong
// to; test2json has already attributed them.
func isFraming(s string) bool {
	return strings.HasPrefix(s, "=== PAUSE ") || strings.HasPrefix(s, "=== CONT  ") || strings.HasPrefix(s, "=== NAME  ")
}

func (r *report) printBuild(importPath string) {
	if r.shown[importPath] {
		return
	}
	r.shown[importPath] = true
	for _, s := range r.builds[importPath] {
		fmt.Fprint(r.out, s)
	}
}

// logStart matches the first line of a t.Log entry: "    file_test.go:12: ".
var logStart = regexp.MustCompile(`^\s*[^\s:]+\.go:\d+: `)

// skipReason returns the last log entry of test, which holds the message
// of t.Skip (testing logs it before it prints "--- SKIP").
func skipReason(lines []line, test string) string {
	var entry []string
	for _, l := range lines {
		if l.test != test {
			continue
		}
		text := strings.TrimRight(l.text, "\n")
		switch {
		case strings.HasPrefix(text, "=== ") || strings.HasPrefix(text, "--- "):
		case logStart.MatchString(text):
			entry = []string{strings.TrimSpace(text)}
		case len(entry) > 0 && strings.TrimSpace(text) != "":
			entry = append(entry, strings.TrimSpace(text)) // a continuation line
		}
	}
	if len(entry) == 0 {
		return "(no reason given)"
	}
	return strings.Join(entry, " / ")
}

// summary prints the recap and reports whether the run proved something
// and nothing failed.
func (r *report) summary() bool {
	ok := true
	for _, name := range slices.Sorted(maps.Keys(r.pkgs)) {
		p := r.pkgs[name]
		// The input ended before the package's final event: go test was
		// killed, or the pipe broke.
		fmt.Fprintf(r.out, "FAIL\t%s [no result: the input ended first]\n", name)
		r.badPkgs = append(r.badPkgs, name)
		for _, t := range p.order {
			if p.result[t] == "" {
				r.failN++
				r.failed = append(r.failed, name+" "+t+" (did not finish)")
			}
		}
	}
	for _, path := range r.broken {
		if !r.shown[path] {
			fmt.Fprintf(r.out, "\nbuild of %s failed:\n", path)
			r.printBuild(path)
			r.problems++
		}
	}

	if len(r.failed) > 0 {
		fmt.Fprintf(r.out, "\nFailed tests\n")
		for _, f := range r.failed {
			fmt.Fprintf(r.out, "  %s\n", f)
		}
	}
	if len(r.badPkgs) > 0 {
		fmt.Fprintf(r.out, "\nFailed packages\n")
		for _, p := range r.badPkgs {
			fmt.Fprintf(r.out, "  %s\n", p)
		}
	}

	fmt.Fprintf(r.out, "\nSkipped tests\n")
	if len(r.skips) == 0 {
		fmt.Fprintf(r.out, "  none\n")
	}
	for _, s := range r.skips {
		fmt.Fprintf(r.out, "  %s %s: %s\n", s.pkg, s.test, s.reason)
	}
	fmt.Fprintln(r.out)

	if r.passN+r.failN+r.skipN == 0 {
		fmt.Fprintln(r.out, "no test ran: the run proved nothing")
		ok = false
	}
	if r.failN > 0 || len(r.badPkgs) > 0 || r.problems > 0 {
		ok = false
	}
	fmt.Fprintf(r.out, "%d passed, %d failed, %d skipped\n", r.passN, r.failN, r.skipN)
	return ok
}
