package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/baton-run/baton/cmd/baton/internal/config"
)

// Each [store] mistake is refused at start, naming the key and what to do.
func TestStoreConfigRefusals(t *testing.T) {
	embedded := func(mod func(*SchedulerConfig)) SchedulerConfig {
		c := DefaultSchedulerConfig()
		c.Store.Backend = BackendEtcd
		c.Store.Etcd.Embedded.Name = "s1"
		c.Store.Etcd.Embedded.PeerURL = "http://127.0.0.1:2380"
		c.Store.Etcd.Embedded.ClientURL = "http://127.0.0.1:2379"
		c.Store.Etcd.Embedded.InitialCluster = "s1=http://127.0.0.1:2380"
		if mod != nil {
			mod(&c)
		}
		return c
	}
	ok := embedded(nil)
	if err := ok.Validate(); err != nil {
		t.Fatalf("a loopback embedded member without TLS: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*SchedulerConfig)
		want string
	}{
		{"unknown backend", func(c *SchedulerConfig) { c.Store.Backend = "postgres" }, `store.backend is "postgres"`},
		{"both member and endpoints", func(c *SchedulerConfig) { c.Store.Etcd.Endpoints = []string{"http://10.0.0.9:2379"} }, "not both"},
		{"neither", func(c *SchedulerConfig) { c.Store.Etcd.Embedded.Name = "" }, "set either embedded.name"},
		{"plaintext off loopback", func(c *SchedulerConfig) { c.Store.Etcd.Embedded.PeerURL = "http://10.0.0.1:2380" }, "in the clear"},
		{"https without TLS", func(c *SchedulerConfig) { c.Store.Etcd.Embedded.ClientURL = "https://127.0.0.1:2379" }, "use http:// on loopback"},
		{"http with TLS", func(c *SchedulerConfig) {
			c.GRPCServer.UseTLS = true
		}, "use https://"},
		{"not a URL", func(c *SchedulerConfig) { c.Store.Etcd.Embedded.PeerURL = "127.0.0.1:2380" }, "is not a URL"},
		{"missing URLs", func(c *SchedulerConfig) { c.Store.Etcd.Embedded.InitialCluster = "" }, "needs peer_url, client_url and initial_cluster"},
		{"member not in the cluster", func(c *SchedulerConfig) {
			c.Store.Etcd.Embedded.InitialCluster = "s2=http://127.0.0.1:2380"
		}, "does not list this member (s1=...)"},
		{"short session", func(c *SchedulerConfig) { c.Store.Etcd.SessionTTL = config.Duration(500 * time.Millisecond) }, "session_ttl is 500ms"},
		{"relative prefix", func(c *SchedulerConfig) { c.Store.Etcd.Prefix = "baton/" }, "must begin with /"},
		{"short election", func(c *SchedulerConfig) {
			c.Store.Etcd.Embedded.ElectionTimeout = config.Duration(10 * time.Millisecond)
		}, "election_timeout must be at least 100ms"},
		{"endpoint not a URL", func(c *SchedulerConfig) {
			c.Store.Etcd.Embedded = EmbeddedEtcd{}
			c.Store.Etcd.Endpoints = []string{"10.0.0.9:2379"}
		}, "is not an http:// or https:// URL"},
		{"https endpoint without files", func(c *SchedulerConfig) {
			c.Store.Etcd.Embedded = EmbeddedEtcd{}
			c.Store.Etcd.Endpoints = []string{"https://10.0.0.9:2379"}
		}, "needs ca_file, cert_file and key_file"},
		{"unreachable advertised address", func(c *SchedulerConfig) { c.GRPCServer.Addr = "0.0.0.0:7070" }, "scheduler.advertise_addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := embedded(tc.mod)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
