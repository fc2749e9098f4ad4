package clientcli

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	"github.com/baton-run/baton/services/identity"
)

// checkDir is a directory holding configs and the certificates of one or
// two clusters, made in the test.
type checkDir struct {
	t   *testing.T
	dir string
	cas map[string]*identity.Authority
}

func newCheckDir(t *testing.T) *checkDir {
	t.Helper()
	d := &checkDir{t: t, dir: t.TempDir(), cas: map[string]*identity.Authority{}}
	if err := os.MkdirAll(filepath.Join(d.dir, "scripts"), 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// ca returns the CA of cluster, writing certs-<cluster>/ca.crt the first time.
func (d *checkDir) ca(cluster string) *identity.Authority {
	d.t.Helper()
	if ca, ok := d.cas[cluster]; ok {
		return ca
	}
	ca, err := identity.NewAuthority(cluster)
	if err != nil {
		d.t.Fatal(err)
	}
	key, err := ca.KeyPEM()
	if err != nil {
		d.t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(d.dir, "certs-"+cluster), 0o700); err != nil {
		d.t.Fatal(err)
	}
	if _, _, err := identity.WriteKeyPair(filepath.Join(d.dir, "certs-"+cluster), "ca", ca.CertPEM(), key); err != nil {
		d.t.Fatal(err)
	}
	d.cas[cluster] = ca
	return ca
}

// issue writes p's certificate from cluster's CA as certs-<cluster>/<base>
// and returns the paths relative to the directory, as a config gives them.
func (d *checkDir) issue(cluster string, p identity.Principal, base string, opts identity.IssueOptions) (crt, key string) {
	d.t.Helper()
	crtPEM, keyPEM, err := d.ca(cluster).Issue(p, opts)
	if err != nil {
		d.t.Fatal(err)
	}
	if _, _, err := identity.WriteKeyPair(filepath.Join(d.dir, "certs-"+cluster), base, crtPEM, keyPEM); err != nil {
		d.t.Fatal(err)
	}
	return "certs-" + cluster + "/" + base + ".crt", "certs-" + cluster + "/" + base + ".key"
}

// write writes a config file and returns its path.
func (d *checkDir) write(name, body string) string {
	d.t.Helper()
	path := filepath.Join(d.dir, name)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		d.t.Fatal(err)
	}
	return path
}

// check runs the checks on a config file, without the process's BATON_
// variables.
func (d *checkDir) check(path string, kind checkKind) *checkReport {
	d.t.Helper()
	return checkConfig(d.t.Context(), checkOptions{file: path, kind: kind, timeout: 10 * time.Second, environ: []string{}})
}

// String is the report as `baton check` prints it.
func (r *checkReport) String() string {
	var b strings.Builder
	for _, f := range r.findings {
		fmt.Fprintln(&b, f)
	}
	return b.String()
}

// finding returns the first finding of status for key.
func (r *checkReport) finding(status, key string) (finding, bool) {
	for _, f := range r.findings {
		if f.status == status && f.key == key {
			return f, true
		}
	}
	return finding{}, false
}

func workerTOML(ca, crt, key, name, advertise, scheduler string) string {
	return fmt.Sprintf(`[grpc_server]
addr = "127.0.0.1:7071"
use_tls = true
ca_file = %q
crt_file = %q
key_file = %q

[scheduler]
addr = %q

[worker]
name = %q
advertise_addr = %q
scripts_dir = "scripts"
`, ca, crt, key, scheduler, name, advertise)
}

// TestCheckWorkerFiles: what a worker's config and certificate can get
// wrong, each found on its own line naming the key to change, before any
// call (the worker runs alone here).
func TestCheckWorkerFiles(t *testing.T) {
	t.Parallel()
	w1 := identity.Principal{Role: identity.RoleWorker, Name: "w1"}
	good := identity.IssueOptions{Hosts: []string{"10.0.0.2", "w1.example.net"}}
	for _, tc := range []struct {
		name string
		// setup returns the config's body.
		setup func(d *checkDir) string
		// failKey is the key of the one failure wanted; empty wants none.
		failKey string
		failHas string
	}{
		{
			name: "all good",
			setup: func(d *checkDir) string {
				crt, key := d.issue("prod", w1, "worker-w1", good)
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", "")
			},
		},
		{
			name: "a DNS name covered",
			setup: func(d *checkDir) string {
				crt, key := d.issue("prod", w1, "worker-w1", good)
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "w1.example.net:7071", "")
			},
		},
		{
			name: "key readable by others",
			setup: func(d *checkDir) string {
				crt, key := d.issue("prod", w1, "worker-w1", good)
				if err := os.Chmod(filepath.Join(d.dir, key), 0o644); err != nil {
					t.Fatal(err)
				}
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", "")
			},
			failKey: "grpc_server.key_file",
			failHas: "mode 0644: make it 0600 (chmod 600 ",
		},
		{
			name: "key missing",
			setup: func(d *checkDir) string {
				crt, _ := d.issue("prod", w1, "worker-w1", good)
				return workerTOML("certs-prod/ca.crt", crt, "certs-prod/nothing.key", "w1", "10.0.0.2:7071", "")
			},
			failKey: "grpc_server.key_file",
			failHas: "certs-prod/nothing.key does not exist",
		},
		{
			name: "key of another certificate",
			setup: func(d *checkDir) string {
				crt, _ := d.issue("prod", w1, "worker-w1", good)
				_, key := d.issue("prod", w1, "worker-w1-again", good)
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", "")
			},
			failKey: "grpc_server.key_file",
			failHas: "does not pair with certs-prod/worker-w1.crt",
		},
		{
			name: "expired",
			setup: func(d *checkDir) string {
				opts := good
				opts.NotBefore, opts.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
				crt, key := d.issue("prod", w1, "worker-w1", opts)
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", "")
			},
			failKey: "grpc_server.crt_file",
			failHas: "expired on " + time.Now().Add(-24*time.Hour).UTC().Format("2006-01-02"),
		},
		{
			name: "another worker's name",
			setup: func(d *checkDir) string {
				crt, key := d.issue("prod", w1, "worker-w1", good)
				return workerTOML("certs-prod/ca.crt", crt, key, "w2", "10.0.0.2:7071", "")
			},
			failKey: "worker.name",
			failHas: `"w2", but the certificate certs-prod/worker-w1.crt is worker/w1: set worker.name = "w1"`,
		},
		{
			name: "the scheduler's certificate",
			setup: func(d *checkDir) string {
				crt, key := d.issue("prod", identity.Scheduler, "scheduler", good)
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", "")
			},
			failKey: "grpc_server.crt_file",
			failHas: "certs-prod/scheduler.crt is scheduler, but this config runs as worker/w1",
		},
		{
			name: "SANs miss the advertised address",
			setup: func(d *checkDir) string {
				crt, key := d.issue("prod", w1, "worker-w1", good)
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.9:7071", "")
			},
			failKey: "grpc_server.crt_file",
			failHas: "does not cover 10.0.0.9 (worker.advertise_addr)",
		},
		{
			name: "signed by another cluster's CA",
			setup: func(d *checkDir) string {
				d.ca("prod")
				crt, key := d.issue("staging", w1, "worker-w1", good)
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", "")
			},
			failKey: "grpc_server.crt_file",
			failHas: `is not signed by the CA in certs-prod/ca.crt (cluster prod); it names cluster "staging"`,
		},
		{
			name: "only a server certificate",
			setup: func(d *checkDir) string {
				opts := good
				opts.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
				crt, key := d.issue("prod", w1, "worker-w1", opts)
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", "")
			},
			failKey: "grpc_server.crt_file",
			failHas: "cannot serve as a TLS client",
		},
		{
			name: "no scripts directory",
			setup: func(d *checkDir) string {
				crt, key := d.issue("prod", w1, "worker-w1", good)
				if err := os.Remove(filepath.Join(d.dir, "scripts")); err != nil {
					t.Fatal(err)
				}
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", "")
			},
			failKey: "worker.scripts_dir",
			failHas: "scripts does not exist",
		},
		{
			name: "an unknown key",
			setup: func(d *checkDir) string {
				crt, key := d.issue("prod", w1, "worker-w1", good)
				return workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", "") + "advertise = \"x\"\n"
			},
			failKey: "config",
			failHas: "unknown key advertise",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := newCheckDir(t)
			r := d.check(d.write("worker.toml", tc.setup(d)), "")
			if tc.failKey == "" {
				if !r.ok() {
					t.Fatalf("want every finding ok:\n%s", r)
				}
				return
			}
			var fails []finding
			for _, f := range r.findings {
				if f.status == "FAIL" {
					fails = append(fails, f)
				}
			}
			if len(fails) != 1 || fails[0].key != tc.failKey || !strings.Contains(fails[0].msg, tc.failHas) {
				t.Fatalf("want one FAIL %s: …%s…; got:\n%s", tc.failKey, tc.failHas, r)
			}
		})
	}
}

// TestCheckReportLines: the lines a user reads, for a worker that holds.
func TestCheckReportLines(t *testing.T) {
	t.Parallel()
	d := newCheckDir(t)
	crt, key := d.issue("prod", identity.Principal{Role: identity.RoleWorker, Name: "w1"}, "worker-w1", identity.IssueOptions{
		Hosts: []string{"10.0.0.2"}, NotAfter: time.Date(2099, 12, 4, 0, 0, 0, 0, time.UTC),
	})
	r := d.check(d.write("worker.toml", workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", "")), "")
	want := []string{
		"ok   config: worker.toml loads as a worker config (it has a [worker] section)",
		"ok   worker.scripts_dir: scripts: a directory",
		"ok   grpc_server.key_file: certs-prod/worker-w1.key: mode 0600",
		"ok   grpc_server.crt_file: certs-prod/worker-w1.crt: worker/w1, valid until 2099-12-04, SANs cover 10.0.0.2",
		"ok   scheduler.addr: empty: the worker runs alone, with no scheduler to reach",
	}
	got := r.String()
	for _, line := range want {
		if !strings.Contains(got, line+"\n") {
			t.Errorf("missing line %q in:\n%s", line, got)
		}
	}
}

// TestCheckSchedulerFiles: a scheduler's certificate must be the
// scheduler's and cover the hosts its listeners are reached at.
func TestCheckSchedulerFiles(t *testing.T) {
	t.Parallel()
	schedTOML := func(crt, key, httpAddr string) string {
		return fmt.Sprintf(`[grpc_server]
addr = "10.0.0.1:7070"
use_tls = true
ca_file = "certs-prod/ca.crt"
crt_file = %[1]q
key_file = %[2]q

[http_server]
addr = %[3]q
crt_file = %[1]q
key_file = %[2]q
`, crt, key, httpAddr)
	}
	for _, tc := range []struct {
		name     string
		p        identity.Principal
		httpAddr string
		failKeys []string
	}{
		{name: "all good", p: identity.Scheduler, httpAddr: "0.0.0.0:7443"},
		{name: "a worker's certificate", p: identity.Principal{Role: identity.RoleWorker, Name: "w1"}, httpAddr: "0.0.0.0:7443", failKeys: []string{"grpc_server.crt_file"}},
		{name: "http_server on a host not covered", p: identity.Scheduler, httpAddr: "10.0.0.7:7443", failKeys: []string{"http_server.crt_file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := newCheckDir(t)
			crt, key := d.issue("prod", tc.p, "sched", identity.IssueOptions{Hosts: []string{"10.0.0.1", "sched.example.net"}})
			r := d.check(d.write("scheduler.toml", schedTOML(crt, key, tc.httpAddr)), "")
			var got []string
			for _, f := range r.findings {
				if f.status == "FAIL" {
					got = append(got, f.key)
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.failKeys, " ") {
				t.Fatalf("failed keys %v, want %v:\n%s", got, tc.failKeys, r)
			}
		})
	}

	// A plain listener that is not on loopback is refused, as at start.
	d := newCheckDir(t)
	r := d.check(d.write("plain.toml", "[grpc_server]\naddr = \"0.0.0.0:7070\"\n"), "")
	if f, ok := r.finding("FAIL", "grpc_server.use_tls"); !ok || !strings.Contains(f.msg, "not a loopback address") {
		t.Errorf("a plain listener on every address:\n%s", r)
	}
}

// TestCheckClientFiles: a client's certificate must be a client role's,
// and nothing is called while a file is wrong.
func TestCheckClientFiles(t *testing.T) {
	t.Parallel()
	d := newCheckDir(t)
	crt, key := d.issue("prod", identity.Principal{Role: identity.RoleWorker, Name: "w1"}, "worker-w1", identity.IssueOptions{})
	r := d.check(d.write("client.toml", fmt.Sprintf("[client]\nscheduler = \"127.0.0.1:1\"\nca_file = \"certs-prod/ca.crt\"\ncert_file = %q\nkey_file = %q\n", crt, key)), "")
	if f, ok := r.finding("FAIL", "client.cert_file"); !ok || !strings.Contains(f.msg, "is worker/w1: a client needs an admin, user or viewer certificate") {
		t.Errorf("a worker's certificate as a client's:\n%s", r)
	}
	if _, ok := r.finding("skip", "client.scheduler"); !ok {
		t.Errorf("the scheduler was called with a certificate already found wrong:\n%s", r)
	}
}

// TestCheckKind: what a file configures is read from its sections, and
// --role overrides it.
func TestCheckKind(t *testing.T) {
	t.Parallel()
	d := newCheckDir(t)
	for _, tc := range []struct {
		name, body string
		want       checkKind
	}{
		{"worker", "[worker]\nname = \"w1\"\n", checkWorker},
		{"client", "[client]\nscheduler = \"http://127.0.0.1:7070\"\n", checkClient},
		{"scheduler", "[scheduler]\ndata_dir = \"data\"\n", checkScheduler},
		{"nothing", "", checkScheduler},
		// The original design's config.toml is a worker's without [worker].
		{"config.toml", "[grpc_server]\naddr = \"127.0.0.1:7071\"\n[scheduler]\naddr = \"127.0.0.1:7070\"\n", checkWorker},
	} {
		got, _, err := inferCheckKind(d.write(tc.name+".toml", tc.body))
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	// --role wins: a worker's file checked as a client's has unknown keys.
	r := d.check(filepath.Join(d.dir, "worker.toml"), checkClient)
	if f, ok := r.finding("FAIL", "config"); !ok || !strings.Contains(f.msg, "unknown key worker") {
		t.Errorf("a worker's file as a client's:\n%s", r)
	}
}

// TestCheckExitStatus: 0 when every finding holds, 1 when one fails, 2
// for a command line it cannot act on.
func TestCheckExitStatus(t *testing.T) {
	t.Parallel()
	d := newCheckDir(t)
	crt, key := d.issue("prod", identity.Principal{Role: identity.RoleWorker, Name: "w1"}, "worker-w1", identity.IssueOptions{Hosts: []string{"10.0.0.2"}})
	good := d.write("good.toml", workerTOML("certs-prod/ca.crt", crt, key, "w1", "10.0.0.2:7071", ""))
	bad := d.write("bad.toml", workerTOML("certs-prod/ca.crt", crt, key, "w2", "10.0.0.2:7071", ""))
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"good", []string{"check", "--config", good}, 0},
		{"bad", []string{"check", "--config", bad}, 1},
		{"missing file", []string{"check", "--config", filepath.Join(d.dir, "none.toml")}, 1},
		{"no config", []string{"check", "--config", ""}, 2},
		{"unknown role", []string{"check", "--config", good, "--role", "keeper"}, 2},
		{"an argument", []string{"check", "--config", good, "extra"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := newRootCommand()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetArgs(tc.args)
			err := root.ExecuteContext(t.Context())
			got := 0
			var exit *cliout.ExitError
			switch {
			case errors.As(err, &exit):
				got = exit.Code
			case errors.As(err, new(*cliout.UsageError)):
				got = 2
			case err != nil:
				t.Fatalf("error %v, want an exit status", err)
			}
			if got != tc.want {
				t.Errorf("exit status %d, want %d; output:\n%s", got, tc.want, out.String())
			}
		})
	}
}
