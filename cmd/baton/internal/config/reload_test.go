package config

import (
	"context"
	"errors"
	"log/slog"
	"syscall"
	"testing"
	"time"
)

// TestReloadOnHangup sends this process SIGHUP and checks that every reload
// step runs, a failing one not stopping the others.
func TestReloadOnHangup(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ran := make(chan string, 2)
	ReloadOnHangup(ctx, slog.New(slog.DiscardHandler), map[string]func() error{
		"good": func() error { ran <- "good"; return nil },
		"bad":  func() error { ran <- "bad"; return errors.New("broken file") },
	})
	// signal.Notify is in place once ReloadOnHangup returns.
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case s := <-ran:
			got[s] = true
		case <-time.After(20 * time.Second):
			t.Fatalf("after SIGHUP only %v ran", got)
		}
	}
}
