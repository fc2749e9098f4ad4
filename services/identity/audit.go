package identity

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// AuditRecord is one line of the audit log.
type AuditRecord struct {
	Time       time.Time `json:"time"`
	Principal  string    `json:"principal"`
	OnBehalfOf string    `json:"on_behalf_of,omitempty"`
	Procedure  string    `json:"procedure"`
	JobID      string    `json:"job_id,omitempty"`
	GroupID    string    `json:"group_id,omitempty"`
	WorkerID   string    `json:"worker_id,omitempty"`
	Command    string    `json:"command,omitempty"`
	// Peer is the caller's address; for a call a replica relayed, the
	// address the client called that replica from, and RelayedBy names
	// the replica.
	Peer      string `json:"peer,omitempty"`
	RelayedBy string `json:"relayed_by,omitempty"`
	// Decision is "allow" or "deny".
	Decision string `json:"decision"`
	// Code is the call's outcome: "ok" or a Connect code.
	Code   string `json:"code"`
	Reason string `json:"reason,omitempty"`
}

// AuditLog appends JSON lines to a file. A nil *AuditLog records nothing.
// Safe for concurrent use.
type AuditLog struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

// OpenAuditLog opens path for appending (0600), creating it and its
// directory.
func OpenAuditLog(path string) (*AuditLog, error) {
	a := &AuditLog{path: path}
	if err := a.Reopen(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reopen opens the file again, for log rotation (on SIGHUP).
func (a *AuditLog) Reopen() error {
	if a == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(a.path), 0o700); err != nil {
		return fmt.Errorf("audit file: %w", err)
	}
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit file: %w", err)
	}
	a.mu.Lock()
	old := a.f
	a.f = f
	a.mu.Unlock()
	if old != nil {
		return old.Close()
	}
	return nil
}

// Record appends r as one line; each line is one write(2) to an O_APPEND
// file, so concurrent records never interleave. A failed write is
// returned for the caller to log; the call it records goes on.
func (a *AuditLog) Record(r AuditRecord) error {
	if a == nil {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return os.ErrClosed
	}
	_, err = a.f.Write(b)
	return err
}

// Close closes the file.
func (a *AuditLog) Close() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return nil
	}
	err := a.f.Close()
	a.f = nil
	return err
}
