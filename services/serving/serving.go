// Package serving runs Baton's Connect services over net/http: h2c on
// loopback, answering only requests for this machine (no DNS rebinding),
// and TLS 1.3 elsewhere, with the same hardening on every listener.
// Handlers are mounted by the services; this package owns listeners, server
// timeouts, health, reflection and client transports.
package serving
