package dev

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	batoncerts "github.com/baton-run/baton/cmd/baton/internal/certs"
	"github.com/baton-run/baton/cmd/baton/internal/config"
	"github.com/baton-run/baton/cmd/baton/internal/e2e"
	"github.com/baton-run/baton/services/identity"
)

// devPrincipals are the identities runDev asks certificates for.
var devPrincipals = []identity.Principal{
	identity.Scheduler, devAdmin,
	{Role: identity.RoleWorker, Name: "worker-1"},
	{Role: identity.RoleWorker, Name: "worker-2"},
}

// oldDevLayout lays dataDir out as baton dev did before the CA key moved:
// the CA, its key and every pair in certs/, through the same code.
func oldDevLayout(t *testing.T, dataDir string) {
	t.Helper()
	if _, _, err := batoncerts.Ensure(filepath.Join(dataDir, "certs"), "dev", devPrincipals...); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "certs", "ca.key")); err != nil {
		t.Fatalf("the old layout has no certs/ca.key: %v", err)
	}
}

// keyFilesOutside lists the files under dataDir, outside the CA's
// directory, that hold the CA's private key.
func keyFilesOutside(t *testing.T, dataDir string, caKey []byte) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if filepath.Dir(path) == filepath.Join(dataDir, devCADir) {
			return nil
		}
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, bytes.TrimSpace(caKey)) {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// checkDevLayout checks where ensureDevCerts put things: the CA key alone
// in a 0700 directory, the clients' directory with only the CA
// certificate and the client pair, every certificate signed by the CA.
func checkDevLayout(t *testing.T, dataDir string, files map[identity.Principal][2]string) {
	t.Helper()
	caDir := filepath.Join(dataDir, devCADir)
	keyFile := filepath.Join(caDir, "ca.key")
	for path, want := range map[string]os.FileMode{caDir: 0o700, keyFile: 0o600} {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s has mode %#o, want %#o", path, info.Mode().Perm(), want)
		}
	}
	caKey, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if leaks := keyFilesOutside(t, dataDir, caKey); len(leaks) > 0 {
		t.Errorf("the CA key is also in %q", leaks)
	}
	entries, err := os.ReadDir(filepath.Join(dataDir, devClientDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"admin-dev.crt", "admin-dev.key", "ca.crt"}; !slices.Equal(names, want) {
		t.Errorf("the clients' directory holds %q, want %q", names, want)
	}
	ca, err := identity.LoadAuthority(filepath.Join(caDir, "ca.crt"), keyFile)
	if err != nil {
		t.Fatal(err)
	}
	clientCA, err := os.ReadFile(filepath.Join(dataDir, devClientDir, "ca.crt"))
	if err != nil || !bytes.Equal(clientCA, ca.CertPEM()) {
		t.Errorf("the clients' ca.crt is not the CA's certificate (%v)", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for p, f := range files {
		raw, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(raw)
		if block == nil {
			t.Fatalf("%s holds no PEM", f[0])
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s's certificate does not chain to the CA: %v", p, err)
		}
		wantDir := devClientDir
		if isServer(p) {
			wantDir = devServerDir
		}
		if filepath.Dir(f[0]) != filepath.Join(dataDir, wantDir) || filepath.Dir(f[1]) != filepath.Join(dataDir, wantDir) {
			t.Errorf("%s's pair is %q, want it in %s", p, f, wantDir)
		}
	}
}

// TestDevCertsKeepTheCAKeyApart: the directory baton dev tells clients to
// take their files from holds neither the CA key nor a server's key; a
// data directory from before is moved into place keeping its CA and keys;
// a second start changes nothing.
func TestDevCertsKeepTheCAKeyApart(t *testing.T) {
	t.Parallel()
	t.Run("fresh", func(t *testing.T) {
		t.Parallel()
		dataDir := t.TempDir()
		var out bytes.Buffer
		_, files, err := ensureDevCerts(&out, dataDir, devPrincipals...)
		if err != nil {
			t.Fatal(err)
		}
		checkDevLayout(t, dataDir, files)
		if out.Len() != 0 {
			t.Errorf("a fresh start reported %q", out.String())
		}
		caCrt, _ := os.ReadFile(filepath.Join(dataDir, devClientDir, "ca.crt"))
		_, again, err := ensureDevCerts(&out, dataDir, devPrincipals...)
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(files, again) {
			t.Errorf("the second start moved files: %v, then %v", files, again)
		}
		if now, _ := os.ReadFile(filepath.Join(dataDir, devClientDir, "ca.crt")); !bytes.Equal(now, caCrt) {
			t.Error("the second start made a new CA")
		}
	})
	t.Run("old layout", func(t *testing.T) {
		t.Parallel()
		dataDir := t.TempDir()
		oldDevLayout(t, dataDir)
		certs := filepath.Join(dataDir, "certs")
		oldKey, _ := os.ReadFile(filepath.Join(certs, "ca.key"))
		oldCrt, _ := os.ReadFile(filepath.Join(certs, "ca.crt"))
		oldSchedKey, _ := os.ReadFile(filepath.Join(certs, "scheduler.key"))
		var out bytes.Buffer
		caFile, files, err := ensureDevCerts(&out, dataDir, devPrincipals...)
		if err != nil {
			t.Fatal(err)
		}
		checkDevLayout(t, dataDir, files)
		if key, _ := os.ReadFile(filepath.Join(dataDir, devCADir, "ca.key")); !bytes.Equal(key, oldKey) {
			t.Error("the CA key changed in the move")
		}
		if crt, _ := os.ReadFile(caFile); !bytes.Equal(crt, oldCrt) {
			t.Error("the CA certificate changed in the move")
		}
		if key, _ := os.ReadFile(files[identity.Scheduler][1]); !bytes.Equal(key, oldSchedKey) {
			t.Error("the scheduler's key changed in the move")
		}
		if !strings.Contains(out.String(), filepath.Join(dataDir, devCADir, "ca.key")) {
			t.Errorf("the move was not reported: %q", out.String())
		}
	})
	t.Run("interrupted move", func(t *testing.T) {
		t.Parallel()
		dataDir := t.TempDir()
		oldDevLayout(t, dataDir)
		// The key was copied, not yet removed from certs/.
		key, _ := os.ReadFile(filepath.Join(dataDir, "certs", "ca.key"))
		crt, _ := os.ReadFile(filepath.Join(dataDir, "certs", "ca.crt"))
		if err := os.Mkdir(filepath.Join(dataDir, devCADir), 0o700); err != nil {
			t.Fatal(err)
		}
		if _, _, err := identity.WriteKeyPair(filepath.Join(dataDir, devCADir), "ca", crt, key); err != nil {
			t.Fatal(err)
		}
		_, files, err := ensureDevCerts(io.Discard, dataDir, devPrincipals...)
		if err != nil {
			t.Fatal(err)
		}
		checkDevLayout(t, dataDir, files)
	})
	t.Run("two different keys", func(t *testing.T) {
		t.Parallel()
		dataDir := t.TempDir()
		oldDevLayout(t, dataDir)
		if _, err := batoncerts.InitAuthority(filepath.Join(dataDir, devCADir), "dev", false); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ensureDevCerts(io.Discard, dataDir, devPrincipals...); err == nil || !strings.Contains(err.Error(), "different CA keys") {
			t.Errorf("two different CA keys: %v, want an error naming both", err)
		}
		if _, err := os.Stat(filepath.Join(dataDir, "certs", "ca.key")); err != nil {
			t.Errorf("a CA key was removed although the two differ: %v", err)
		}
	})
	t.Run("CA key lost", func(t *testing.T) {
		t.Parallel()
		dataDir := t.TempDir()
		oldDevLayout(t, dataDir)
		if err := os.Remove(filepath.Join(dataDir, "certs", "ca.key")); err != nil {
			t.Fatal(err)
		}
		crt, _ := os.ReadFile(filepath.Join(dataDir, "certs", "ca.crt"))
		if _, _, err := ensureDevCerts(io.Discard, dataDir, devPrincipals...); err == nil || !strings.Contains(err.Error(), "is missing") {
			t.Errorf("a CA certificate without its key: %v, want an error", err)
		}
		if now, _ := os.ReadFile(filepath.Join(dataDir, "certs", "ca.crt")); !bytes.Equal(now, crt) {
			t.Error("a new CA replaced the one whose key was lost")
		}
	})
}

// TestDevMovesTheCAKeyOfAnOlderDataDir starts the real `baton dev` on a
// data directory laid out as before (the CA key among the clients'
// files): it moves the key out, keeps the CA, and the CLI works, both
// through the client.toml dev writes and with the client files a user
// copied from the old directory.
func TestDevMovesTheCAKeyOfAnOlderDataDir(t *testing.T) {
	t.Parallel()
	bin := e2e.SharedBaton(t)
	home := e2e.JobsTempDir(t)
	dataDir := filepath.Join(home, ".local", "state", "baton", "dev")
	oldDevLayout(t, dataDir)
	// As root, jobs run under uids of their own and must pass through the
	// data directory's parents, which the older layout made 0700.
	for d := filepath.Dir(dataDir); d != home; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	certs := filepath.Join(dataDir, "certs")
	oldKey, err := os.ReadFile(filepath.Join(certs, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	// What a user copied for a client elsewhere before the upgrade.
	copied := t.TempDir()
	for _, f := range []string{"ca.crt", "admin-dev.crt", "admin-dev.key"} {
		b, err := os.ReadFile(filepath.Join(certs, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(copied, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	repo, err := filepath.Abs(filepath.Join("..", "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	addr, httpAddr, port := e2e.FreeAddr(t), e2e.FreeAddr(t), e2e.FreePortPair(t)
	env := append([]string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}, e2e.CoverEnv()...)
	baton := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, args...)
		cmd.Env, cmd.Dir = env, repo
		return cmd
	}
	out := &e2e.LockedBuffer{}
	dev := baton("dev", "--addr", addr, "--http-addr", httpAddr, "--worker-port", strconv.Itoa(port))
	dev.Stdout, dev.Stderr = out, out
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- dev.Wait() }()
	t.Cleanup(func() {
		_ = dev.Process.Signal(syscall.SIGINT)
		select {
		case err := <-waited:
			if err != nil {
				t.Errorf("baton dev after Ctrl-C: %v\n%s", err, out.String())
			}
		case <-time.After(60 * time.Second):
			_ = dev.Process.Kill()
			<-waited
			t.Errorf("baton dev did not stop after Ctrl-C\n%s", out.String())
		}
	})
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		b, err := baton("workers", "-o", "json").Output()
		var workers []map[string]any
		if err == nil && json.Unmarshal(b, &workers) == nil && len(workers) == 2 &&
			workers[0]["state"] == "WORKER_STATE_READY" && workers[1]["state"] == "WORKER_STATE_READY" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dev cluster did not get two READY workers: %v %s\n%s", err, b, out.String())
		}
	}

	if _, err := os.Stat(filepath.Join(certs, "ca.key")); !os.IsNotExist(err) {
		t.Errorf("certs/ca.key is still there (%v)", err)
	}
	if key, err := os.ReadFile(filepath.Join(dataDir, devCADir, "ca.key")); err != nil || !bytes.Equal(key, oldKey) {
		t.Errorf("ca/ca.key is not the old CA key (%v)", err)
	}
	if !strings.Contains(out.String(), "Moved the dev CA's key") {
		t.Errorf("baton dev did not say it moved the key:\n%s", out.String())
	}
	checkDevLayout(t, dataDir, map[identity.Principal][2]string{
		devAdmin:           {filepath.Join(certs, "admin-dev.crt"), filepath.Join(certs, "admin-dev.key")},
		identity.Scheduler: {filepath.Join(dataDir, devServerDir, "scheduler.crt"), filepath.Join(dataDir, devServerDir, "scheduler.key")},
	})

	var stdout, stderr bytes.Buffer
	run := baton("run", "--", "sh", "-c", "echo moved")
	run.Stdout, run.Stderr = &stdout, &stderr
	if err := run.Run(); err != nil || stdout.String() != "moved\n" {
		t.Errorf("run through dev's client.toml: %v, stdout %q, stderr %q", err, stdout.String(), stderr.String())
	}
	copiedCfg := filepath.Join(copied, "client.toml")
	if err := config.WriteClientConfig(copiedCfg, config.ClientSection{
		Scheduler: "https://" + addr, CAFile: filepath.Join(copied, "ca.crt"),
		CertFile: filepath.Join(copied, "admin-dev.crt"), KeyFile: filepath.Join(copied, "admin-dev.key"),
	}); err != nil {
		t.Fatal(err)
	}
	if b, err := baton("workers", "--config", copiedCfg, "-o", "json").CombinedOutput(); err != nil {
		t.Errorf("workers with the client files copied before the move: %v\n%s", err, b)
	}
}
