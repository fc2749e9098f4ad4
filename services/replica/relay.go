package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"slices"
	"sync"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/identity"
)

// relayedRoles are the callers whose calls a follower relays to the
// leader: clients. Workers keep calling the leader themselves, so that
// their heartbeats do not depend on a follower staying up.
var relayedRoles = []identity.Role{identity.RoleAdmin, identity.RoleUser, identity.RoleViewer}

// workerCalls are the procedures workers call. They are never relayed,
// whoever the caller seems to be: on a plaintext listener a worker is as
// anonymous as a client, and relayed it would reach the leader as the
// anonymous admin instead of going there itself.
var workerCalls = map[string]bool{
	batonv1connect.SchedulerServiceRegisterWorkerProcedure:     true,
	batonv1connect.SchedulerServiceHeartbeatProcedure:          true,
	batonv1connect.SchedulerServiceDeregisterWorkerProcedure:   true,
	batonv1connect.SchedulerServiceCheckWorkerAddressProcedure: true,
}

// relayer passes calls of clients from a follower to the leader, streams
// included, and says for whom: the leader serves the call as that
// client's (identity.ActOnBehalfOf), with the same owner checks and audit
// as a direct call.
type relayer struct {
	proxy *httputil.ReverseProxy
	perCaller
}

func newRelayer(self string, newTransport func() http.RoundTripper, useTLS bool) *relayer {
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	rl := &relayer{perCaller: perCaller{newTransport: newTransport, byCaller: map[string]http.RoundTripper{}}}
	rl.proxy = &httputil.ReverseProxy{
		Transport: &rl.perCaller,
		Rewrite: func(pr *httputil.ProxyRequest) {
			leader := pr.In.Context().Value(leaderKey{}).(string)
			pr.Out.URL.Scheme = scheme
			pr.Out.URL.Host = leader
			pr.Out.Host = leader
			// Only this replica names the client: a caller's own
			// OnBehalfOf header is replaced.
			p, _ := identity.FromContext(pr.In.Context())
			pr.Out.Header.Set(identity.OnBehalfOfHeader, p.String())
			pr.Out.Header.Set(identity.RelayedByHeader, self)
			pr.Out.Header.Set(identity.RelayedForHeader, pr.In.RemoteAddr)
			// This replica's listener judged the browser's origin; to the
			// leader the call comes from this replica.
			pr.Out.Header.Del("Origin")
			// The API has no use for a protocol upgrade, and each would
			// take a connection of its own to the leader.
			pr.Out.Header.Del("Connection")
			pr.Out.Header.Del("Upgrade")
		},
		// Output streams are passed on as they come.
		FlushInterval:  -1,
		ModifyResponse: readWholeAnswer,
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			leader := req.Context().Value(leaderKey{}).(string)
			// No leader is named: the one this replica knows of did not
			// answer, and the caller should try again shortly.
			writeUnavailable(w, req, "", "this scheduler replica got no answer from the leader at "+leader+": try again shortly")
		},
	}
	return rl
}

// perCaller sends each caller's relayed calls on connections of that
// caller's own. Calls sharing an HTTP/2 connection share its flow-control
// window, which a response nobody reads holds: a client that stops reading
// its streams would otherwise stall every other client relayed by this
// replica, where calling the leader directly it stalls only its own
// connection. Callers are the identities the cluster's CA and tokens give
// out, so the transports are as many as the operator made.
type perCaller struct {
	newTransport func() http.RoundTripper
	mu           sync.Mutex
	byCaller     map[string]http.RoundTripper
}

func (pc *perCaller) RoundTrip(req *http.Request) (*http.Response, error) {
	caller := req.Header.Get(identity.OnBehalfOfHeader)
	pc.mu.Lock()
	t, ok := pc.byCaller[caller]
	if !ok {
		t = pc.newTransport()
		pc.byCaller[caller] = t
	}
	pc.mu.Unlock()
	return t.RoundTrip(req)
}

// closeIdleConnections closes every caller's idle connections.
func (pc *perCaller) closeIdleConnections() {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for _, t := range pc.byCaller {
		if c, ok := t.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}

type leaderKey struct{}

// streamingCalls are the procedures whose answers are streams, passed on
// as they come. A stream the leader cuts off mid-way (it died) reaches the
// client cut off too, as it would have calling the leader directly.
var streamingCalls = map[string]bool{
	batonv1connect.SchedulerServiceStreamJobOutputProcedure: true,
	batonv1connect.SchedulerServiceRunJobProcedure:          true,
}

// maxRelayedAnswer bounds the answer of a call that is not a stream, which
// the relay reads whole: far above the largest page of the API.
const maxRelayedAnswer = 64 << 20

// readWholeAnswer reads the leader's answer to a call that is not a
// stream before any of it is passed on, so that a leader that dies while
// answering makes the call unavailable (the relay's ErrorHandler), which
// clients try again, rather than an answer cut off mid-way, which reaches
// them as an internal error.
func readWholeAnswer(res *http.Response) error {
	if streamingCalls[res.Request.URL.Path] {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, maxRelayedAnswer+1))
	res.Body.Close()
	if err != nil {
		return err
	}
	if len(body) > maxRelayedAnswer {
		return fmt.Errorf("the leader's answer is over %d bytes", maxRelayedAnswer)
	}
	res.Body = io.NopCloser(bytes.NewReader(body))
	res.ContentLength = int64(len(body))
	return nil
}

// relays reports whether req is a client's call that a follower relays:
// not a worker's procedure, not one already relayed, and from a client
// role (or the anonymous caller of a plaintext listener).
func relays(req *http.Request) bool {
	if workerCalls[req.URL.Path] || req.Header.Get(identity.RelayedByHeader) != "" {
		return false
	}
	p, ok := identity.FromContext(req.Context())
	return ok && (p.Anonymous || slices.Contains(relayedRoles, p.Role))
}

// relay passes req to the leader at leader.
func (rl *relayer) relay(w http.ResponseWriter, req *http.Request, leader string) {
	rl.proxy.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), leaderKey{}, leader)))
}

// writeUnavailable answers req, in the caller's protocol, with an
// unavailable error and leader (possibly empty) in LeaderHeader.
func writeUnavailable(w http.ResponseWriter, req *http.Request, leader, msg string) {
	w.Header().Set(LeaderHeader, leader)
	ew := connect.NewErrorWriter()
	if !ew.IsSupported(req) {
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	_ = ew.Write(w, req, connect.NewError(connect.CodeUnavailable, errors.New(msg)))
}
