package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
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

// TestCertsIssueRefusesToOverwrite: `baton certs issue` does not replace a
// principal's certificate and key in use, unless told to with --force.
func TestCertsIssueRefusesToOverwrite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	run := func(args ...string) error {
		root := newRootCommand()
		root.SetOut(io.Discard)
		root.SetArgs(args)
		return root.ExecuteContext(t.Context())
	}
	if err := run("certs", "init", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	issue := []string{"certs", "issue", "--dir", dir, "--role", "worker", "--name", "w1"}
	if err := run(issue...); err != nil {
		t.Fatal(err)
	}
	crt := filepath.Join(dir, "worker-w1.crt")
	before, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	if err := run(issue...); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("a second issue for worker/w1: %v", err)
	}
	if now, _ := os.ReadFile(crt); !bytes.Equal(now, before) {
		t.Error("the refused issue changed the certificate")
	}
	if err := run(append(issue, "--force")...); err != nil {
		t.Fatalf("with --force: %v", err)
	}
	if now, _ := os.ReadFile(crt); bytes.Equal(now, before) {
		t.Error("--force did not replace the certificate")
	}
	if err := run("certs", "issue", "--dir", dir, "--role", "worker", "--name", "w2"); err != nil {
		t.Errorf("another principal: %v", err)
	}
}
