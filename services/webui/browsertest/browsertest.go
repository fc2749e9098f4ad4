// Package browsertest starts the headless Chromium that the web page's
// tests drive, with the flags this machine's closed network needs. Only
// tests import it.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"
)

// Chromium returns the browser to drive. Without one the test is skipped on
// a developer machine, but fails under CI (CI set), where .ci/run installs
// Debian's chromium: a browser test must never pass silently there.
func Chromium(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("BATON_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium found, and CI is set: install Debian's chromium (.ci/run does) or set BATON_CHROMIUM")
	}
	t.Skip("no chromium found (apt-get install chromium, or set BATON_CHROMIUM); set CI to make this a failure")
	return ""
}

// Start starts headless Chromium and returns a tab's context and a function
// returning the console errors and exceptions seen so far. ignore, if set,
// drops messages that are not the page's fault (a browser's own log line
// about an expected 401, say). Everything ends with the test.
func Start(t testing.TB, parent context.Context, ignore func(chromedp.ConsoleMessage) bool) (context.Context, func() []string) {
	t.Helper()
	home := t.TempDir()
	// Without the background-networking flags Chromium keeps dialling
	// Google's hosts, which this network refuses.
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(parent,
		chromedp.ExecPath(Chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Env("HOME="+home, "XDG_CONFIG_HOME="+home, "XDG_CACHE_HOME="+home),
	)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	var (
		mu   sync.Mutex
		msgs []string
	)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		if t.Failed() {
			mu.Lock()
			defer mu.Unlock()
			t.Logf("console errors seen:\n%s", strings.Join(msgs, "\n"))
		}
	})
	// Start the browser now, so that the console subscription below sees
	// the tab from its first message.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if ignore != nil && ignore(m) {
				continue
			}
			line := fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line)
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
				mu.Lock()
				msgs = append(msgs, line)
				mu.Unlock()
			}
		}
	}()
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(msgs)
	}
}
