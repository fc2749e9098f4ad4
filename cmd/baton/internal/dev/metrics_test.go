package dev

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	"github.com/baton-run/baton/services/identity"
)

// getMetrics fetches /metrics from addr, over TLS when addr is "tls:host:port".
func getMetrics(t *testing.T, client *http.Client, addr string) string {
	t.Helper()
	scheme := "http://"
	if strings.HasPrefix(addr, "tls:") {
		scheme, addr = "https://", strings.TrimPrefix(addr, "tls:")
	}
	res, err := client.Get(scheme + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET %s/metrics: %v", addr, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics: %s %v", addr, res.Status, err)
	}
	return string(body)
}

// TestDevServesMetrics runs `baton dev` in this process, starts a job
// through the JSON API and checks that every listener serves its own
// /metrics: the scheduler's two with the job counted, each worker's own.
func TestDevServesMetrics(t *testing.T) {
	t.Parallel()
	addr, httpAddr := e2e.FreeAddr(t), e2e.FreeAddr(t)
	port := e2e.FreePortPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	dataDir := e2e.JobsTempDir(t)
	go func() {
		done <- runDev(ctx, devConfig{
			dataDir: dataDir, scriptsDir: filepath.Join("..", "..", "..", "..", "examples", "scripts"),
			addr: addr, httpAddr: httpAddr, workerPort: port, logLevel: "error",
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("baton dev: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("baton dev did not stop")
		}
	})
	worker1 := "127.0.0.1:" + strconv.Itoa(port)
	e2e.WaitListening(t, httpAddr)
	e2e.WaitListening(t, worker1)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)

	// Both workers registered, then one job that ends at once.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(getMetrics(t, client, httpAddr), `baton_scheduler_workers{state="ready"} 2`) {
		if time.Now().After(deadline) {
			t.Fatal("the scheduler's metrics never showed two READY workers")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var started struct {
		JobID string `json:"jobId"`
	}
	if code := e2e.PostJSON(t, "http://"+httpAddr+"/baton.v1.SchedulerService/StartJob", `{"command":"sh","args":["-c","exit 3"]}`, &started); code != 200 {
		t.Fatalf("StartJob: HTTP %d", code)
	}
	want := []string{
		"baton_scheduler_jobs_started_total 1\n",
		`baton_scheduler_jobs_finished_total{state="failed"} 1` + "\n",
		"baton_scheduler_jobs_running 0\n",
		`baton_scheduler_rpc_duration_seconds_count{code="ok",procedure="/baton.v1.SchedulerService/StartJob"} 1` + "\n",
		"go_goroutines ",
	}
	var body string
	for {
		body = getMetrics(t, client, httpAddr)
		missing := 0
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the scheduler's /metrics lacks some of %q:\n%s", want, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The mutual-TLS listeners (the scheduler's gRPC one, the workers')
	// serve /metrics to a certificate of the cluster.
	certs := filepath.Join(dataDir, "certs")
	pair, err := tls.LoadX509KeyPair(filepath.Join(certs, "admin-dev.crt"), filepath.Join(certs, "admin-dev.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := e2e.LoadCA(filepath.Join(certs, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	tlsClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{pair},
	}}}
	t.Cleanup(tlsClient.CloseIdleConnections)
	// The gRPC listener serves the same registry.
	if grpcSide := getMetrics(t, tlsClient, "tls:"+addr); !strings.Contains(grpcSide, want[1]) {
		t.Errorf("/metrics on the gRPC listener lacks %q", want[1])
	}
	// A user's certificate of the same cluster reads no metrics: they
	// count every owner's jobs and name every worker.
	ca, err := identity.LoadAuthority(filepath.Join(dataDir, devCADir, "ca.crt"), filepath.Join(dataDir, devCADir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	userCrt, userKey, err := ca.Issue(identity.Principal{Role: identity.RoleUser, Name: "alice"}, identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	userPair, err := tls.X509KeyPair(userCrt, userKey)
	if err != nil {
		t.Fatal(err)
	}
	userClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{userPair},
	}}}
	t.Cleanup(userClient.CloseIdleConnections)
	for _, a := range []string{addr, worker1} {
		res, err := userClient.Get("https://" + a + "/metrics")
		if err != nil {
			t.Fatalf("GET %s/metrics as a user: %v", a, err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusForbidden {
			t.Errorf("GET %s/metrics with a user's certificate: %s, want 403", a, res.Status)
		}
	}
	// Each worker has its own registry, without the process's metrics.
	var jobs int
	for _, w := range []string{worker1, "127.0.0.1:" + strconv.Itoa(port+1)} {
		body := getMetrics(t, tlsClient, "tls:"+w)
		if strings.Contains(body, "go_goroutines") {
			t.Errorf("worker %s reports go_goroutines; in baton dev only the scheduler does", w)
		}
		if !strings.Contains(body, `baton_worker_heartbeats_sent_total{result="ok"}`) {
			t.Errorf("worker %s /metrics lacks its heartbeats:\n%s", w, body)
		}
		if strings.Contains(body, "baton_worker_jobs_started_total 1\n") {
			jobs++
		}
	}
	if jobs != 1 {
		t.Errorf("%d workers counted the job as started, want exactly 1", jobs)
	}
}
