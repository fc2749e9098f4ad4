package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// tokenPrefix makes Baton tokens recognisable to secret scanners.
const tokenPrefix = "baton_"

// Errors of Tokens.Lookup. Neither says which part was wrong.
var (
	ErrBadToken     = errors.New("the bearer token is not valid")
	ErrExpiredToken = errors.New("the bearer token has expired")
)

// Tokens are the bearer tokens a listener accepts, kept only as SHA-256
// hashes. A Tokens is immutable and safe for concurrent use.
type Tokens struct {
	entries []tokenEntry
}

type tokenEntry struct {
	p       Principal
	hash    [sha256.Size]byte
	expires time.Time
}

// ParseTokens reads token entries "role/name:sha256-hex" with an optional
// ":expiry" in RFC 3339 ("user/alice:9f86…:2027-01-01T00:00:00Z").
func ParseTokens(lines []string) (*Tokens, error) {
	t := &Tokens{}
	for i, line := range lines {
		who, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("token %d: want role/name:sha256hex[:expiry]", i+1)
		}
		p, err := ParsePrincipal(who)
		if err != nil {
			return nil, fmt.Errorf("token %d: %w", i+1, err)
		}
		if p.Role == RoleScheduler || p.Role == RoleWorker {
			return nil, fmt.Errorf("token %d: tokens are for clients (admin, user, viewer), not %s", i+1, p.Role)
		}
		hexHash, expiry, hasExpiry := strings.Cut(rest, ":")
		e := tokenEntry{p: p}
		if b, err := hex.DecodeString(hexHash); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("token %d: the hash must be 64 hex digits (sha256 of the token)", i+1)
		} else {
			copy(e.hash[:], b)
		}
		if hasExpiry {
			if e.expires, err = time.Parse(time.RFC3339, expiry); err != nil {
				return nil, fmt.Errorf("token %d: expiry %q is not RFC 3339", i+1, expiry)
			}
		}
		t.entries = append(t.entries, e)
	}
	return t, nil
}

// Len is the number of tokens.
func (t *Tokens) Len() int { return len(t.entries) }

// Lookup returns the principal of token. Every entry is compared, in
// constant time, whatever matches, so timing tells nothing about the
// tokens held.
func (t *Tokens) Lookup(token string, now time.Time) (Principal, error) {
	h := sha256.Sum256([]byte(token))
	found := -1
	for i := range t.entries {
		if subtle.ConstantTimeCompare(h[:], t.entries[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Principal{}, ErrBadToken
	}
	e := t.entries[found]
	if !e.expires.IsZero() && !now.Before(e.expires) {
		return Principal{}, ErrExpiredToken
	}
	return e.p, nil
}

// NewToken returns a fresh random token and the config entry that admits
// it as p: the entry holds only the token's hash.
func NewToken(p Principal, expires time.Time) (token, entry string, err error) {
	if err := p.Validate(); err != nil {
		return "", "", err
	}
	if p.Role == RoleScheduler || p.Role == RoleWorker {
		return "", "", fmt.Errorf("tokens are for clients (admin, user, viewer), not %s", p.Role)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	token = tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	h := sha256.Sum256([]byte(token))
	entry = p.String() + ":" + hex.EncodeToString(h[:])
	if !expires.IsZero() {
		entry += ":" + expires.UTC().Format(time.RFC3339)
	}
	return token, entry, nil
}
