package main

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-run/baton/services/identity"
)

// TestTokenCommand checks that `baton token` prints a token and a config
// entry that admits exactly that token as its principal.
func TestTokenCommand(t *testing.T) {
	t.Parallel()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"token", "--role", "user", "--name", "alice", "--expires", "1h"})
	if err := root.ExecuteContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	token := regexp.MustCompile(`baton_[A-Za-z0-9_-]{43}`).FindString(out.String())
	entry := regexp.MustCompile(`tokens = \[(".*")\]`).FindStringSubmatch(out.String())
	if token == "" || entry == nil {
		t.Fatalf("no token or entry in:\n%s", out.String())
	}
	line, err := strconv.Unquote(entry[1])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(line, token) {
		t.Error("the config entry holds the token itself")
	}
	tokens, err := identity.ParseTokens([]string{line})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := tokens.Lookup(token, time.Now()); err != nil || p.String() != "user/alice" {
		t.Errorf("the entry admits %v, %v; want user/alice", p, err)
	}
	if _, err := tokens.Lookup(token, time.Now().Add(2*time.Hour)); err == nil {
		t.Error("the token outlived --expires")
	}

	root = newRootCommand()
	root.SetOut(&out)
	root.SetArgs([]string{"token", "--role", "worker", "--name", "w1"})
	if err := root.ExecuteContext(t.Context()); err == nil {
		t.Error("a token for a worker was made")
	}
}
