package etcdmember_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-run/baton/services/etcdmember"
	"github.com/baton-run/baton/services/identity"
)

// The cluster's CA signs workers' and users' certificates too: a member
// must let in the scheduler's alone, or a worker could rewrite the store.
func TestOnlyTheSchedulersCertificateReachesTheStore(t *testing.T) {
	dir := t.TempDir()
	ca, err := identity.NewAuthority("test")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	issue := func(p identity.Principal) (string, string) {
		crt, key, err := ca.Issue(p, identity.IssueOptions{Hosts: []string{"127.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		c, k, err := identity.WriteKeyPair(dir, identity.FileBase(p), crt, key)
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	schedCrt, schedKey := issue(identity.Scheduler)
	workerCrt, workerKey := issue(identity.Principal{Role: identity.RoleWorker, Name: "w1"})

	var m *etcdmember.Member
	for range 5 {
		peer, client := freePort(t), freePort(t)
		m, err = etcdmember.Start(t.Context(), etcdmember.Config{
			Name:      "s1",
			Dir:       filepath.Join(dir, "etcd"),
			PeerURL:   "https://127.0.0.1:" + peer,
			ClientURL: "https://127.0.0.1:" + client,
			TLS:       &etcdmember.TLSFiles{CAFile: caFile, CertFile: schedCrt, KeyFile: schedKey, AllowedCN: identity.Scheduler.String()},
			NoFsync:   true,
		})
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	put := func(crt, key string) error {
		cli, err := m.Client(clientTLS(t, caFile, crt, key))
		if err != nil {
			return err
		}
		defer cli.Close()
		ctx, cancel := contextWithTimeout(t, 3*time.Second)
		defer cancel()
		_, err = cli.Put(ctx, "/baton/k", "v")
		return err
	}
	if err := put(schedCrt, schedKey); err != nil {
		t.Fatalf("the scheduler's certificate was refused: %v", err)
	}
	if err := put(workerCrt, workerKey); err == nil {
		t.Fatal("a worker's certificate, signed by the same CA, wrote to the store")
	}
}

func clientTLS(t *testing.T, caFile, crt, key string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	kp, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return p
}
