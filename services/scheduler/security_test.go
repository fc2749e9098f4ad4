package scheduler_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/serving"
)

var (
	alice = identity.Principal{Role: identity.RoleUser, Name: "alice"}
	bob   = identity.Principal{Role: identity.RoleUser, Name: "bob"}
	vic   = identity.Principal{Role: identity.RoleViewer, Name: "vic"}
	root  = identity.Principal{Role: identity.RoleAdmin, Name: "root"}
)

// TestHandshakeRejections is RELIABILITY.md C6 T1, T2, T3 and T6: whatever
// fails to be a valid client of the cluster is refused at the TLS
// handshake, so that no handler runs.
func TestHandshakeRejections(t *testing.T) {
	c := startSecureCluster(t)
	before := c.schedCalls.Load()

	other, err := identity.NewAuthority("test") // same name, another key
	if err != nil {
		t.Fatal(err)
	}
	otherCrt, otherKey, err := other.Issue(alice, identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := tls.X509KeyPair(otherCrt, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	variant := func(opts identity.IssueOptions) *tls.Config {
		crt, key := c.issue(t, alice, opts)
		return c.clientTLS(t, crt, key)
	}
	okCrt, okKey := c.issue(t, alice, identity.IssueOptions{})
	tls12 := c.clientTLS(t, okCrt, okKey)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	withOtherCA := c.clientTLS(t, "", "")
	withOtherCA.Certificates = []tls.Certificate{otherCA}

	cases := []struct {
		name string
		conf *tls.Config
		// logged is the server's reason, in its handshake error log line:
		// what the client sees depends on whether the alert arrives
		// before or after it writes its request.
		logged string
	}{
		{"T1 no certificate", c.clientTLS(t, "", ""), "didn't provide a certificate"},
		{"T2 another CA", withOtherCA, "unknown authority"},
		{"T2 expired", variant(identity.IssueOptions{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}), "expired or is not yet valid"},
		{"T2 not yet valid", variant(identity.IssueOptions{NotBefore: now.Add(24 * time.Hour), NotAfter: now.Add(48 * time.Hour)}), "expired or is not yet valid"},
		{"T2 CA:TRUE leaf", variant(identity.IssueOptions{IsCA: true}), "is a CA certificate"},
		{"T2 serverAuth only", variant(identity.IssueOptions{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}), "incompatible key usage"},
		{"T3 TLS 1.2", tls12, "unsupported versions"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			seen := strings.Count(c.schedLog.String(), tc.logged)
			client := batonv1connect.NewSchedulerServiceClient(c.httpClient(t, tc.conf), c.schedURL)
			_, err := client.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
			if err == nil {
				t.Fatal("the call succeeded")
			}
			if code := connect.CodeOf(err); code != connect.CodeUnavailable && code != connect.CodeCanceled {
				t.Errorf("error %v, want code unavailable", err)
			}
			// A new line each time: two cases share a reason.
			waitFor(t, "the server to log "+tc.logged, func() bool {
				return strings.Count(c.schedLog.String(), tc.logged) > seen
			})
		})
	}

	t.Run("T6 plaintext to the TLS port", func(t *testing.T) {
		tlsAddr := strings.TrimPrefix(c.schedURL, "https://")
		for _, hc := range []*http.Client{serving.NewHTTPClient(nil), {}} {
			client := batonv1connect.NewSchedulerServiceClient(hc, "http://"+tlsAddr)
			if _, err := client.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{})); err == nil {
				t.Error("a plaintext call to the TLS port succeeded")
			}
		}
	})
	t.Run("T6 TLS to the plaintext port", func(t *testing.T) {
		client := batonv1connect.NewSchedulerServiceClient(c.httpClient(t, tls12), "https://"+strings.TrimPrefix(c.httpURL, "http://"))
		if _, err := client.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{})); err == nil {
			t.Error("a TLS call to the plaintext port succeeded")
		}
	})

	if n := c.schedCalls.Load() - before; n != 0 {
		t.Errorf("%d rejected calls reached a handler", n)
	}
}

// TestRoleBinding is RELIABILITY.md C6 T4: a member dialing a peer checks
// the peer's identity, not only its CA.
func TestRoleBinding(t *testing.T) {
	c := startSecureCluster(t, "w1", "w2")

	// A worker dialing "the scheduler" that answers with a worker's
	// certificate refuses it.
	w1 := c.creds(t, identity.Principal{Role: identity.RoleWorker, Name: "w1"})
	fake := batonv1connect.NewSchedulerServiceClient(
		c.httpClient(t, w1.ClientTLS(identity.Expect(identity.Scheduler))), c.workers["w2"].url)
	_, err := fake.Heartbeat(t.Context(), connect.NewRequest(&batonv1.HeartbeatRequest{WorkerId: "w1"}))
	if err == nil || !strings.Contains(err.Error(), "want scheduler") {
		t.Errorf("a worker accepted another worker as its scheduler: %v", err)
	}

	// The scheduler dialing worker w3 reaches w1's listener: it refuses
	// w1's certificate, so no call reaches w1.
	w3 := c.creds(t, identity.Principal{Role: identity.RoleWorker, Name: "w3"})
	asW3 := batonv1connect.NewSchedulerServiceClient(c.httpClient(t, w3.ClientTLS(identity.Expect(identity.Scheduler))), c.schedURL)
	w1Addr := strings.TrimPrefix(c.workers["w1"].url, "https://")
	if _, err := asW3.RegisterWorker(t.Context(), connect.NewRequest(&batonv1.RegisterWorkerRequest{Name: "w3", Address: w1Addr, Capacity: 4})); err != nil {
		t.Fatal(err)
	}
	before := c.workerCalls.Load()
	admin := c.client(t, root)
	_, err = admin.StartJob(t.Context(), connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w3", Command: "sh", Path: "hello.sh"}))
	wantCode(t, "StartJob on an impostor", err, connect.CodeUnavailable)
	if n := c.workerCalls.Load() - before; n != 0 {
		t.Errorf("%d calls for w3 reached w1", n)
	}
}

// procedures lists every procedure of a service from its descriptor, so
// that a new RPC without a rule fails the tests below.
func procedures(t *testing.T, service protoreflect.FullName) []protoreflect.MethodDescriptor {
	t.Helper()
	for _, f := range []protoreflect.FileDescriptor{batonv1.File_baton_v1_scheduler_service_proto, batonv1.File_baton_v1_worker_service_proto} {
		if sd := f.Services().ByName(service.Name()); sd != nil && sd.FullName() == service {
			var out []protoreflect.MethodDescriptor
			for i := range sd.Methods().Len() {
				out = append(out, sd.Methods().Get(i))
			}
			return out
		}
	}
	t.Fatalf("service %s not found", service)
	return nil
}

// call makes one call of any procedure with an empty request (every
// request message accepts one on the wire) and returns its error.
func call(t *testing.T, hc connect.HTTPClient, baseURL string, m protoreflect.MethodDescriptor, header http.Header) error {
	t.Helper()
	url := baseURL + "/" + string(m.Parent().FullName()) + "/" + string(m.Name())
	client := connect.NewClient[emptypb.Empty, emptypb.Empty](hc, url, connect.WithGRPC())
	if m.IsStreamingServer() {
		req := connect.NewRequest(&emptypb.Empty{})
		maps(req.Header(), header)
		stream, err := client.CallServerStream(t.Context(), req)
		if err != nil {
			return err
		}
		defer stream.Close()
		for stream.Receive() {
		}
		return stream.Err()
	}
	req := connect.NewRequest(&emptypb.Empty{})
	maps(req.Header(), header)
	_, err := client.CallUnary(t.Context(), req)
	return err
}

func maps(dst, src http.Header) {
	for k, v := range src {
		dst[k] = v
	}
}

// TestEveryProcedureNeedsAnIdentityAndARole is RELIABILITY.md C7 A1, A2
// and C6 T5, over every procedure of both services: no identity is
// Unauthenticated, an identity whose role has no rule for the procedure is
// PermissionDenied, and neither reaches a handler.
func TestEveryProcedureNeedsAnIdentityAndARole(t *testing.T) {
	c := startSecureCluster(t, "w1")
	sched := procedures(t, batonv1connect.SchedulerServiceName)
	work := procedures(t, batonv1connect.WorkerServiceName)

	plain := c.httpClient(t, nil)
	for _, m := range sched {
		err := call(t, plain, c.httpURL, m, nil)
		wantCode(t, "A1 no identity: "+string(m.Name()), err, connect.CodeUnauthenticated)
	}
	for _, m := range work {
		err := call(t, plain, c.workers["w1"].plain, m, nil)
		wantCode(t, "A1 no identity, worker: "+string(m.Name()), err, connect.CodeUnauthenticated)
	}

	// Which roles may call what, written out independently of the
	// policies under test.
	memberProcs := []string{"RegisterWorker", "Heartbeat", "DeregisterWorker"}
	// Schedules are their owners' and admins': viewers do not see them.
	scheduleProcs := []string{"CreateSchedule", "UpdateSchedule", "GetSchedule", "ListSchedules", "DeleteSchedule", "PauseSchedule", "ResumeSchedule", "TriggerSchedule"}
	allowed := map[identity.Role][]string{
		identity.RoleAdmin:  append([]string{"StartJob", "RunJob", "StopJob", "QueryJob", "ListJobs", "StreamJobOutput", "ListWorkers", "DrainWorker"}, scheduleProcs...),
		identity.RoleUser:   append([]string{"StartJob", "RunJob", "StopJob", "QueryJob", "ListJobs", "StreamJobOutput", "ListWorkers"}, scheduleProcs...),
		identity.RoleViewer: {"QueryJob", "ListJobs", "StreamJobOutput", "ListWorkers"},
		// CheckWorkerAddress names no worker: the caller's own identity is checked.
		identity.RoleWorker: append(slices.Clone(memberProcs), "CheckWorkerAddress"),
	}
	for _, p := range []identity.Principal{
		root, alice, vic,
		{Role: identity.RoleWorker, Name: "w9"},
		identity.Scheduler,
		{Role: "auditor", Name: "eve"}, // A2: a role with no binding
	} {
		crt, key := c.issue(t, p, identity.IssueOptions{})
		hc := c.httpClient(t, c.clientTLS(t, crt, key))
		for _, m := range sched {
			name := string(m.Name())
			if p.Role == identity.RoleWorker && slices.Contains(memberProcs, name) {
				continue // a worker acting as itself: TestWorkerActsOnlyAsItself
			}
			err := call(t, hc, c.schedURL, m, nil)
			if slices.Contains(allowed[p.Role], name) {
				// Admitted: the empty request fails validation, after
				// authorization, before the handler.
				if code := connect.CodeOf(err); code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied {
					t.Errorf("%s calling %s: %v, want it admitted", p, name, err)
				}
				continue
			}
			wantCode(t, p.String()+" calling "+name, err, connect.CodePermissionDenied)
			if n := c.handledBy(p, "/"+string(m.Parent().FullName())+"/"+name); n != 0 {
				t.Errorf("%s calling %s: refused, yet %d calls reached the handler", p, name, n)
			}
		}
		// A4: only the scheduler may call a worker.
		if p.Role == identity.RoleScheduler {
			continue
		}
		for _, m := range work {
			err := call(t, hc, c.workers["w1"].url, m, nil)
			wantCode(t, p.String()+" calling the worker's "+string(m.Name()), err, connect.CodePermissionDenied)
			if n := c.handledBy(p, "/"+string(m.Parent().FullName())+"/"+string(m.Name())); n != 0 {
				t.Errorf("%s calling the worker's %s: refused, yet %d calls reached the handler", p, m.Name(), n)
			}
		}
	}
}

// TestWorkerActsOnlyAsItself is RELIABILITY.md C1 M6: a worker's identity
// comes from its certificate, not from the request.
func TestWorkerActsOnlyAsItself(t *testing.T) {
	c := startSecureCluster(t, "w1", "w2")
	w1 := c.creds(t, identity.Principal{Role: identity.RoleWorker, Name: "w1"})
	asW1 := batonv1connect.NewSchedulerServiceClient(c.httpClient(t, w1.ClientTLS(identity.Expect(identity.Scheduler))), c.schedURL)
	_, err := asW1.Heartbeat(t.Context(), connect.NewRequest(&batonv1.HeartbeatRequest{WorkerId: "w2"}))
	wantCode(t, "heartbeat as w2", err, connect.CodePermissionDenied)
	_, err = asW1.RegisterWorker(t.Context(), connect.NewRequest(&batonv1.RegisterWorkerRequest{Name: "w2", Address: "127.0.0.1:1", Capacity: 1}))
	wantCode(t, "register as w2", err, connect.CodePermissionDenied)
	_, err = asW1.DeregisterWorker(t.Context(), connect.NewRequest(&batonv1.DeregisterWorkerRequest{WorkerId: "w2"}))
	wantCode(t, "deregister w2", err, connect.CodePermissionDenied)

	admin := c.client(t, root)
	res, err := admin.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range res.Msg.GetWorkers() {
		if w.GetName() == "w2" && (w.GetState() != batonv1.WorkerState_WORKER_STATE_READY || w.GetAddress() == "127.0.0.1:1") {
			t.Errorf("w2's registration changed: %v", w)
		}
	}
}

// TestOwnership is RELIABILITY.md C7 A3 and A4: a user sees only its own
// jobs (others' are NotFound), viewers read all and change nothing, admins
// do everything, and the worker learns for whom the scheduler acts.
func TestOwnership(t *testing.T) {
	c := startSecureCluster(t, "w1")
	asAlice, asBob, asVic, asRoot := c.client(t, alice), c.client(t, bob), c.client(t, vic), c.client(t, root)

	// A user cannot claim to be someone else through the header.
	req := connect.NewRequest(&batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"100"}})
	req.Header().Set(identity.OnBehalfOfHeader, "user/bob")
	res, err := asAlice.StartJob(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetJobId()
	if got := res.Msg.GetJobs()[0].GetOwner(); got != "user/alice" {
		t.Errorf("owner %q, want user/alice", got)
	}
	if got := c.sawOnBehalfOf.Load(); got != "" {
		t.Errorf("the scheduler believed a client's on-behalf-of header: %q", got)
	}
	if got, _ := c.onBehalfOf.Load(id); got != "user/alice" {
		t.Errorf("the worker was told it acts for %q, want user/alice", got)
	}

	_, err = asBob.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: id}))
	wantCode(t, "bob queries alice's job", err, connect.CodeNotFound)
	_, err = asBob.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
	wantCode(t, "bob stops alice's job", err, connect.CodeNotFound)
	stream, err := asBob.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id}))
	if err == nil {
		for stream.Receive() {
			t.Error("bob received alice's output")
		}
		err = stream.Err()
		stream.Close()
	}
	wantCode(t, "bob streams alice's job", err, connect.CodeNotFound)
	for _, owner := range []string{"", "user/alice"} {
		list, err := asBob.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{Owner: owner}))
		if err != nil {
			t.Fatal(err)
		}
		if n := len(list.Msg.GetJobs()); n != 0 {
			t.Errorf("bob lists %d jobs with owner filter %q, want none", n, owner)
		}
	}
	unknown := id[:len(id)-4] + "0000"
	_, err = asBob.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: unknown}))
	wantCode(t, "bob queries an unknown job", err, connect.CodeNotFound)

	// The viewer reads it but cannot stop it.
	if q, err := asVic.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: id})); err != nil || q.Msg.GetStatus().GetState() != batonv1.JobState_JOB_STATE_RUNNING {
		t.Errorf("viewer query: %v %v", q, err)
	}
	_, err = asVic.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
	wantCode(t, "viewer stops", err, connect.CodePermissionDenied)
	if q := queryJob(t, asAlice, id); q.GetStatus().GetState() != batonv1.JobState_JOB_STATE_RUNNING {
		t.Fatalf("alice's job was disturbed: %v", q.GetStatus())
	}

	// The admin sees and stops it; the stop is recorded as the admin's.
	st, err := asRoot.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Msg.GetStatus(); s.GetState() != batonv1.JobState_JOB_STATE_STOPPED || s.GetStoppedBy() != "admin/root" {
		t.Errorf("after the admin's stop: state %v stopped_by %q", s.GetState(), s.GetStoppedBy())
	}
	list, err := asAlice.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{}))
	if err != nil || len(list.Msg.GetJobs()) != 1 {
		t.Errorf("alice lists %v, %v; want her one job", list, err)
	}
}

// TestBearerTokens is RELIABILITY.md C7 A5: on the token listener a valid
// token identifies its holder; a missing, malformed, unknown, expired or
// revoked one is Unauthenticated; tokens never reach the log.
func TestBearerTokens(t *testing.T) {
	c := startSecureCluster(t, "w1")
	hc := c.httpClient(t, nil)
	client := batonv1connect.NewSchedulerServiceClient(hc, c.httpURL)
	with := func(auth string) error {
		req := connect.NewRequest(&batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"})
		if auth != "" {
			req.Header().Set("Authorization", auth)
		}
		res, err := client.StartJob(t.Context(), req)
		if err == nil && res.Msg.GetJobs()[0].GetOwner() != "user/tess" {
			t.Errorf("owner %q, want user/tess", res.Msg.GetJobs()[0].GetOwner())
		}
		return err
	}
	tess := c.tokens["user/tess"]
	if err := with("Bearer " + tess); err != nil {
		t.Fatalf("valid token: %v", err)
	}
	for name, auth := range map[string]string{
		"missing":    "",
		"not bearer": "Basic " + tess,
		"empty":      "Bearer ",
		"unknown":    "Bearer baton_" + strings.Repeat("A", 43),
		"expired":    "Bearer " + c.tokens["expired"],
		"truncated":  "Bearer " + tess[:len(tess)-1],
	} {
		wantCode(t, name+" token", with(auth), connect.CodeUnauthenticated)
	}
	viewerReq := connect.NewRequest(&batonv1.StartJobRequest{Command: "sh", Path: "hello.sh"})
	viewerReq.Header().Set("Authorization", "Bearer "+c.tokens["viewer/vic"])
	_, err := client.StartJob(t.Context(), viewerReq)
	wantCode(t, "viewer token starts a job", err, connect.CodePermissionDenied)

	// Revocation: the token list is replaced (a SIGHUP reload).
	c.httpAuth.SetTokens(must(identity.ParseTokens(nil)))
	wantCode(t, "revoked token", with("Bearer "+tess), connect.CodeUnauthenticated)

	for _, tok := range c.tokens {
		if strings.Contains(c.schedLog.String(), tok) {
			t.Error("a token appears in the scheduler's log")
		}
		if audit, _ := os.ReadFile(c.auditFile); strings.Contains(string(audit), tok) {
			t.Error("a token appears in the audit log")
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestAuditLog is RELIABILITY.md C7 A6: every mutating call and every
// denial is one JSON line with the principal, the procedure, the job or
// worker and the decision.
func TestAuditLog(t *testing.T) {
	c := startSecureCluster(t, "w1")
	asAlice, asVic := c.client(t, alice), c.client(t, vic)
	res := startJob(t, asAlice, &batonv1.StartJobRequest{Command: "sh", Path: "sleep.sh", Args: []string{"100"}})
	id := res.GetJobId()
	_, err := asVic.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id}))
	wantCode(t, "viewer stops", err, connect.CodePermissionDenied)
	if _, err := asAlice.StopJob(t.Context(), connect.NewRequest(&batonv1.StopJobRequest{JobId: id})); err != nil {
		t.Fatal(err)
	}
	_, err = asVic.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{JobId: id}))
	if err != nil {
		t.Fatal(err) // reads are not audited
	}

	type key struct{ principal, procedure, decision, id string }
	want := []key{
		{"worker/w1", batonv1connect.SchedulerServiceRegisterWorkerProcedure, "allow", "w1"},
		{"user/alice", batonv1connect.SchedulerServiceStartJobProcedure, "allow", id},
		{"viewer/vic", batonv1connect.SchedulerServiceStopJobProcedure, "deny", id},
		{"user/alice", batonv1connect.SchedulerServiceStopJobProcedure, "allow", id},
	}
	var got []key
	f, err := os.Open(c.auditFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r identity.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if r.Time.IsZero() {
			t.Errorf("audit line without time: %s", sc.Text())
		}
		if r.Procedure == batonv1connect.SchedulerServiceStartJobProcedure && r.Command != "sh" {
			t.Errorf("StartJob audited without its command: %s", sc.Text())
		}
		got = append(got, key{r.Principal, r.Procedure, r.Decision, r.JobID + r.WorkerID})
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit log:\n got %v\nwant %v", got, want)
	}
}

// TestCertificateReload is RELIABILITY.md C6 T7 in small: after a reload
// (what SIGHUP does) new connections get the new certificate, open ones
// keep working, and a failed reload keeps the old credentials.
func TestCertificateReload(t *testing.T) {
	c := startSecureCluster(t)
	admin := c.client(t, root)
	list := func(client batonv1connect.SchedulerServiceClient) error {
		_, err := client.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
		return err
	}
	if err := list(admin); err != nil {
		t.Fatal(err)
	}
	crt, key := c.issue(t, root, identity.IssueOptions{})
	serial := func() string {
		t.Helper()
		conn, err := tls.Dial("tcp", strings.TrimPrefix(c.schedURL, "https://"), c.clientTLS(t, crt, key))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	c.issue(t, identity.Scheduler, identity.IssueOptions{}) // new files in place
	if err := c.schedCreds.Reload(); err != nil {
		t.Fatal(err)
	}
	if after := serial(); after == before {
		t.Error("a new connection still gets the old certificate")
	}
	if err := list(admin); err != nil {
		t.Errorf("a client across the reload: %v", err)
	}

	crtFile := filepath.Join(c.dir, identity.FileBase(identity.Scheduler)+".crt")
	if err := os.WriteFile(crtFile, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.schedCreds.Reload(); err == nil {
		t.Error("reloading a broken certificate succeeded")
	}
	if err := list(c.client(t, root)); err != nil {
		t.Errorf("a new client after a failed reload: %v", err)
	}
}
