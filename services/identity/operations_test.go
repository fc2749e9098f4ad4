package identity

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestGuardOperations(t *testing.T) {
	served := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	guard := GuardOperations(served)
	alice := Principal{Role: RoleUser, Name: "alice"}
	cases := []struct {
		name   string
		path   string
		caller *Principal
		want   int
	}{
		{"metrics, nobody", "/metrics", nil, http.StatusUnauthorized},
		{"metrics, a user", "/metrics", &alice, http.StatusForbidden},
		{"metrics, a worker", "/metrics", &Principal{Role: RoleWorker, Name: "w1"}, http.StatusForbidden},
		{"metrics, a viewer", "/metrics", &Principal{Role: RoleViewer, Name: "prometheus"}, http.StatusTeapot},
		{"metrics, an admin", "/metrics", &Principal{Role: RoleAdmin, Name: "root"}, http.StatusTeapot},
		{"metrics, anonymous on a plain listener", "/metrics", &Anonymous, http.StatusTeapot},
		{"health, nobody", "/grpc.health.v1.Health/Check", nil, http.StatusUnauthorized},
		{"health, a user", "/grpc.health.v1.Health/Check", &alice, http.StatusTeapot},
		{"the API, nobody (its authorizer decides)", "/baton.v1.SchedulerService/ListJobs", nil, http.StatusTeapot},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tc.path, nil)
			if tc.caller != nil {
				r = r.WithContext(NewContext(r.Context(), *tc.caller))
			} else {
				r = r.WithContext(withAuthError(r.Context(), errors.New("no credentials: present a client certificate or a bearer token")))
			}
			w := httptest.NewRecorder()
			guard.ServeHTTP(w, r)
			if w.Code != tc.want {
				t.Errorf("%s: HTTP %d (%s), want %d", tc.path, w.Code, w.Body.String(), tc.want)
			}
		})
	}
}

// TestTokenPortSaysWhereCertificatesGo: a caller with no token on a
// listener that takes only tokens (a worker that dialled the scheduler's
// HTTPS port, say) is told which port it wants.
func TestTokenPortSaysWhereCertificatesGo(t *testing.T) {
	_, entry, err := NewToken(Principal{Role: RoleViewer, Name: "v"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := ParseTokens([]string{entry})
	if err != nil {
		t.Fatal(err)
	}
	a := NewAuthenticator(nil, tokens, false)
	_, err = a.authenticate(httptest.NewRequest(http.MethodPost, "/baton.v1.SchedulerService/Heartbeat", nil))
	if err == nil || !strings.Contains(err.Error(), "mutual-TLS port (grpc_server.addr)") {
		t.Errorf("no credentials on the token port: %v; want it to name the mutual-TLS port", err)
	}
}
