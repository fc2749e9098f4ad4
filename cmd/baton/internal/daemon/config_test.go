package daemon

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/pflag"

	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
)

func TestWorkerConfigLayers(t *testing.T) {
	t.Parallel()
	file := e2e.WriteConfig(t, `
[grpc_server]
addr = "127.0.0.1:9001"
use_tls = false

[scheduler]
addr = "127.0.0.1:9000"

[worker]
name = "from-file"
stop_grace = "3s"
output_limit = "1MiB"
labels = { zone = "a", gpu = "no" }
`)
	flags := pflag.NewFlagSet("worker", pflag.ContinueOnError)
	flags.String("name", "", "")
	if err := flags.Parse([]string{"--name", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultWorkerConfig()
	_, err := config.Load(&cfg, config.Source{
		File:     file,
		Flags:    flags,
		FlagKeys: config.FlagKeys(WorkerFlags),
		Environ:  []string{"BATON_WORKER_CAPACITY=7", "BATON_WORKER_RETENTION=1h", "BATON_JOB_ID=ignored", "HOME=/x"},
	})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"addr from file", cfg.GRPCServer.Addr, "127.0.0.1:9001"},
		{"scheduler from file", cfg.Scheduler.Addr, "127.0.0.1:9000"},
		{"name: flag beats file", cfg.Worker.Name, "from-flag"},
		{"capacity from env", cfg.Worker.Capacity, 7},
		{"retention from env", time.Duration(cfg.Worker.Retention), time.Hour},
		{"stop_grace from file", time.Duration(cfg.Worker.StopGrace), 3 * time.Second},
		{"output_limit with a unit", int64(cfg.Worker.OutputLimit), int64(1 << 20)},
		{"labels", cfg.Worker.Labels["zone"] + cfg.Worker.Labels["gpu"], "ano"},
		{"default kept", cfg.Worker.AllowedCommands[0], "sh"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestConfigRejectsUnknownKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		file    string
		environ []string
		want    string
	}{
		{"unknown key in a section", "[worker]\nnmae = \"x\"\n", nil, "nmae"},
		{"unknown section", "[workr]\nname = \"x\"\n", nil, "workr"},
		{"unknown env variable", "", []string{"BATON_WORKER_NMAE=x"}, "BATON_WORKER_NMAE"},
		{"bad duration", "[worker]\nstop_grace = \"ten\"\n", nil, "duration"},
		{"bad size", "[worker]\noutput_limit = \"lots\"\n", nil, "size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := config.Source{Environ: tt.environ}
			if tt.environ == nil {
				src.Environ = []string{}
			}
			if tt.file != "" {
				src.File = e2e.WriteConfig(t, tt.file)
			}
			cfg := DefaultWorkerConfig()
			_, err := config.Load(&cfg, src)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one naming %q", err, tt.want)
			}
		})
	}
}

func TestOriginalConfigLoads(t *testing.T) {
	t.Parallel()
	cfg := DefaultWorkerConfig()
	_, err := config.Load(&cfg, config.Source{File: "../../../../examples/config/config.toml", Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GRPCServer.Addr != "127.0.0.1:7071" || cfg.Scheduler.Addr != "127.0.0.1:7070" || cfg.GRPCServer.UseTLS {
		t.Errorf("original config read as %+v", cfg.GRPCServer)
	}
	cfg = DefaultWorkerConfig()
	if _, err := config.Load(&cfg, config.Source{File: "../../../../examples/config/worker.toml", Environ: []string{}}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// Its paths are relative to the file: they name the repository's
	// example scripts whatever the working directory.
	if fi, err := os.Stat(filepath.Join(cfg.Worker.ScriptsDir, "count.sh")); err != nil || fi.IsDir() {
		t.Errorf("examples/config/worker.toml's scripts_dir %q has no count.sh: %v", cfg.Worker.ScriptsDir, err)
	}
}

// TestMutualTLSExamplesLoad keeps the mTLS example configs valid.
func TestMutualTLSExamplesLoad(t *testing.T) {
	t.Parallel()
	w := DefaultWorkerConfig()
	if _, err := config.Load(&w, config.Source{File: "../../../../examples/config/mtls/worker.toml", Environ: []string{}}); err != nil {
		t.Fatal(err)
	}
	if err := w.Validate(); err != nil || !w.GRPCServer.UseTLS || w.GRPCServer.CAFile == "" {
		t.Errorf("worker: %v, %+v", err, w.GRPCServer)
	}
	s := DefaultSchedulerConfig()
	if _, err := config.Load(&s, config.Source{File: "../../../../examples/config/mtls/scheduler.toml", Environ: []string{}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil || s.Scheduler.AuditFile == "" || s.HTTPServer.CrtFile == "" {
		t.Errorf("scheduler: %v, %+v", err, s)
	}
	c := config.DefaultClientConfig()
	if _, err := config.Load(&c, config.Source{File: "../../../../examples/config/mtls/client.toml", Environ: []string{}}); err != nil {
		t.Fatal(err)
	}
	dir, err := filepath.Abs("../../../../examples/config/mtls")
	if err != nil {
		t.Fatal(err)
	}
	if c.Client.CAFile != filepath.Join(dir, "certs", "ca.crt") || !strings.HasPrefix(c.Client.Scheduler, "https://") {
		t.Errorf("client: %+v; want https and paths beside the file", c.Client)
	}
	// The examples are for several machines: no address is loopback. The
	// worker listens on every address and, as the README advises, leaves
	// advertise_addr unset: it advertises the address it reaches the
	// scheduler from.
	for what, addr := range map[string]string{
		"worker grpc_server.addr":    w.GRPCServer.Addr,
		"worker scheduler.addr":      w.Scheduler.Addr,
		"scheduler grpc_server.addr": s.GRPCServer.Addr,
		"scheduler http_server.addr": s.HTTPServer.Addr,
		"client.scheduler":           strings.TrimPrefix(c.Client.Scheduler, "https://"),
	} {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("%s %q: %v", what, addr, err)
			continue
		}
		if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
			t.Errorf("%s is %q, a loopback address", what, addr)
		}
	}
	if host, _, _ := net.SplitHostPort(w.GRPCServer.Addr); host != "0.0.0.0" || w.Worker.AdvertiseAddr != "" {
		t.Errorf("worker listens on %q advertising %q; want 0.0.0.0 with worker.advertise_addr unset", w.GRPCServer.Addr, w.Worker.AdvertiseAddr)
	}
}

func TestByteSizeRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		text string
		want int64
		// canonical is what MarshalText writes for want: the largest exact
		// binary unit.
		canonical string
	}{
		{"0", 0, "0"},
		{"1000", 1000, "1000"},
		{"1024", 1 << 10, "1KiB"},
		{"10KiB", 10 << 10, "10KiB"},
		{"64MiB", 64 << 20, "64MiB"},
		{"1GiB", 1 << 30, "1GiB"},
		{"2TiB", 2 << 40, "2TiB"},
		{"1536MiB", 1536 << 20, "1536MiB"},
		{"2048MiB", 2 << 30, "2GiB"},
		{"10MB", 10_000_000, "10000000"},
		{"1KB", 1000, "1000"},
		{"3GB", 3_000_000_000, "3000000000"},
		{"1TB", 1_000_000_000_000, "976562500KiB"},
		{"512B", 512, "512"},
		{" 64 MiB ", 64 << 20, "64MiB"},
	}
	for _, tc := range tests {
		t.Run(tc.text, func(t *testing.T) {
			var s config.ByteSize
			if err := s.UnmarshalText([]byte(tc.text)); err != nil {
				t.Fatalf("UnmarshalText(%q): %v", tc.text, err)
			}
			if int64(s) != tc.want {
				t.Errorf("UnmarshalText(%q) = %d bytes, want %d", tc.text, int64(s), tc.want)
			}
			out, err := s.MarshalText()
			if err != nil || string(out) != tc.canonical {
				t.Errorf("MarshalText(%d) = %q, %v, want %q", int64(s), out, err, tc.canonical)
			}
			var again config.ByteSize
			if err := again.UnmarshalText(out); err != nil || again != s {
				t.Errorf("UnmarshalText(%q) = %d, %v, want %d back", out, int64(again), err, int64(s))
			}
		})
	}
	for _, bad := range []string{"", "-1", "1.5MiB", "MiB", "12XB", "64 M", "0x10", "4611686018427387905", "4294967297GiB"} {
		var s config.ByteSize
		if err := s.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("UnmarshalText(%q) = %d, want an error", bad, int64(s))
		}
	}
}

func TestSchedulerQueueLimitConfig(t *testing.T) {
	for _, tc := range []struct {
		limit int
		ok    bool
	}{{100000, true}, {1, true}, {-1, true}, {0, false}, {-2, false}} {
		cfg := DefaultSchedulerConfig()
		cfg.Scheduler.MaxQueuedPerOwner = tc.limit
		err := cfg.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("max_queued_per_owner = %d: validate() = %v, want ok %v", tc.limit, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "max_queued_per_owner") {
			t.Errorf("max_queued_per_owner = %d: error %q does not name the key", tc.limit, err)
		}
	}
}

func TestSchedulerUserPriorityConfig(t *testing.T) {
	for _, tc := range []struct {
		p  int
		ok bool
	}{{50, true}, {0, true}, {100, true}, {-1, false}, {101, false}} {
		cfg := DefaultSchedulerConfig()
		cfg.Scheduler.MaxUserPriority = tc.p
		if err := cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("max_user_priority = %d: validate() = %v, want ok %v", tc.p, err, tc.ok)
		}
	}
	if got := userPriority(0); got >= 0 {
		t.Errorf("userPriority(0) = %d: a configured 0 must not read as the default", got)
	}
}

func TestConfigPathsFollowTheFile(t *testing.T) {
	t.Parallel()
	file := e2e.WriteConfig(t, `
[grpc_server]
addr = "127.0.0.1:9001"
use_tls = true
crt_file = "certs/worker-w1.crt"
key_file = "/etc/baton/worker-w1.key"

[scheduler]
addr = "127.0.0.1:9000"

[worker]
name = "w1"
data_dir = "data"
`)
	dir := filepath.Dir(file)
	cfg := DefaultWorkerConfig()
	_, err := config.Load(&cfg, config.Source{File: file, Environ: []string{"BATON_WORKER_SCRIPTS_DIR=scripts", "HOME=/x"}})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct{ name, got, want string }{
		{"a relative path in the file follows the file", cfg.GRPCServer.CrtFile, filepath.Join(dir, "certs", "worker-w1.crt")},
		{"an absolute path stays", cfg.GRPCServer.KeyFile, "/etc/baton/worker-w1.key"},
		{"data_dir follows the file", cfg.Worker.DataDir, filepath.Join(dir, "data")},
		{"a path from the environment follows the working directory", cfg.Worker.ScriptsDir, "scripts"},
		{"a name is not a path", cfg.Worker.Name, "w1"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}
}

func TestWorkerTakesTheClientsAddressForms(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr   string
		tls    bool
		want   string
		errKey bool
	}{
		{"sched:7070", true, "sched:7070", false},
		{"https://sched:7070", true, "sched:7070", false},
		{"https://sched:7070/", true, "sched:7070", false},
		{"http://127.0.0.1:7070", false, "127.0.0.1:7070", false},
		{"https://sched:7070", false, "", true},
		{"http://sched:7070", true, "", true},
		{"ftp://sched:7070", true, "", true},
		{"https://sched", true, "", true},
		{"https://sched:7070/api", true, "", true},
	} {
		got, err := SchedulerHostPort(tc.addr, tc.tls)
		if tc.errKey {
			if err == nil || !strings.Contains(err.Error(), "scheduler.addr") {
				t.Errorf("%q (tls %v): %q, %v; want an error naming scheduler.addr", tc.addr, tc.tls, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q (tls %v): %q, %v; want %q", tc.addr, tc.tls, got, err, tc.want)
		}
	}
}

// TestWorkerTakesAListOfReplicas: scheduler.addr lists a replicated
// scheduler's replicas; an error names the key and the member at fault.
func TestWorkerTakesAListOfReplicas(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, addr string
		tls        bool
		want       []string
		err        string
	}{
		{"empty runs alone", "", false, nil, ""},
		{"one address", "sched:7070", true, []string{"sched:7070"}, ""},
		{"host:ports", "a:7070, b:7070,c:7070", true, []string{"a:7070", "b:7070", "c:7070"}, ""},
		{"URLs and host:ports", "https://a:7070,b:7070", true, []string{"a:7070", "b:7070"}, ""},
		{"an empty member", "a:7070,,b:7070", true, nil, "address 2 of 3 is empty"},
		{"a trailing comma", "a:7070,", true, nil, "address 2 of 2 is empty"},
		{"mixed schemes", "https://a:7070,http://b:7070", true, nil, "same scheme"},
		{"a member without a port", "a:7070,b", true, nil, `"b"`},
		{"a member against use_tls", "a:7070,http://b:7070", true, nil, "plain http"},
	} {
		got, err := SchedulerHostPorts(tc.addr, tc.tls)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), "scheduler.addr") || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %q, %v; want an error naming scheduler.addr and saying %q", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestWorkerErrorsNameTheSchedulerAddress(t *testing.T) {
	t.Parallel()
	n := namedAddrErrors{addr: "10.0.0.1:7071"}
	err := n.wrap(connect.NewError(connect.CodeUnauthenticated, errors.New("no credentials: this listener takes bearer tokens only")))
	if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "scheduler.addr 10.0.0.1:7071: no credentials") {
		t.Errorf("wrapped: %v (%v)", err, connect.CodeOf(err))
	}
	if n.wrap(nil) != nil {
		t.Error("a nil error was wrapped")
	}
}
