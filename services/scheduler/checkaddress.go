package scheduler

import (
	"context"
	"errors"
	"strings"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/identity"
	"github.com/baton-run/baton/services/serving"
)

// checkAddressTimeout bounds one address check: long enough for a TLS
// handshake across a slow link, short enough that `baton check` answers
// promptly about an address that drops packets.
const checkAddressTimeout = 5 * time.Second

// CheckWorkerAddress dials the address the calling worker names and says
// whether the worker answered there.
func (h *handler) CheckWorkerAddress(ctx context.Context, req *connect.Request[batonv1.CheckWorkerAddressRequest]) (*connect.Response[batonv1.CheckWorkerAddressResponse], error) {
	p := caller(ctx)
	if h.s.opts.WorkerTLS != nil && p.Role != identity.RoleWorker {
		// Only a worker's certificate says whom to expect at the address;
		// an anonymous caller of a plain listener has no name to check.
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("an address check needs a worker's certificate: the scheduler expects that worker at the address"))
	}
	// A few checks at a time: each may hold a connection for
	// checkAddressTimeout, and nobody needs many at once.
	select {
	case h.s.checks <- struct{}{}:
		defer func() { <-h.s.checks }()
	default:
		return nil, connect.NewError(connect.CodeResourceExhausted, errors.New("other address checks are running; try again in a few seconds"))
	}
	return connect.NewResponse(h.s.checkWorkerAddress(ctx, p.Name, req.Msg.GetAddress())), nil
}

// checkWorkerAddress makes one call to addr, as the scheduler calls worker
// name there, and reports what it found. With mutual TLS the peer must
// prove to be worker/name: a worker can thus make the scheduler reach only
// something that holds its own certificate, so the check is no open relay,
// and it reaches no address a worker could not already have the scheduler
// dial by registering it. The call is a gRPC health check, which changes
// nothing on the worker.
func (s *Scheduler) checkWorkerAddress(ctx context.Context, name, addr string) *batonv1.CheckWorkerAddressResponse {
	res := &batonv1.CheckWorkerAddressResponse{}
	hc, useTLS := s.opts.HTTPClient, s.opts.WorkerTLS != nil
	if useTLS {
		want := identity.Principal{Role: identity.RoleWorker, Name: name}
		res.Expected = want.String()
		// As dialer does, a client of its own that accepts only this
		// worker; it is closed after the one call.
		hc = serving.NewHTTPClient(s.opts.WorkerTLS.ClientTLS(identity.Expect(want)))
		defer hc.CloseIdleConnections()
	}
	ctx, cancel := context.WithTimeout(ctx, checkAddressTimeout)
	defer cancel()
	// The check changes nothing, but it is a call to a worker all the same:
	// it carries the epoch, as dialer's do.
	health := grpchealth.NewClient(hc, serving.BaseURL(addr, useTLS), connect.WithInterceptors(s.fence()...))
	_, err := health.Check(ctx, &grpchealth.CheckRequest{})
	if err != nil {
		// The remote's words may be anything: bounded, valid UTF-8.
		res.Error = clip(strings.ToValidUTF8(describeCheckError(err), "\uFFFD"), 1024)
		return res
	}
	res.Reachable = true
	return res
}

// describeCheckError is what an operator needs from a failed check: the
// dial, TLS or identity error, without the Connect code the HTTP client
// wraps it in, or the worker's answer when it refused the scheduler.
func describeCheckError(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "no answer within " + checkAddressTimeout.String() + " (a firewall dropping packets, or a host that is down)"
	}
	ce := new(connect.Error)
	if !errors.As(err, &ce) {
		return err.Error()
	}
	switch ce.Code() {
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		return "the worker there refused the scheduler: " + ce.Message()
	case connect.CodeUnimplemented:
		return "something answered there, but not a Baton worker (" + ce.Message() + ")"
	}
	if cause := ce.Unwrap(); cause != nil {
		return cause.Error()
	}
	return ce.Message()
}
