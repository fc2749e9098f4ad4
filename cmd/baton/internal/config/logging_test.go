package config

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestLogDurationsAreText: durations read as "1.5s" in both log formats,
// not as nanoseconds.
func TestLogDurationsAreText(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"json", "text"} {
		var out bytes.Buffer
		logger, err := NewLogger(LogConfig{Level: "info", Format: format}, &out)
		if err != nil {
			t.Fatal(err)
		}
		logger.Info("registered", "heartbeat_interval", 1500*time.Millisecond, "jobs", 3)
		if format == "json" {
			var line map[string]any
			if err := json.Unmarshal(out.Bytes(), &line); err != nil {
				t.Fatal(err)
			}
			if line["heartbeat_interval"] != "1.5s" || line["jobs"] != 3.0 {
				t.Errorf("json: %s", out.String())
			}
		} else if !strings.Contains(out.String(), "heartbeat_interval=1.5s") {
			t.Errorf("text: %s", out.String())
		}
	}
	if _, err := NewLogger(LogConfig{Level: "info", Format: "xml"}, &bytes.Buffer{}); err == nil {
		t.Error("log.format xml was accepted")
	}
}
