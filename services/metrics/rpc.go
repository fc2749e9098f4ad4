package metrics

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// RPC is a Connect handler interceptor that observes the duration of every
// call, unary or streaming, by procedure and result code. The code label is
// "ok" for a call that succeeded and the Connect code otherwise
// ("not_found", "unavailable", …). Client-side calls are not observed. It is
// safe for concurrent use.
//
// Put it first among a handler's interceptors: it then also sees the calls
// that validation rejects and the panics that recovery turns into errors.
type RPC struct {
	duration *prometheus.HistogramVec
}

var _ connect.Interceptor = (*RPC)(nil)

func newRPC(reg prometheus.Registerer, subsystem string) *RPC {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "rpc_duration_seconds",
		Help:    "Duration of the RPCs served, by procedure and Connect code (ok on success). A stream counts until it ends.",
		Buckets: rpcBuckets,
	}, []string{"procedure", "code"})
	reg.MustRegister(h)
	return &RPC{duration: h}
}

// WrapUnary implements connect.Interceptor.
func (r *RPC) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		start := time.Now()
		res, err := next(ctx, req)
		r.observe(req.Spec().Procedure, err, start)
		return res, err
	}
}

// WrapStreamingClient implements connect.Interceptor; client streams are
// not observed.
func (r *RPC) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (r *RPC) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		r.observe(conn.Spec().Procedure, err, start)
		return err
	}
}

func (r *RPC) observe(procedure string, err error, start time.Time) {
	r.duration.WithLabelValues(procedure, codeLabel(err)).Observe(time.Since(start).Seconds())
}

// codeLabel is "ok" for a nil error and the Connect code's name otherwise,
// the same word the access log writes.
func codeLabel(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}
