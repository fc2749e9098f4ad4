package client

import (
	"context"
	"errors"
	"strings"

	"connectrpc.com/connect"
)

// bearerInterceptor adds "Authorization: Bearer <token>" to every call,
// unary and streaming.
type bearerInterceptor struct{ header string }

func newBearerInterceptor(token string) (*bearerInterceptor, error) {
	token = strings.TrimSpace(token)
	for _, r := range token {
		if r <= ' ' || r == 0x7f {
			return nil, errors.New("client.token holds spaces or control characters")
		}
	}
	return &bearerInterceptor{header: "Bearer " + token}, nil
}

// WrapUnary sets the header on a unary call.
func (b *bearerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", b.header)
		return next(ctx, req)
	}
}

// WrapStreamingClient sets the header on a stream before it is sent.
func (b *bearerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", b.header)
		return conn
	}
}

// WrapStreamingHandler leaves handlers alone: the interceptor is for clients.
func (b *bearerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

var _ connect.Interceptor = (*bearerInterceptor)(nil)
