// Package e2e holds what the tests of several baton packages share to run
// baton processes and servers: building the binary (with coverage when the
// tests have it), free ports, waiting for listeners. Only tests import it.
package e2e

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Package is the baton command's import path.
const Package = "github.com/baton-run/baton/cmd/baton"

// BuildCommand returns the go build command that writes the baton
// binary to bin. Under go test -cover the binary is built with coverage too,
// so that what the end-to-end tests run through its processes counts in
// `go tool covdata`; BATONTEST_COVERPKG (not BATON_: the config loader
// rejects unknown BATON_ variables) names the packages, as -coverpkg does.
func BuildCommand(bin string) *exec.Cmd {
	args := []string{"build", "-o", bin}
	if CoverDir() != "" {
		args = append(args, "-cover", "-covermode="+testing.CoverMode())
		if pkgs := os.Getenv("BATONTEST_COVERPKG"); pkgs != "" {
			args = append(args, "-coverpkg="+pkgs)
		}
	}
	return exec.Command("go", append(args, Package)...)
}

// CoverDir returns the absolute directory this test binary writes its
// coverage data to (-test.gocoverdir), or "" when it runs without coverage.
func CoverDir() string {
	f := flag.Lookup("test.gocoverdir")
	if testing.CoverMode() == "" || f == nil || f.Value.String() == "" {
		return ""
	}
	dir, err := filepath.Abs(f.Value.String())
	if err != nil {
		return ""
	}
	return dir
}

// CoverEnv returns the GOCOVERDIR entry a baton process needs when the
// binary has coverage: without it the process writes no data and warns
// on stderr, which CLI tests read.
func CoverEnv() []string {
	if dir := CoverDir(); dir != "" {
		return []string{"GOCOVERDIR=" + dir}
	}
	return nil
}

// FreeAddr returns a loopback address nothing listens on, for a server the
// test starts later.
func FreeAddr(t *testing.T) string {
	t.Helper()
	return "127.0.0.1:" + strconv.Itoa(freePorts(t, 1))
}

// FreePortPair returns a port p such that p and p+1 are free on loopback,
// for the two workers of `baton dev`.
func FreePortPair(t *testing.T) int {
	t.Helper()
	return freePorts(t, 2)
}

// nextPort walks the ports freePorts hands out. They lie below the
// kernel's ephemeral range (ip_local_port_range, 32768 and up here): a
// port taken from that range and freed again may become the source port of
// any outgoing connection before the server binds it, which fails the bind
// with "address already in use". Each port is handed out once per process.
var nextPort atomic.Int32

// freePorts returns the first of n consecutive loopback ports that are free
// now.
func freePorts(t *testing.T, n int) int {
	t.Helper()
	nextPort.CompareAndSwap(0, int32(20000+os.Getpid()%4000))
	for range 500 {
		p := int(nextPort.Add(int32(n))) - n
		if p+n >= 32768 {
			nextPort.Store(20000)
			continue
		}
		free := true
		for i := range n {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+i))
			if err != nil {
				free = false
				break
			}
			_ = ln.Close()
		}
		if free {
			return p
		}
	}
	t.Fatalf("no %d free consecutive ports below the ephemeral range", n)
	return 0
}

// PostJSON makes a Connect unary call with a JSON body, as curl would.
func PostJSON(t *testing.T, url string, body string, out any) int {
	t.Helper()
	res, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s: %v in %s", url, err, raw)
		}
	}
	return res.StatusCode
}

// WaitListening waits up to 30s until something listens on addr.
func WaitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s", addr)
}

// JobsTempDir is t.TempDir made reachable by other uids. A worker running
// as root runs each job under a uid of its own, which must pass through
// the directories above its home and the scripts; the testing package
// makes the parent of t.TempDir 0700.
func JobsTempDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ProcessWithArg0 reports whether a live process has argv[0] == name.
func ProcessWithArg0(name string) bool {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if arg0, _, _ := bytes.Cut(b, []byte{0}); string(arg0) == name {
			return true
		}
	}
	return false
}

// LockedBuffer is a bytes.Buffer that a process's output copier and the
// test may use at once.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// WriteConfig writes body to a config.toml of its own and returns its path.
func WriteConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// NonLoopbackIPv4 returns an IPv4 address of this machine that is not
// loopback.
func NonLoopbackIPv4(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	t.Fatal("this machine has no IPv4 address but loopback")
	return ""
}

// LoadCA reads a PEM file of trusted CA certificates.
func LoadCA(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

var (
	sharedBuild    sync.Once
	sharedBin      string
	sharedBuildErr error
	sharedBuildDir string
)

// SharedBaton builds the binary once for every test of the test binary;
// the package's TestMain removes it with RemoveSharedBaton.
func SharedBaton(t *testing.T) string {
	t.Helper()
	sharedBuild.Do(func() {
		dir, err := os.MkdirTemp("", "baton-cluster-bin-")
		if err != nil {
			sharedBuildErr = err
			return
		}
		sharedBuildDir = dir
		bin := filepath.Join(dir, "baton")
		out, err := BuildCommand(bin).CombinedOutput()
		if err != nil {
			sharedBuildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		sharedBin = bin
	})
	if sharedBuildErr != nil {
		t.Fatal(sharedBuildErr)
	}
	return sharedBin
}

// RemoveSharedBaton removes the binary SharedBaton built, if it did.
func RemoveSharedBaton() {
	if sharedBuildDir != "" {
		_ = os.RemoveAll(sharedBuildDir)
	}
}

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// CheckGolden compares got with testdata/<name>.golden; with -update it
// rewrites the file instead.
func CheckGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestTableGolden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s:\n--- got ---\n%s--- want ---\n%s", name, path, got, want)
	}
}

// ExitCode is the exit status of a command's Run or Wait error.
func ExitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatal(err)
	return -1
}
