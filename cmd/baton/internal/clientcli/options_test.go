package clientcli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/baton-run/baton/cmd/baton/internal/cliout"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/daemon"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

func TestScriptPathRule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		arg  string
		want bool
	}{
		{"count.sh", true},
		{"tools/train.py", true},
		{"./count.sh", true},
		{"100", false},
		{"hi", false},
		{"1.5", false},
		{"train.py", true},
		{"tools/train", true},
		{"-c", false},
		{"--", false},
		{"-", false},
		{"", false},
		{"/etc/passwd", false},
		{"../count.sh", false},
		{"a/../../b", false},
		{"a/..", false},
		{"..x/y", true},
	}
	for _, tt := range tests {
		if got := scriptPathArg(tt.arg); got != tt.want {
			t.Errorf("scriptPathArg(%q) = %v, want %v", tt.arg, got, tt.want)
		}
	}
}

// parseRunFlags parses run's flags as cobra would.
func parseRunFlags(t *testing.T, args []string) (*runOptions, []string) {
	t.Helper()
	var ro runOptions
	cmd := &cobra.Command{Use: "run"}
	bindClientFlags(cmd)
	bindRunFlags(cmd, &ro)
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return &ro, cmd.Flags().Args()
}

func TestStartRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want *batonv1.StartJobRequest
		// usage is set when the command line must be refused.
		usage string
	}{
		{
			name: "script path from the first argument",
			args: []string{"--", "bash", "count.sh", "a", "b"},
			want: &batonv1.StartJobRequest{Command: "bash", Path: "count.sh", Args: []string{"a", "b"}},
		},
		{
			name: "no dash-dash: flags stop at COMMAND",
			args: []string{"--worker", "w1", "bash", "-c", "echo hi", "--all"},
			want: &batonv1.StartJobRequest{WorkerId: "w1", Command: "bash", Args: []string{"-c", "echo hi", "--all"}},
		},
		{
			name: "--no-path keeps the argument plain",
			args: []string{"--no-path", "--", "python3", "data.csv"},
			want: &batonv1.StartJobRequest{Command: "python3", Args: []string{"data.csv"}},
		},
		{
			name: "an absolute path is an argument",
			args: []string{"--", "cat", "/etc/hostname"},
			want: &batonv1.StartJobRequest{Command: "cat", Args: []string{"/etc/hostname"}},
		},
		{
			name: "command alone",
			args: []string{"--", "true"},
			want: &batonv1.StartJobRequest{Command: "true"},
		},
		{
			name: "selectors, env, fan-out, timeout",
			args: []string{"--selector", "zone=a", "--selector", "gpu=", "--env", "K=v=w", "--all", "--timeout", "90s", "--", "sh", "-c", "env"},
			want: &batonv1.StartJobRequest{
				Command: "sh", Args: []string{"-c", "env"}, All: true,
				Selector: map[string]string{"zone": "a", "gpu": ""}, Env: map[string]string{"K": "v=w"},
			},
		},
		{name: "pair without =", args: []string{"--env", "K", "--", "sh"}, usage: `--env "K"`},
		{name: "pair without key", args: []string{"--selector", "=a", "--", "sh"}, usage: "--selector"},
		{name: "--all with --worker", args: []string{"--all", "--worker", "w1", "--", "sh"}, usage: "--all and --worker"},
		{name: "negative timeout", args: []string{"--timeout", "-1s", "--", "sh"}, usage: "--timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ro, args := parseRunFlags(t, tt.args)
			got, err := ro.startRequest(args)
			if tt.usage != "" {
				var ue *cliout.UsageError
				if !errors.As(err, &ue) || !strings.Contains(ue.Error(), tt.usage) {
					t.Fatalf("error = %v, want a usage error naming %q", err, tt.usage)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.name == "selectors, env, fan-out, timeout" {
				if got.GetTimeout().AsDuration() != 90*time.Second {
					t.Errorf("timeout = %v", got.GetTimeout())
				}
				got.Timeout = nil
			}
			if !proto.Equal(got, tt.want) {
				t.Errorf("request = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestJobExitCode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		st   *batonv1.JobStatus
		want int
	}{
		{"success", &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_SUCCEEDED, ExitCode: proto.Int32(0)}, 0},
		{"exit 3", &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_FAILED, ExitCode: proto.Int32(3)}, 3},
		{"SIGKILL", &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_FAILED, Signal: "SIGKILL"}, 137},
		{"stopped by SIGTERM", &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_STOPPED, Signal: "SIGTERM"}, 143},
		{"timed out, exited 0 on SIGTERM", &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_TIMED_OUT, ExitCode: proto.Int32(0)}, 0},
		{"lost: neither", &batonv1.JobStatus{State: batonv1.JobState_JOB_STATE_LOST}, 1},
	}
	for _, tt := range tests {
		if got := jobExitCode(tt.st); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestParseJobState(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"running", "RUNNING", "JOB_STATE_RUNNING", " Running "} {
		if got, err := parseJobState(s); err != nil || got != batonv1.JobState_JOB_STATE_RUNNING {
			t.Errorf("%q: %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "unspecified", "runing"} {
		var ue *cliout.UsageError
		if _, err := parseJobState(s); !errors.As(err, &ue) {
			t.Errorf("%q: error %v, want a usage error", s, err)
		}
	}
}

// TestSchedulerURL: client.scheduler is one address of the client's
// Config, and the CLI's checks of it say which flag or key to change.
func TestSchedulerURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		c       config.ClientSection
		want    string
		wantErr string
	}{
		{"default", config.DefaultClientConfig().Client, "http://127.0.0.1:7070", ""},
		{"host:port is h2c", config.ClientSection{Scheduler: "sched:7070"}, "http://sched:7070", ""},
		{"host:port with a CA is TLS", config.ClientSection{Scheduler: "sched:7070", CAFile: "ca.pem"}, "https://sched:7070", ""},
		{"https URL", config.ClientSection{Scheduler: "https://sched.example:443/"}, "https://sched.example:443", ""},
		{"http URL with a certificate", config.ClientSection{Scheduler: "http://sched:7070", CertFile: "c.pem"}, "", "use https://"},
		{"other scheme", config.ClientSection{Scheduler: "ftp://sched:21"}, "", "http (h2c) or https"},
		{"no port", config.ClientSection{Scheduler: "sched"}, "", "host:port"},
		{"empty", config.ClientSection{}, "", "give --scheduler URL"},
	}
	for _, tt := range tests {
		err := checkSchedulerAddr(tt.c)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error %v, want one saying %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		got, uerr := packageConfig(tt.c).BaseURLs()
		if err != nil || uerr != nil || len(got) != 1 || got[0] != tt.want {
			t.Errorf("%s: %q, %v, %v; want %q", tt.name, got, err, uerr, tt.want)
		}
	}
}

// clientOptionsFor parses client flags and fixes the environment.
func clientOptionsFor(t *testing.T, environ []string, args ...string) *clientOptions {
	t.Helper()
	cmd := &cobra.Command{Use: "jobs"}
	co := bindClientFlags(cmd)
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	co.environ = environ
	return co
}

func TestClientConfigLayers(t *testing.T) {
	t.Parallel()
	file := e2e.WriteConfig(t, "[client]\nscheduler = \"https://from-file:7070\"\nca_file = \"/etc/baton/ca.pem\"\ntoken = \"file-token\"\n")
	co := clientOptionsFor(t,
		[]string{"BATON_CLIENT_TOKEN=env-token", "BATON_CLIENT_CA_FILE=/env/ca.pem", "BATON_WORKER_NAME=for-the-worker", "BATON_JOB_ID=x"},
		"--config", file, "--ca", "/flag/ca.pem")
	cfg, err := co.config()
	if err != nil {
		t.Fatal(err)
	}
	want := config.ClientSection{Scheduler: "https://from-file:7070", CAFile: "/flag/ca.pem", Token: "env-token"}
	if cfg.Client != want {
		t.Errorf("config = %+v, want %+v", cfg.Client, want)
	}

	tests := []struct {
		name    string
		file    string
		environ []string
		want    string
	}{
		{"unknown key", "[client]\nschedular = \"x:1\"\n", nil, "schedular"},
		{"a daemon's section", "[worker]\nname = \"x\"\n", nil, "worker"},
		{"unknown variable", "", []string{"BATON_CLIENT_TOKN=x"}, "BATON_CLIENT_TOKN"},
	}
	for _, tt := range tests {
		args := []string{"--config", e2e.WriteConfig(t, tt.file+"\n")}
		_, err := clientOptionsFor(t, append([]string{}, tt.environ...), args...).config()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one naming %q", tt.name, err, tt.want)
		}
	}
}

// TestDaemonIgnoresClientEnv: a shell exporting BATON_CLIENT_* for the CLI
// can still start a worker, whose own typos are still caught.
func TestDaemonIgnoresClientEnv(t *testing.T) {
	t.Parallel()
	cfg := daemon.DefaultWorkerConfig()
	if _, err := config.Load(&cfg, config.Source{Environ: []string{"BATON_CLIENT_SCHEDULER=https://x:1", "BATON_WORKER_CAPACITY=3"}, Others: daemon.Configs()}); err != nil {
		t.Fatal(err)
	}
	if cfg.Worker.Capacity != 3 {
		t.Errorf("capacity = %d", cfg.Worker.Capacity)
	}
	if _, err := config.Load(&cfg, config.Source{Environ: []string{"BATON_CLIENT_SCHEDULR=x"}, Others: daemon.Configs()}); err == nil || !strings.Contains(err.Error(), "BATON_CLIENT_SCHEDULR") {
		t.Errorf("error = %v, want one naming BATON_CLIENT_SCHEDULR", err)
	}
}

func TestWriteClientConfig(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "dev", "client.toml")
	want := config.ClientSection{Scheduler: "https://127.0.0.1:7070", CAFile: "/d/ca.pem", CertFile: "/d/admin.pem", KeyFile: "/d/admin-key.pem"}
	if err := config.WriteClientConfig(path, want); err != nil {
		t.Fatal(err)
	}
	// Written twice: the second run of baton dev replaces the file.
	if err := config.WriteClientConfig(path, want); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("mode %#o, want 0600", info.Mode().Perm())
	}
	cfg, err := clientOptionsFor(t, []string{}, "--config", path).config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Client != want {
		t.Errorf("read back %+v, want %+v", cfg.Client, want)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only client.toml", len(entries))
	}
}

// TestConfigPrintRoundTrips prints each command's effective config and
// loads the output back as that command's config file.
func TestConfigPrintRoundTrips(t *testing.T) {
	t.Parallel()
	printed := func(t *testing.T, args ...string) string {
		t.Helper()
		root := newRootCommand()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(args)
		if err := root.ExecuteContext(t.Context()); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out.String()
	}
	t.Run("worker", func(t *testing.T) {
		t.Parallel()
		file := e2e.WriteConfig(t, "[worker]\nname = \"from-file\"\ncapacity = 5\nstop_grace = \"3s\"\n")
		out := printed(t, "config", "print", "worker", "--config", file, "--name", "from-flag")
		cfg := daemon.DefaultWorkerConfig()
		if _, err := config.Load(&cfg, config.Source{File: e2e.WriteConfig(t, out), Environ: []string{}}); err != nil {
			t.Fatalf("%v in\n%s", err, out)
		}
		if cfg.Worker.Name != "from-flag" || cfg.Worker.Capacity != 5 || time.Duration(cfg.Worker.StopGrace) != 3*time.Second || cfg.Worker.DataDir == "" {
			t.Errorf("printed config loads as %+v:\n%s", cfg.Worker, out)
		}
	})
	t.Run("scheduler", func(t *testing.T) {
		t.Parallel()
		out := printed(t, "config", "print", "scheduler", "--config", e2e.WriteConfig(t, "[http_server]\naddr = \"127.0.0.1:9\"\n"))
		cfg := daemon.DefaultSchedulerConfig()
		if _, err := config.Load(&cfg, config.Source{File: e2e.WriteConfig(t, out), Environ: []string{}}); err != nil {
			t.Fatalf("%v in\n%s", err, out)
		}
		if cfg.HTTPServer.Addr != "127.0.0.1:9" || cfg.GRPCServer.Addr != "127.0.0.1:7070" {
			t.Errorf("printed config loads as %+v:\n%s", cfg, out)
		}
	})
	t.Run("client hides the token", func(t *testing.T) {
		t.Parallel()
		file := e2e.WriteConfig(t, "[client]\nscheduler = \"sched:7070\"\ntoken = \"s3cret\"\n")
		for _, args := range [][]string{{"config", "print"}, {"config", "print", "client"}} {
			out := printed(t, append(args, "--config", file)...)
			if strings.Contains(out, "s3cret") || !strings.Contains(out, "<redacted>") || !strings.Contains(out, "sched:7070") {
				t.Errorf("%v printed:\n%s", args, out)
			}
		}
	})
}

// tokenRecorder is a scheduler that records the Authorization header of
// each call.
type tokenRecorder struct {
	batonv1connect.UnimplementedSchedulerServiceHandler
	mu   sync.Mutex
	seen []string
}

func (r *tokenRecorder) record(h http.Header) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, h.Get("Authorization"))
}

func (r *tokenRecorder) ListWorkers(_ context.Context, req *connect.Request[batonv1.ListWorkersRequest]) (*connect.Response[batonv1.ListWorkersResponse], error) {
	r.record(req.Header())
	return connect.NewResponse(&batonv1.ListWorkersResponse{}), nil
}

// TestClientUnreachable: a refused connection is one line naming the URL
// and where the CLI took it from.
func TestClientUnreachable(t *testing.T) {
	t.Parallel()
	addr := e2e.FreeAddr(t)
	cl, err := newClient(config.ClientSection{Scheduler: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, err = cl.Scheduler().ListWorkers(t.Context(), connect.NewRequest(&batonv1.ListWorkersRequest{}))
	line := errorLine(explain(err))
	if !strings.HasPrefix(line, "unavailable: cannot reach the scheduler at http://"+addr) || !strings.HasSuffix(line, "(--scheduler, BATON_CLIENT_SCHEDULER or client.scheduler)") || strings.Contains(line, "\n") {
		t.Errorf("error line %q", line)
	}
}

// acceptLog is a listener that records the remote address of every
// connection it accepts.
type acceptLog struct {
	net.Listener
	mu      sync.Mutex
	remotes []string
}

func (l *acceptLog) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.remotes = append(l.remotes, c.RemoteAddr().String())
		l.mu.Unlock()
	}
	return c, err
}

// onlyAfter dials l itself and waits until that connection is accepted;
// connections are accepted in the order they arrive, so the remote
// addresses it returns are those of every connection made before, then
// its own.
func (l *acceptLog) onlyAfter(t *testing.T) (before []string) {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mine := c.LocalAddr().String()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		remotes := slices.Clone(l.remotes)
		l.mu.Unlock()
		if i := slices.Index(remotes, mine); i >= 0 {
			return remotes[:i]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the listener did not accept a connection from %s", mine)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTokenNeverInCleartext: a token is never sent over plain h2c to an
// address that is not loopback: the client refuses before dialing, naming
// what to change, and no connection reaches the listener.
func TestTokenNeverInCleartext(t *testing.T) {
	t.Parallel()
	ip := e2e.NonLoopbackIPv4(t)
	rec := &tokenRecorder{}
	_, handler := batonv1connect.NewSchedulerServiceHandler(rec)
	var requests []string // every request, whatever its path or headers
	var requestsMu sync.Mutex
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requestsMu.Lock()
		requests = append(requests, r.Method+" "+r.URL.Path)
		requestsMu.Unlock()
		handler.ServeHTTP(w, r)
	}))
	tcp, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	l := &acceptLog{Listener: tcp}
	srv.Listener = l
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(l.Addr().String())

	for _, addr := range []string{net.JoinHostPort(ip, port), "http://" + net.JoinHostPort(ip, port)} {
		_, err := newClient(config.ClientSection{Scheduler: addr, Token: "s3cret"})
		if err == nil || !strings.Contains(err.Error(), "client.token") || !strings.Contains(err.Error(), "https://") {
			t.Errorf("token to %s over h2c: %v", addr, err)
		}
	}
	// The CLI as a user runs it: refused, nothing sent.
	file := e2e.WriteConfig(t, fmt.Sprintf("[client]\nscheduler = %q\ntoken = \"s3cret\"\n", net.JoinHostPort(ip, port)))
	root := newRootCommand()
	root.SetOut(io.Discard)
	root.SetArgs([]string{"workers", "--config", file})
	if err := root.ExecuteContext(t.Context()); err == nil || !strings.Contains(err.Error(), "cleartext") {
		t.Errorf("baton workers with a token over h2c to %s: %v", ip, err)
	}
	if before := l.onlyAfter(t); len(before) != 0 {
		t.Errorf("the listener accepted connections from %q; want none", before)
	}
	requestsMu.Lock()
	got := slices.Clone(requests)
	requestsMu.Unlock()
	rec.mu.Lock()
	seen := slices.Clone(rec.seen)
	rec.mu.Unlock()
	if len(got) != 0 || len(seen) != 0 {
		t.Errorf("the listener received requests %q (Authorization %q); want none", got, seen)
	}
	for _, addr := range []string{"127.0.0.1:7070", "localhost:7070", "[::1]:7070", "https://" + net.JoinHostPort(ip, port)} {
		cl, err := newClient(config.ClientSection{Scheduler: addr, Token: "s3cret"})
		if err != nil {
			t.Errorf("token to %s: %v", addr, err)
			continue
		}
		cl.Close()
	}
}
