package store

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"unicode/utf8"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// A page token is a keyset cursor: the sort key (created_at, job_id) of the
// last job of the previous page, so that the next page starts right after it
// whatever was inserted or deleted in between, and costs an index seek rather
// than skipping rows as OFFSET does. It also carries a fingerprint of the
// filter, so a token is refused with a different filter instead of silently
// paging through another listing (https://google.aip.dev/158).
//
// Layout, before unpadded URL-safe base64:
//
//	version (1 byte) | created_at (8 bytes, big-endian) | filter fingerprint (8 bytes) | job_id
const (
	tokenVersion  = 1
	tokenHeader   = 1 + 8 + 8
	maxTokenJobID = 256
)

// cursor is the position after which a page starts.
type cursor struct {
	createdAt int64
	jobID     string
}

func encodeCursor(c cursor, fingerprint uint64) string {
	b := make([]byte, 0, tokenHeader+len(c.jobID))
	b = append(b, tokenVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(c.createdAt))
	b = binary.BigEndian.AppendUint64(b, fingerprint)
	b = append(b, c.jobID...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(token string, fingerprint uint64) (cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) <= tokenHeader || len(b) > tokenHeader+maxTokenJobID || b[0] != tokenVersion {
		return cursor{}, fmt.Errorf("page token %q: %w", truncate(token), ErrInvalidPageToken)
	}
	if binary.BigEndian.Uint64(b[9:17]) != fingerprint {
		return cursor{}, fmt.Errorf("page token was issued for a different filter: %w", ErrInvalidPageToken)
	}
	c := cursor{createdAt: int64(binary.BigEndian.Uint64(b[1:9])), jobID: string(b[tokenHeader:])}
	if !utf8.ValidString(c.jobID) {
		return cursor{}, fmt.Errorf("page token %q: %w", truncate(token), ErrInvalidPageToken)
	}
	return c, nil
}

// truncate shortens a token for an error message.
func truncate(token string) string {
	const n = 32
	if len(token) <= n {
		return token
	}
	return token[:n] + "…"
}

// fingerprint hashes the fields of f that select jobs; States must be
// normalised. Each field is length-prefixed so that no two filters share an
// encoding.
func (f JobFilter) fingerprint() uint64 {
	var b []byte
	for _, s := range []string{f.WorkerID, f.Owner, f.GroupID} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(len(f.States)))
	for _, st := range f.States {
		b = binary.AppendVarint(b, int64(st))
	}
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

// normalStates returns the defined states among states, sorted and without
// duplicates, so that equal sets give equal queries and fingerprints, and a
// caller cannot grow the statement cache with made-up values. none reports
// that states were given but none is defined: the filter matches nothing.
func normalStates(states []batonv1.JobState) (out []batonv1.JobState, none bool) {
	if len(states) == 0 {
		return nil, false
	}
	for _, st := range states {
		if _, ok := batonv1.JobState_name[int32(st)]; ok {
			out = append(out, st)
		}
	}
	slices.Sort(out)
	out = slices.Compact(out)
	return out, len(out) == 0
}

// page reads what a listing of f needs, the same in every backend: f with
// its states normalized, the page size, the cursor its token continues
// from (nil for the first page), and the fingerprint the next token
// carries. none reports a filter no job matches.
func (f JobFilter) page() (_ JobFilter, size int, cur *cursor, fp uint64, none bool, err error) {
	f.States, none = normalStates(f.States)
	size = f.PageSize
	if size <= 0 {
		size = DefaultPageSize
	}
	size = min(size, MaxPageSize)
	fp = f.fingerprint()
	if f.PageToken != "" {
		c, err := decodeCursor(f.PageToken, fp)
		if err != nil {
			return f, 0, nil, 0, false, err
		}
		cur = &c
	}
	return f, size, cur, fp, none, nil
}
