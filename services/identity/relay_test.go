package identity

import (
	"net/http"
	"net/http/httptest"
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
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got Principal
			var gotOK bool
			var why error
			h := ActOnBehalfOf(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				got, gotOK = FromContext(r.Context())
				why = authErrorFrom(r.Context())
			}))
			req := httptest.NewRequest(http.MethodPost, "/baton.v1.SchedulerService/ListJobs", nil)
			ctx := NewContext(req.Context(), tc.caller)
			if tc.named != "" && (tc.caller.Role == RoleScheduler || tc.caller.Anonymous) {
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
		})
	}
}
