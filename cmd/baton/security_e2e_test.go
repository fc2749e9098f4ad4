package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/serving"
)

// These tests run the real binary over mutual TLS: certificates made by
// `baton certs`, a scheduler and two workers as processes, and clients
// holding the certificates of different roles.

// linesScript prints a few lines; the job the user starts runs it.
const linesScript = "#!/bin/bash\nfor i in 1 2 3 4 5; do echo \"line $i\"; done\n"

const wantLines = "line 1\nline 2\nline 3\nline 4\nline 5\n"

// runBaton runs one short-lived baton command and returns its combined
// output; the process gets a minute even on a loaded machine.
func runBaton(t *testing.T, bin, home string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append([]string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// issueCerts runs `baton certs init` and `baton certs issue` for each
// principal ("role" or "role/name") into dir.
func issueCerts(t *testing.T, bin, dir, cluster string, principals ...string) {
	t.Helper()
	if out, err := runBaton(t, bin, dir, "certs", "init", "--dir", dir, "--cluster", cluster); err != nil {
		t.Fatalf("baton certs init: %v\n%s", err, out)
	}
	for _, p := range principals {
		role, name, _ := strings.Cut(p, "/")
		args := []string{"certs", "issue", "--dir", dir, "--role", role}
		if name != "" {
			args = append(args, "--name", name)
		}
		if out, err := runBaton(t, bin, dir, args...); err != nil {
			t.Fatalf("baton certs issue %s: %v\n%s", p, err, out)
		}
	}
}

// clientTLS is what any TLS client would build: the cluster CA as the
// root, and the certificate DIR/base.crt (none when base is empty). Host
// names are checked as usual: the servers' certificates carry 127.0.0.1.
func clientTLS(t *testing.T, dir, base string) *tls.Config {
	t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	conf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	if base != "" {
		cert, err := tls.LoadX509KeyPair(filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key"))
		if err != nil {
			t.Fatal(err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf
}

// secureCluster is a scheduler and two workers over mutual TLS. It reuses
// cluster for spawning and cleaning up the processes.
type secureCluster struct {
	*cluster
	certs     string
	auditFile string
	// workerAudit is each worker's own audit file.
	workerAudit map[string]string
}

// newSecureCluster starts the scheduler and the named workers with the
// certificates in certs, and waits until root (an admin) sees every
// worker READY.
func newSecureCluster(t *testing.T, bin, certs string, workers ...string) *secureCluster {
	t.Helper()
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	c := &cluster{
		t:       t,
		bin:     bin,
		dir:     e2e.JobsTempDir(t),
		marker:  "bzs" + hex.EncodeToString(rnd[:]),
		workers: map[string]*workerInfo{},
	}
	t.Cleanup(c.cleanup)
	sc := &secureCluster{cluster: c, certs: certs, auditFile: filepath.Join(c.dir, "audit", "scheduler.jsonl"), workerAudit: map[string]string{}}
	ca := filepath.Join(certs, "ca.crt")

	c.schedAdr = e2e.FreeAddr(t)
	schedData := filepath.Join(c.dir, "scheduler")
	if err := os.MkdirAll(schedData, 0o755); err != nil {
		t.Fatal(err)
	}
	c.schedCfg = filepath.Join(c.dir, "scheduler.toml")
	// The heartbeat grace is long: a worker marked DOWN on a starved
	// machine would register again, an audit line this test does not make.
	c.writeFile(c.schedCfg, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = true
ca_file = %q
crt_file = %q
key_file = %q

[scheduler]
data_dir = %q
heartbeat_interval = "500ms"
heartbeat_grace = "2m"
failover_grace = "2m"
audit_file = %q

[log]
format = "json"
`, c.schedAdr, ca, filepath.Join(certs, "scheduler.crt"), filepath.Join(certs, "scheduler.key"), schedData, sc.auditFile), 0o600)
	c.startScheduler()

	for _, name := range workers {
		w := &workerInfo{name: name, addr: e2e.FreeAddr(t)}
		base := filepath.Join(c.dir, name)
		scripts := filepath.Join(base, "scripts")
		w.dataDir = filepath.Join(base, "data")
		if err := os.MkdirAll(scripts, 0o755); err != nil {
			t.Fatal(err)
		}
		c.writeFile(filepath.Join(scripts, "lines.sh"), linesScript, 0o755)
		sc.workerAudit[name] = filepath.Join(base, "audit.jsonl")
		w.cfgPath = filepath.Join(base, "worker.toml")
		c.writeFile(w.cfgPath, fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = true
ca_file = %q
crt_file = %q
key_file = %q

[scheduler]
addr = %q

[worker]
name = %q
data_dir = %q
scripts_dir = %q
allowed_commands = ["bash"]
stop_grace = "2s"
shutdown_timeout = "20s"
audit_file = %q

[log]
format = "json"
`, w.addr, ca, filepath.Join(certs, "worker-"+name+".crt"), filepath.Join(certs, "worker-"+name+".key"),
			c.schedAdr, name, w.dataDir, scripts, sc.workerAudit[name]), 0o600)
		c.workers[name] = w
		c.startWorker(name)
	}

	root := sc.client("admin-root")
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := root.ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
		ready := 0
		if err == nil {
			for _, w := range res.Msg.GetWorkers() {
				if w.GetState() == batonv1.WorkerState_WORKER_STATE_READY && slices.Contains(workers, w.GetName()) {
					ready++
				}
			}
		}
		if ready == len(workers) {
			return sc
		}
		if time.Now().After(deadline) {
			t.Fatalf("workers not READY within 60s: last ListWorkers %v, %v", res, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// client is a SchedulerService client holding the certificate base (none
// when empty), speaking gRPC as the CLI does.
func (sc *secureCluster) client(base string) batonv1connect.SchedulerServiceClient {
	return batonv1connect.NewSchedulerServiceClient(
		serving.NewHTTPClient(clientTLS(sc.t, sc.certs, base)),
		serving.BaseURL(sc.schedAdr, true),
		connect.WithGRPC(),
	)
}

// workerClient calls worker name directly with the certificate base.
func (sc *secureCluster) workerClient(name, base string) batonv1connect.WorkerServiceClient {
	return batonv1connect.NewWorkerServiceClient(
		serving.NewHTTPClient(clientTLS(sc.t, sc.certs, base)),
		serving.BaseURL(sc.workers[name].addr, true),
		connect.WithGRPC(),
	)
}

// stopWorker shuts worker name down with SIGTERM and waits for it: it
// deregisters on the way out.
func (sc *secureCluster) stopWorker(name string) {
	sc.t.Helper()
	p := sc.workers[name].proc
	if err := p.signal(syscall.SIGTERM); err != nil {
		sc.t.Fatalf("%s: %v", name, err)
	}
	exited, err := p.wait(60 * time.Second)
	if !exited {
		sc.t.Fatalf("%s did not exit within 60s of SIGTERM", name)
	}
	if err != nil {
		sc.t.Errorf("%s exit after SIGTERM: %v", name, err)
	}
}

// wantCode fails the test unless err is a Connect error with code.
func wantCode(t *testing.T, what string, err error, code connect.Code) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded, want %v", what, code)
		return
	}
	if got := connect.CodeOf(err); got != code {
		t.Errorf("%s: %v (code %v), want %v", what, err, got, code)
	}
}

// auditEntry is what the test compares of an audit record: who called
// what, the decision and the outcome, and on what.
type auditEntry struct {
	principal, onBehalfOf, procedure, decision, code, jobID, workerID string
}

func (e auditEntry) String() string {
	s := fmt.Sprintf("%s %s %s/%s", e.principal, strings.TrimPrefix(e.procedure, "/baton.v1."), e.decision, e.code)
	if e.onBehalfOf != "" {
		s += " for=" + e.onBehalfOf
	}
	if e.jobID != "" {
		s += " job=" + e.jobID
	}
	if e.workerID != "" {
		s += " worker=" + e.workerID
	}
	return s
}

// readAudit parses an audit file: one JSON object per line, each with a
// time, and a reason for every denial.
func readAudit(t *testing.T, path string) []auditEntry {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("audit file: %v", err)
	}
	if info, err := os.Stat(path); err == nil && info.Mode().Perm() != 0o600 {
		t.Errorf("audit file %s has mode %#o, want 0600", path, info.Mode().Perm())
	}
	var out []auditEntry
	for i, line := range bytes.Split(bytes.TrimSuffix(raw, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		var r identity.AuditRecord
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("audit line %d is not one record: %v\n%s", i+1, err, line)
		}
		if r.Time.IsZero() {
			t.Errorf("audit line %d has no time: %s", i+1, line)
		}
		if r.Decision == "deny" && r.Reason == "" {
			t.Errorf("audit line %d is a denial without a reason: %s", i+1, line)
		}
		out = append(out, auditEntry{
			principal: r.Principal, onBehalfOf: r.OnBehalfOf, procedure: r.Procedure, decision: r.Decision,
			code: r.Code, jobID: r.JobID, workerID: r.WorkerID,
		})
	}
	return out
}

// sameEntries compares two lists of audit entries as multisets: calls
// made by different processes (two workers registering) have no order.
func sameEntries(t *testing.T, what string, got, want []auditEntry) {
	t.Helper()
	key := func(e auditEntry) string { return e.String() }
	g := make([]string, len(got))
	for i, e := range got {
		g[i] = key(e)
	}
	w := make([]string, len(want))
	for i, e := range want {
		w[i] = key(e)
	}
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Errorf("%s holds\n  %s\nwant\n  %s", what, strings.Join(g, "\n  "), strings.Join(w, "\n  "))
	}
}

const (
	procRegister   = batonv1connect.SchedulerServiceRegisterWorkerProcedure
	procDeregister = batonv1connect.SchedulerServiceDeregisterWorkerProcedure
	procStart      = batonv1connect.SchedulerServiceStartJobProcedure
	procStop       = batonv1connect.SchedulerServiceStopJobProcedure
	procDrain      = batonv1connect.SchedulerServiceDrainWorkerProcedure
)

// TestSecurityCluster: certificates from `baton certs`, a scheduler and
// two workers over mutual TLS; a user runs and follows a job that another
// user cannot see; members and clients cannot take each other's roles;
// callers without a cluster certificate are refused at the handshake; and
// the audit file holds exactly the mutating calls and denials of the run.
func TestSecurityCluster(t *testing.T) {
	bin := e2e.SharedBaton(t)
	certs := filepath.Join(t.TempDir(), "certs")
	issueCerts(t, bin, certs, "e2e", "scheduler", "worker/w1", "worker/w2", "user/alice", "user/bob", "admin/root")
	for _, base := range []string{"ca", "scheduler", "worker-w1", "worker-w2", "user-alice", "user-bob", "admin-root"} {
		for ext, mode := range map[string]os.FileMode{".key": 0o600, ".crt": 0o644} {
			info, err := os.Stat(filepath.Join(certs, base+ext))
			if err != nil {
				t.Fatalf("baton certs did not write %s%s: %v", base, ext, err)
			}
			if info.Mode().Perm() != mode {
				t.Errorf("%s%s has mode %#o, want %#o", base, ext, info.Mode().Perm(), mode)
			}
		}
	}

	sc := newSecureCluster(t, bin, certs, "w1", "w2")
	ctx := t.Context()
	alice, bob, root := sc.client("user-alice"), sc.client("user-bob"), sc.client("admin-root")
	var audit []auditEntry // the scheduler's audit lines this test's calls must leave
	for _, w := range []string{"w1", "w2"} {
		audit = append(audit, auditEntry{principal: "worker/" + w, procedure: procRegister, decision: "allow", code: "ok", workerID: w})
	}

	// Alice runs a job on w1 and follows its output through the scheduler.
	started, err := alice.StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{WorkerId: "w1", Command: "bash", Path: "lines.sh"}))
	if err != nil {
		t.Fatalf("alice StartJob: %v", err)
	}
	job := started.Msg.GetJobId()
	if job == "" || len(started.Msg.GetJobs()) != 1 || started.Msg.GetJobs()[0].GetOwner() != "user/alice" {
		t.Fatalf("alice StartJob answered %v, want one job owned by alice", started.Msg)
	}
	audit = append(audit, auditEntry{principal: "user/alice", procedure: procStart, decision: "allow", code: "ok", jobID: job, workerID: "w1"})

	streamCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	stream, err := alice.StreamJobOutput(streamCtx, connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: job, Follow: true}))
	if err != nil {
		cancel()
		t.Fatalf("alice StreamJobOutput: %v", err)
	}
	var out strings.Builder
	var final *batonv1.JobStatus
	for stream.Receive() {
		if c := stream.Msg().GetChunk(); c != nil {
			out.Write(c.GetData())
		}
		if s := stream.Msg().GetStatus(); s != nil {
			final = s
		}
	}
	if err := stream.Err(); err != nil {
		t.Errorf("alice's stream ended with %v", err)
	}
	_ = stream.Close()
	cancel()
	if out.String() != wantLines {
		t.Errorf("alice streamed %q, want %q", out.String(), wantLines)
	}
	if final.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || final.GetExitCode() != 0 {
		t.Errorf("alice's stream ended with status %v, want SUCCEEDED", final)
	}
	if q, err := alice.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: job})); err != nil {
		t.Errorf("alice QueryJob: %v", err)
	} else if q.Msg.GetStatus().GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || q.Msg.GetStatus().GetOwner() != "user/alice" {
		t.Errorf("alice QueryJob: %v", q.Msg.GetStatus())
	}
	// Stopping a job that has ended is allowed to its owner, and changes
	// nothing; it is audited like every stop.
	if res, err := alice.StopJob(ctx, connect.NewRequest(&batonv1.StopJobRequest{JobId: job})); err != nil {
		t.Errorf("alice StopJob of her ended job: %v", err)
	} else if res.Msg.GetStatus().GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("alice StopJob of her ended job: %v", res.Msg.GetStatus())
	}
	audit = append(audit, auditEntry{principal: "user/alice", procedure: procStop, decision: "allow", code: "ok", jobID: job})

	// Bob cannot tell alice's job from one that does not exist.
	_, err = bob.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: job}))
	wantCode(t, "bob QueryJob of alice's job", err, connect.CodeNotFound)
	_, err = bob.StopJob(ctx, connect.NewRequest(&batonv1.StopJobRequest{JobId: job}))
	wantCode(t, "bob StopJob of alice's job", err, connect.CodeNotFound)
	audit = append(audit, auditEntry{principal: "user/bob", procedure: procStop, decision: "allow", code: "not_found", jobID: job})
	bobStream, err := bob.StreamJobOutput(ctx, connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: job, Follow: true}))
	if err != nil {
		wantCode(t, "bob StreamJobOutput of alice's job", err, connect.CodeNotFound)
	} else {
		var leaked int
		for bobStream.Receive() {
			leaked++
		}
		if leaked > 0 {
			t.Errorf("bob received %d messages of alice's job", leaked)
		}
		wantCode(t, "bob StreamJobOutput of alice's job", bobStream.Err(), connect.CodeNotFound)
		_ = bobStream.Close()
	}
	for _, owner := range []string{"", "user/alice"} {
		list, err := bob.ListJobs(ctx, connect.NewRequest(&batonv1.ListJobsRequest{Owner: owner}))
		if err != nil {
			t.Errorf("bob ListJobs(owner=%q): %v", owner, err)
			continue
		}
		for _, j := range list.Msg.GetJobs() {
			if j.GetJobId() == job || j.GetOwner() != "user/bob" {
				t.Errorf("bob ListJobs(owner=%q) lists %v", owner, j)
			}
		}
	}
	// An admin sees every job.
	if q, err := root.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: job})); err != nil {
		t.Errorf("root QueryJob of alice's job: %v", err)
	} else if q.Msg.GetStatus().GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || q.Msg.GetStatus().GetOwner() != "user/alice" {
		t.Errorf("root QueryJob of alice's job: %v", q.Msg.GetStatus())
	}
	if list, err := root.ListJobs(ctx, connect.NewRequest(&batonv1.ListJobsRequest{})); err != nil {
		t.Errorf("root ListJobs: %v", err)
	} else if !slices.ContainsFunc(list.Msg.GetJobs(), func(j *batonv1.JobStatus) bool { return j.GetJobId() == job }) {
		t.Errorf("root ListJobs does not list alice's job: %v", list.Msg.GetJobs())
	}

	// Members are not clients, and clients are not members.
	w1 := sc.client("worker-w1")
	_, err = w1.StartJob(ctx, connect.NewRequest(&batonv1.StartJobRequest{Command: "bash", Path: "lines.sh"}))
	wantCode(t, "worker w1 StartJob", err, connect.CodePermissionDenied)
	audit = append(audit, auditEntry{principal: "worker/w1", procedure: procStart, decision: "deny", code: "permission_denied"})
	_, err = w1.RegisterWorker(ctx, connect.NewRequest(&batonv1.RegisterWorkerRequest{Name: "w2", Address: "127.0.0.1:1"}))
	wantCode(t, "worker w1 RegisterWorker as w2", err, connect.CodePermissionDenied)
	audit = append(audit, auditEntry{principal: "worker/w1", procedure: procRegister, decision: "deny", code: "permission_denied", workerID: "w2"})
	_, err = alice.RegisterWorker(ctx, connect.NewRequest(&batonv1.RegisterWorkerRequest{Name: "alice-box", Address: "127.0.0.1:1"}))
	wantCode(t, "alice RegisterWorker", err, connect.CodePermissionDenied)
	audit = append(audit, auditEntry{principal: "user/alice", procedure: procRegister, decision: "deny", code: "permission_denied", workerID: "alice-box"})
	_, err = alice.DrainWorker(ctx, connect.NewRequest(&batonv1.DrainWorkerRequest{WorkerId: "w1"}))
	wantCode(t, "alice DrainWorker", err, connect.CodePermissionDenied)
	audit = append(audit, auditEntry{principal: "user/alice", procedure: procDrain, decision: "deny", code: "permission_denied", workerID: "w1"})

	// Only the scheduler calls a worker: alice's certificate gets through
	// the handshake (it is the cluster's) but not past the worker's policy.
	_, err = sc.workerClient("w1", "user-alice").StartJob(ctx, connect.NewRequest(&batonv1.WorkerServiceStartJobRequest{Command: "bash", Path: "lines.sh"}))
	wantCode(t, "alice StartJob on worker w1", err, connect.CodePermissionDenied)
	_, err = sc.workerClient("w2", "admin-root").ListJobs(ctx, connect.NewRequest(&batonv1.WorkerServiceListJobsRequest{}))
	wantCode(t, "root ListJobs on worker w2", err, connect.CodePermissionDenied)

	// No certificate, or one from another cluster's CA: refused at the
	// handshake, before any request is read.
	_, err = sc.client("").ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{}))
	if err == nil {
		t.Error("ListWorkers without a client certificate succeeded")
	} else {
		t.Logf("without a certificate: %v", err)
	}
	// The refusal is the handshake's: TLS 1.3 ends it with the
	// certificate_required alert (RFC 8446, 4.4.2.4).
	if conn, err := tls.Dial("tcp", sc.schedAdr, clientTLS(t, certs, "")); err != nil {
		// The client's side of the handshake usually completes first; if
		// it fails, it must be for the same reason.
		if !strings.Contains(err.Error(), "certificate required") {
			t.Errorf("TLS handshake without a client certificate: %v, want the certificate_required alert", err)
		}
	} else {
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err := conn.Read(make([]byte, 1))
		conn.Close()
		if err == nil || !strings.Contains(err.Error(), "certificate required") {
			t.Errorf("TLS without a client certificate: read %v, want the certificate_required alert", err)
		}
	}
	other := filepath.Join(t.TempDir(), "other")
	issueCerts(t, bin, other, "e2e", "admin/root")
	foreign := batonv1connect.NewSchedulerServiceClient(
		serving.NewHTTPClient(&tls.Config{
			RootCAs:      clientTLS(t, certs, "").RootCAs,
			Certificates: clientTLS(t, other, "admin-root").Certificates,
			MinVersion:   tls.VersionTLS13,
		}),
		serving.BaseURL(sc.schedAdr, true), connect.WithGRPC())
	if _, err := foreign.ListWorkers(ctx, connect.NewRequest(&batonv1.ListWorkersRequest{})); err == nil {
		t.Error("ListWorkers with an admin certificate of another CA succeeded")
	}
	sc.curlRefused()

	// Graceful shutdowns deregister, one after the other so that nothing
	// else is in flight.
	for _, w := range []string{"w1", "w2"} {
		sc.stopWorker(w)
		audit = append(audit, auditEntry{principal: "worker/" + w, procedure: procDeregister, decision: "allow", code: "ok", workerID: w})
	}

	sameEntries(t, "the scheduler's audit file", readAudit(t, sc.auditFile), audit)
	sameEntries(t, "w1's audit file", readAudit(t, sc.workerAudit["w1"]), []auditEntry{
		{principal: "scheduler", onBehalfOf: "user/alice", procedure: batonv1connect.WorkerServiceStartJobProcedure, decision: "allow", code: "ok", jobID: job},
		{principal: "user/alice", procedure: batonv1connect.WorkerServiceStartJobProcedure, decision: "deny", code: "permission_denied"},
	})
	sameEntries(t, "w2's audit file", readAudit(t, sc.workerAudit["w2"]), []auditEntry{
		{principal: "admin/root", procedure: batonv1connect.WorkerServiceListJobsProcedure, decision: "deny", code: "permission_denied"},
	})
}

// curlRefused runs the real curl against the scheduler: with root's
// certificate it gets the roster, without one the TLS handshake fails and
// no response comes back.
func (sc *secureCluster) curlRefused() {
	t := sc.t
	t.Helper()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Errorf("curl is needed to check that a client without a certificate is refused: %v", err)
		return
	}
	url := "https://" + sc.schedAdr + "/baton.v1.SchedulerService/ListWorkers"
	run := func(extra ...string) (stdout, stderr string, err error) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		args := append([]string{"-sS", "--max-time", "30", "--cacert", filepath.Join(sc.certs, "ca.crt"),
			"-H", "Content-Type: application/json", "-d", "{}"}, extra...)
		cmd := exec.CommandContext(ctx, curl, append(args, url)...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		return o.String(), e.String(), err
	}
	stdout, stderr, err := run("--cert", filepath.Join(sc.certs, "admin-root.crt"), "--key", filepath.Join(sc.certs, "admin-root.key"))
	if err != nil || !strings.Contains(stdout, `"w1"`) {
		t.Errorf("curl with root's certificate: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	stdout, stderr, err = run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Errorf("curl without a certificate: %v, want a non-zero exit\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	if stdout != "" {
		t.Errorf("curl without a certificate got a response: %s", stdout)
	}
	t.Logf("curl without a certificate: %v: %s", err, strings.TrimSpace(stderr))
}

// TestSecurityStartupRefusals: a worker whose certificate names another
// worker, and a daemon whose private key others can read, refuse to start
// and say why.
func TestSecurityStartupRefusals(t *testing.T) {
	bin := e2e.SharedBaton(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	issueCerts(t, bin, certs, "e2e", "scheduler", "worker/w1")
	ca := filepath.Join(certs, "ca.crt")

	workerCfg := func(name, crt, key string) string {
		path := filepath.Join(dir, name+"-"+filepath.Base(key)+".toml")
		body := fmt.Sprintf(`[grpc_server]
addr = %q
use_tls = true
ca_file = %q
crt_file = %q
key_file = %q

[worker]
name = %q
data_dir = %q
scripts_dir = %q
`, e2e.FreeAddr(t), ca, crt, key, name, filepath.Join(dir, name+"-data"), dir)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	// A key that others can read: a copy of a good one, mode 0644 whatever
	// the umask.
	looseKey := filepath.Join(certs, "loose.key")
	raw, err := os.ReadFile(filepath.Join(certs, "scheduler.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(looseKey, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(looseKey, 0o644); err != nil {
		t.Fatal(err)
	}
	schedCfg := filepath.Join(dir, "scheduler.toml")
	if err := os.WriteFile(schedCfg, fmt.Appendf(nil, `[grpc_server]
addr = %q
use_tls = true
ca_file = %q
crt_file = %q
key_file = %q

[scheduler]
data_dir = %q
`, e2e.FreeAddr(t), ca, filepath.Join(certs, "scheduler.crt"), looseKey, filepath.Join(dir, "sched-data")), 0o600); err != nil {
		t.Fatal(err)
	}
	w1Key := filepath.Join(certs, "worker-w1.key")
	looseW1 := filepath.Join(certs, "worker-w1-loose.key")
	if raw, err := os.ReadFile(w1Key); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(looseW1, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(looseW1, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{
			name: "worker named unlike its certificate",
			args: []string{"worker", "--config", workerCfg("w3", filepath.Join(certs, "worker-w1.crt"), w1Key)},
			want: []string{"worker-w1.crt", "worker/w1", "worker/w3"},
		},
		{
			name: "scheduler key readable by others",
			args: []string{"scheduler", "--config", schedCfg},
			want: []string{"loose.key", "readable by others", "0644"},
		},
		{
			name: "worker key readable by others",
			args: []string{"worker", "--config", workerCfg("w1", filepath.Join(certs, "worker-w1.crt"), looseW1)},
			want: []string{"worker-w1-loose.key", "readable by others", "0644"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runBaton(t, bin, dir, tc.args...)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("baton %s: %v, want a non-zero exit\n%s", strings.Join(tc.args, " "), err, out)
			}
			t.Logf("refused: %s", strings.TrimSpace(out))
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("the error does not say %q:\n%s", w, out)
				}
			}
		})
	}
}
