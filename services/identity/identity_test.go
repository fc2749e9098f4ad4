package identity

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseURI(t *testing.T) {
	t.Parallel()
	cases := []struct {
		uri  string
		want Principal
		ok   bool
	}{
		{"spiffe://c1/scheduler", Scheduler, true},
		{"spiffe://c1/worker/w-1", Principal{Role: RoleWorker, Name: "w-1"}, true},
		{"spiffe://c1/auditor/eve", Principal{Role: "auditor", Name: "eve"}, true},
		{"spiffe://c2/user/alice", Principal{}, false},
		{"https://c1/user/alice", Principal{}, false},
		{"spiffe://c1/", Principal{}, false},
		{"spiffe://c1/user/../admin", Principal{}, false},
		{"spiffe://c1/user/alice?x=1", Principal{}, false},
		{"spiffe://c1/user/" + strings.Repeat("a", 64), Principal{}, false},
	}
	for _, tc := range cases {
		u, err := url.Parse(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseURI(u, "c1")
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseURI(%s) = %v, %v; want %v, ok=%v", tc.uri, got, err, tc.want, tc.ok)
		}
	}
}

func TestPrincipalValidate(t *testing.T) {
	t.Parallel()
	for s, ok := range map[string]bool{
		"scheduler": true, "worker/w1": true, "user/alice": true, "admin/root": true, "viewer/v.1": true,
		"scheduler/x": false, "user": false, "user/": false, "root/x": false, "user/-x": false, "user/a b": false,
	} {
		if _, err := ParsePrincipal(s); (err == nil) != ok {
			t.Errorf("ParsePrincipal(%q): %v, want ok=%v", s, err, ok)
		}
	}
}

func TestTokens(t *testing.T) {
	t.Parallel()
	alice := Principal{Role: RoleUser, Name: "alice"}
	tok, entry, err := NewToken(alice, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(entry, tok) || !strings.HasPrefix(tok, tokenPrefix) {
		t.Fatalf("entry %q holds the token, or the token %q lacks its prefix", entry, tok)
	}
	expTok, expEntry, err := NewToken(Principal{Role: RoleViewer, Name: "v"}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := ParseTokens([]string{entry, expEntry})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if p, err := tokens.Lookup(tok, now); err != nil || p != alice {
		t.Errorf("Lookup = %v, %v", p, err)
	}
	if _, err := tokens.Lookup(expTok, now); err != nil {
		t.Errorf("a token before its expiry: %v", err)
	}
	if _, err := tokens.Lookup(expTok, now.Add(2*time.Hour)); !errors.Is(err, ErrExpiredToken) {
		t.Errorf("an expired token: %v", err)
	}
	for _, bad := range []string{"", tok + "x", tok[:len(tok)-1], strings.ToUpper(tok)} {
		if _, err := tokens.Lookup(bad, now); !errors.Is(err, ErrBadToken) {
			t.Errorf("Lookup(%q): %v, want ErrBadToken", bad, err)
		}
	}
	for _, bad := range []string{
		"user/alice", "user/alice:abcd", "worker/w1:" + strings.Repeat("0", 64),
		"user/alice:" + strings.Repeat("0", 64) + ":tomorrow", "nobody:" + strings.Repeat("0", 64),
	} {
		if _, err := ParseTokens([]string{bad}); err == nil {
			t.Errorf("ParseTokens(%q) succeeded", bad)
		}
	}
	if _, _, err := NewToken(Principal{Role: RoleWorker, Name: "w"}, time.Time{}); err == nil {
		t.Error("a token for a worker was made")
	}
}

func TestIssueAndLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, err := NewAuthority("c1")
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := WriteKeyPair(dir, "ca", ca.CertPEM(), caKey); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadAuthority(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil || loaded.Cluster != "c1" {
		t.Fatalf("LoadAuthority: %v, %v", loaded, err)
	}
	w := Principal{Role: RoleWorker, Name: "w1"}
	crt, key, err := loaded.Issue(w, IssueOptions{Hosts: []string{"127.0.0.1", "node1"}})
	if err != nil {
		t.Fatal(err)
	}
	crtFile, keyFile, err := WriteKeyPair(dir, FileBase(w), crt, key)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(keyFile); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v, %v", info, err)
	}
	creds, err := LoadCredentials(filepath.Join(dir, "ca.crt"), crtFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if creds.Self() != w || creds.Cluster() != "c1" {
		t.Errorf("credentials of %v in %q", creds.Self(), creds.Cluster())
	}
	// T8: a key others can read is refused.
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCredentials(filepath.Join(dir, "ca.crt"), crtFile, keyFile); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Errorf("a 0644 key was loaded: %v", err)
	}
	// A certificate of another CA is refused at load.
	other, err := NewAuthority("c1")
	if err != nil {
		t.Fatal(err)
	}
	crt2, key2, err := other.Issue(w, IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	crtFile2, keyFile2, err := WriteKeyPair(dir, "other", crt2, key2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCredentials(filepath.Join(dir, "ca.crt"), crtFile2, keyFile2); err == nil {
		t.Error("a certificate of another CA was loaded")
	}
}

func TestAuditLogAppendsLines(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "audit.log")
	a, err := OpenAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := a.Record(AuditRecord{Principal: "user/a", Procedure: "/p", Decision: "allow", Code: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := a.Reopen(); err != nil { // rotation
		t.Fatal(err)
	}
	if err := a.Record(AuditRecord{Principal: "user/b"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if strings.Count(string(old), "\\n") != 0 || strings.Count(string(old), "\n") != 3 || strings.Count(string(cur), "\n") != 1 {
		t.Errorf("rotated %q, current %q", old, cur)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("audit file mode: %v %v", info, err)
	}
	var nilLog *AuditLog
	if err := nilLog.Record(AuditRecord{}); err != nil {
		t.Error(err)
	}
}
