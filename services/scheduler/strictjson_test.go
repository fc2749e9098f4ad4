package scheduler_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// TestJSONRefusesWhatItDoesNotKnow sends JSON requests with typos: an
// unknown enum name or field is invalid_argument naming it, never a
// request carried out as if the typo were not there (ListJobs with
// {"states":["RUNNING"]} used to list every job).
func TestJSONRefusesWhatItDoesNotKnow(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, "", nil)
	startWorker(t, "w1", s, nil)
	waitWorkers(t, s.client, stateReady, "w1")
	id := startJob(t, s.client, &batonv1.StartJobRequest{WorkerId: "w1", Command: "sh", Path: "hello.sh"}).GetJobId()

	unary := []struct {
		name, procedure, body, names string
	}{
		{"short enum name", "ListJobs", `{"states":["RUNNING"]}`, "RUNNING"},
		{"unknown field", "ListJobs", `{"state":"JOB_STATE_RUNNING"}`, "state"},
		{"unknown field beside known ones", "QueryJob", `{"jobId":"` + id + `","verbose":true}`, "verbose"},
		{"unknown field on a stop", "StopJob", `{"jobId":"` + id + `","force":true}`, "force"},
	}
	for _, tt := range unary {
		t.Run(tt.name, func(t *testing.T) {
			res, err := http.Post(s.url+"/baton.v1.SchedulerService/"+tt.procedure, "application/json", strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var e struct{ Code, Message string }
			if err := json.NewDecoder(res.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != http.StatusBadRequest || e.Code != "invalid_argument" || !strings.Contains(e.Message, tt.names) {
				t.Errorf("%s %s: HTTP %d %+v, want 400 invalid_argument naming %q", tt.procedure, tt.body, res.StatusCode, e, tt.names)
			}
		})
	}

	// The exact names still work, and the listing filters by them.
	t.Run("known names", func(t *testing.T) {
		res, err := http.Post(s.url+"/baton.v1.SchedulerService/ListJobs", "application/json", strings.NewReader(`{"states":["JOB_STATE_RUNNING"],"workerId":"w1"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK {
			t.Errorf("ListJobs with known names: HTTP %d %s", res.StatusCode, body)
		}
	})

	// A server stream over the Connect protocol: the error arrives in the
	// end-of-stream message.
	t.Run("short enum name on a stream", func(t *testing.T) {
		msg := []byte(`{"jobId":"` + id + `","stream":"STDERR"}`)
		var env bytes.Buffer
		env.WriteByte(0)
		_ = binary.Write(&env, binary.BigEndian, uint32(len(msg)))
		env.Write(msg)
		res, err := http.Post(s.url+"/baton.v1.SchedulerService/StreamJobOutput", "application/connect+json", &env)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		if !bytes.Contains(body, []byte(`"invalid_argument"`)) || !bytes.Contains(body, []byte("STDERR")) || bytes.Contains(body, []byte(`"chunk"`)) {
			t.Errorf("StreamJobOutput with stream STDERR: %q, want only an invalid_argument end naming STDERR", body)
		}
	})
}
