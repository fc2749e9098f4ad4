package identity

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestActOnBehalfOf: only the scheduler (or the all-powerful anonymous
// caller) makes a call a client's by naming it, and only a client role
// can be named; anyone else's naming is ignored.
func TestActOnBehalfOf(t *testing.T) {
	alice := Principal{Role: RoleUser, Name: "alice"}
	w1 := Principal{Role: RoleWorker, Name: "w1"}
	cases := []struct {
		name   string
		caller Principal
		named  string
		// want is the principal served; empty with wantErr for none.
		want    string
		wantErr string
	}{
		{name: "scheduler names a user", caller: Scheduler, named: "user/alice", want: "user/alice"},
		{name: "scheduler names a viewer", caller: Scheduler, named: "viewer/v", want: "viewer/v"},
		{name: "scheduler names nobody", caller: Scheduler, want: "scheduler"},
		{name: "anonymous is narrowed", caller: Anonymous, named: "user/alice", want: "user/alice"},
		{name: "a user naming an admin stays the user", caller: alice, named: "admin/root", want: "user/alice"},
		{name: "a worker naming an admin stays the worker", caller: w1, named: "admin/root", want: "worker/w1"},
		{name: "scheduler names a worker", caller: Scheduler, named: "worker/w1", wantErr: "not a client's"},
		{name: "scheduler names the scheduler", caller: Scheduler, named: "scheduler", wantErr: "not a client's"},
		{name: "scheduler names garbage", caller: Scheduler, named: "user/", wantErr: "relayed a call"},
		{name: "scheduler relays the anonymous caller", caller: Scheduler, named: "anonymous", want: "anonymous"},
		{name: "a scheduler certificate with a name is not the scheduler", caller: Principal{Role: RoleScheduler, Name: "x"}, named: "admin/root", want: "scheduler/x"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got Principal
			var gotOK, relayed bool
			var relay Relay
			var why error
			h := ActOnBehalfOf(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				got, gotOK = FromContext(r.Context())
				relay, relayed = RelayOf(r.Context())
				why = authErrorFrom(r.Context())
			}))
			req := httptest.NewRequest(http.MethodPost, "/baton.v1.SchedulerService/ListJobs", nil)
			req.Header.Set(RelayedByHeader, "10.0.0.2:7070")
			req.Header.Set(RelayedForHeader, "192.0.2.7:51000")
			ctx := NewContext(req.Context(), tc.caller)
			if tc.named != "" && (tc.caller == Scheduler || tc.caller.Anonymous) {
				ctx = WithOnBehalfOf(ctx, tc.named)
			}
			// What the authenticator does for callers that may not name
			// anyone: the header is read, not believed.
			req.Header.Set(OnBehalfOfHeader, tc.named)
			h.ServeHTTP(httptest.NewRecorder(), req.WithContext(ctx))
			if tc.wantErr != "" {
				if gotOK || why == nil || !strings.Contains(why.Error(), tc.wantErr) {
					t.Fatalf("served as %v (%v), error %v; want no principal and an error containing %q", got, gotOK, why, tc.wantErr)
				}
				return
			}
			if !gotOK || got.String() != tc.want {
				t.Fatalf("served as %v (%v), want %s", got, gotOK, tc.want)
			}
			// A call served as the client it names says, for the audit,
			// who relayed it and for which address.
			if acted := tc.named != "" && got.String() == tc.named; acted != relayed {
				t.Errorf("relayed %v (%+v), want %v", relayed, relay, acted)
			} else if acted && (relay.By != tc.caller.String()+" 10.0.0.2:7070" || relay.Client != "192.0.2.7:51000") {
				t.Errorf("relay %+v, want by %q for 192.0.2.7:51000", relay, tc.caller.String()+" 10.0.0.2:7070")
			}
		})
	}
}

// TestRelayedCallAudit: the audit record of a relayed call names the
// client as principal, the client's own address as peer, and the replica
// that relayed it.
func TestRelayedCallAudit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	audit, err := OpenAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	a := NewAuthorizer(Policy{}, audit, slog.New(slog.DiscardHandler))
	var ctx context.Context
	h := ActOnBehalfOf(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { ctx = r.Context() }))
	req := httptest.NewRequest(http.MethodPost, "/baton.v1.SchedulerService/StartJob", nil)
	req.Header.Set(RelayedByHeader, "10.0.0.2:7070")
	req.Header.Set(RelayedForHeader, "192.0.2.7:51000")
	h.ServeHTTP(httptest.NewRecorder(), req.WithContext(WithOnBehalfOf(NewContext(req.Context(), Scheduler), "user/alice")))
	p, _ := FromContext(ctx)
	a.record(ctx, p, "/baton.v1.SchedulerService/StartJob", "10.0.0.2:40000", nil, nil, nil)
	if err := audit.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rec AuditRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if rec.Principal != "user/alice" || rec.Peer != "192.0.2.7:51000" || rec.RelayedBy != "scheduler 10.0.0.2:7070" {
		t.Errorf("audit record %+v: want principal user/alice, peer 192.0.2.7:51000, relayed by scheduler 10.0.0.2:7070", rec)
	}
}
