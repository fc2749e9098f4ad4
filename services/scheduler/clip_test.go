package scheduler

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestClipKeepsUTF8: a worker's refusal message cut to size stays a valid
// protobuf string, whatever character the cut falls in.
func TestClipKeepsUTF8(t *testing.T) {
	msg := strings.Repeat("é", 600) // 2 bytes each
	for _, n := range []int{1, 1023, 1024} {
		got := clip(msg, n)
		if len(got) > n || !utf8.ValidString(got) {
			t.Errorf("clip to %d: %d bytes, valid %v", n, len(got), utf8.ValidString(got))
		}
	}
}
