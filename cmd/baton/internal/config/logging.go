package config

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/term"
)

// LogConfig is the [log] section shared by the daemons.
type LogConfig struct {
	// Level is debug, info, warn or error.
	Level string `koanf:"level"`
	// Format is text, json, or auto (text on a terminal, json otherwise).
	Format string `koanf:"format"`
}

// DefaultLogConfig logs at info, as text on a terminal and JSON otherwise.
func DefaultLogConfig() LogConfig { return LogConfig{Level: "info", Format: "auto"} }

// NewLogger builds the process's logger from its config.
func NewLogger(c LogConfig, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log.level %q: use debug, info, warn or error", c.Level)
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationText}
	format := strings.ToLower(c.Format)
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log.format %q: use text, json or auto", c.Format)
}

// durationText writes durations as Go writes them ("1.5s"), not as the
// nanoseconds the JSON handler would.
func durationText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}
