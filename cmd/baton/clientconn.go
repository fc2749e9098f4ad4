package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"connectrpc.com/connect"

	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/serving"
)

// schedulerURL turns client.scheduler into a base URL and says whether it
// uses TLS. A bare host:port means https when the config names a CA or a
// client certificate (there is no other use for them) and h2c otherwise.
func (c ClientSection) schedulerURL() (string, bool, error) {
	addr := strings.TrimSpace(c.Scheduler)
	if addr == "" {
		return "", false, errors.New("client.scheduler is empty: give --scheduler URL or set it in the client config")
	}
	if !strings.Contains(addr, "://") {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return "", false, fmt.Errorf("client.scheduler %q: use a URL (http://host:port, https://host:port) or host:port", addr)
		}
		useTLS := c.CAFile != "" || c.CertFile != ""
		return serving.BaseURL(addr, useTLS), useTLS, nil
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", false, fmt.Errorf("client.scheduler %q: use a URL like http://host:port or https://host:port", addr)
	}
	switch u.Scheme {
	case "https":
		return strings.TrimSuffix(u.String(), "/"), true, nil
	case "http":
		if c.CAFile != "" || c.CertFile != "" {
			return "", false, fmt.Errorf("client.scheduler %q is plain h2c but a CA or client certificate is configured: use https://", addr)
		}
		return strings.TrimSuffix(u.String(), "/"), false, nil
	}
	return "", false, fmt.Errorf("client.scheduler %q: the scheme must be http (h2c) or https (TLS)", addr)
}

// tlsConfig builds the client's TLS 1.3 config: the cluster CA as the only
// root when given (the system roots otherwise), and the client certificate
// for mTLS when given.
func (c ClientSection) tlsConfig() (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS13}
	if c.CAFile != "" {
		pool, err := loadCA(c.CAFile)
		if err != nil {
			return nil, err
		}
		conf.RootCAs = pool
	}
	switch {
	case c.CertFile != "" && c.KeyFile != "":
		kp, err := loadKeyPairFiles(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, err
		}
		conf.Certificates = []tls.Certificate{*kp.cert.Load()}
	case c.CertFile != "" || c.KeyFile != "":
		return nil, errors.New("client.cert_file and client.key_file go together: set both or neither")
	}
	return conf, nil
}

// schedulerClient is a connected SchedulerService client and the URL it
// calls, for error messages.
type schedulerClient struct {
	batonv1connect.SchedulerServiceClient
	baseURL string
}

// newSchedulerClient builds the generated client from the config. It dials
// nothing: the first RPC does.
func newSchedulerClient(c ClientSection) (*schedulerClient, error) {
	base, useTLS, err := c.schedulerURL()
	if err != nil {
		return nil, err
	}
	var tlsConf *tls.Config
	if useTLS {
		if tlsConf, err = c.tlsConfig(); err != nil {
			return nil, err
		}
	}
	if c.Token != "" && !useTLS && !loopbackURL(base) {
		return nil, fmt.Errorf("client.token is set but client.scheduler %q is plain h2c to an address that is not loopback: the token would go out in cleartext. Use https://host:port with client.ca_file (the scheduler's http_server with a certificate), or remove client.token", c.Scheduler)
	}
	var opts []connect.ClientOption
	if c.Token != "" {
		auth, err := newBearerInterceptor(c.Token)
		if err != nil {
			return nil, err
		}
		opts = append(opts, connect.WithInterceptors(auth))
	}
	return &schedulerClient{
		SchedulerServiceClient: batonv1connect.NewSchedulerServiceClient(serving.NewHTTPClient(tlsConf), base, opts...),
		baseURL:                base,
	}, nil
}

// explain adds what a user can do to an RPC error the scheduler did not
// write itself: a refused connection names the URL tried.
func (s *schedulerClient) explain(err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable {
		return err
	}
	var op *net.OpError
	if !errors.As(err, &op) {
		return err
	}
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("cannot reach the scheduler at %s (%v); is it running? (--scheduler, BATON_CLIENT_SCHEDULER or client.scheduler)", s.baseURL, op.Err))
}

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

// loopbackURL reports whether a base URL's host is this machine: a
// loopback IP or "localhost". A name that merely resolves to one is not:
// what it resolves to can change.
func loopbackURL(base string) bool {
	u, err := url.Parse(base)
	if err != nil {
		return false
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
