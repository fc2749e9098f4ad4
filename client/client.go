// Package client runs Baton jobs from Go programs, as the baton CLI does.
//
// A Client connects to a scheduler with the settings of the CLI's [client]
// section (Config), over h2c or TLS 1.3, with a client certificate or a
// bearer token. Its methods add what the generated Connect client leaves
// to the caller:
//
//   - Run starts a job and follows its output to the final status in one
//     RunJob call. A stream cut by a restart of the scheduler or of the
//     job's worker is picked up again with StreamJobOutput from the last
//     byte received, so each byte reaches the caller once.
//   - A job that finds every matching worker full waits in the scheduler's
//     queue when its request has a queue_timeout (NoQueueLimit waits until
//     it is placed); Run reports it as queued, then as started.
//   - Start and Run give each request an idempotency key unless it has
//     one, so that a start whose answer was lost to the network is tried
//     again with the same key and never starts a second job.
//   - Errors the scheduler answers with, and calls that cannot reach it,
//     are *Error values, which errors.Is matches against ErrNotFound,
//     ErrResourceExhausted and the other sentinels.
//
// Scheduler gives the generated client itself for the calls this package
// has no method for (ListJobs, ListWorkers, DrainWorker, a group's stop).
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/serving"
)

// Client calls a Baton scheduler: one, or the replica that leads among
// several. It is safe for concurrent use by multiple goroutines; Close
// releases its idle connections.
type Client struct {
	sched batonv1connect.SchedulerServiceClient
	http  *http.Client
	// keys says whether Start and Run make up an idempotency key for a
	// request without one.
	keys bool
}

// Option changes how New builds a Client.
type Option func(*options)

type options struct {
	tls    *tls.Config
	noKeys bool
}

// WithTLSConfig dials the scheduler with conf, a TLS configuration held in
// memory, instead of one built from Config's CA and certificate files,
// which must then be empty. A bare host:port scheduler address then means
// https.
func WithTLSConfig(conf *tls.Config) Option {
	return func(o *options) { o.tls = conf }
}

// WithoutGeneratedKeys makes Start and Run send a request's
// idempotency_key as it is. A start without a key whose answer is lost is
// then not tried again, since it may have started the job: the error is
// returned instead. Benchmarks use it to leave the key's lookup out of
// what they measure.
func WithoutGeneratedKeys() Option {
	return func(o *options) { o.noKeys = true }
}

// NoQueueLimit, as a StartJobRequest's queue_timeout
// (durationpb.New(client.NoQueueLimit)), makes a job wait in the
// scheduler's queue until it is placed or stopped.
const NoQueueLimit time.Duration = -time.Second

// New builds a Client from cfg. It reads the CA, certificate and key files
// now, and dials nothing: the first call does. With several
// cfg.Schedulers, each call goes to the replica that leads, as Config
// says.
func New(cfg Config, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.tls != nil && (cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "") {
		return nil, errors.New("WithTLSConfig replaces client.ca_file, client.cert_file and client.key_file: leave them empty")
	}
	urls, err := cfg.baseURLs(o.tls != nil)
	if err != nil {
		return nil, err
	}
	// Every address has the scheme of the first (baseURLs sees to it).
	tlsConf := o.tls
	if isHTTPS(urls[0]) && tlsConf == nil {
		if tlsConf, err = cfg.tlsConfig(); err != nil {
			return nil, err
		}
	}
	// Outermost, so that every error the caller sees is mapped.
	interceptors := []connect.Interceptor{&errorInterceptor{baseURLs: urls, tls: tlsConf}}
	if cfg.Token != "" {
		if err := cfg.checkToken(urls); err != nil {
			return nil, err
		}
		auth, err := newBearerInterceptor(cfg.Token)
		if err != nil {
			return nil, err
		}
		interceptors = append(interceptors, auth)
	}
	httpClient := serving.NewHTTPClient(tlsConf)
	base := urls[0]
	if len(urls) > 1 {
		bases, hosts := withPorts(urls)
		base = bases[0]
		if httpClient.Transport, err = serving.FollowLeader(httpClient.Transport, hosts); err != nil {
			return nil, fmt.Errorf("client.scheduler: %w", err)
		}
	}
	return &Client{
		sched: batonv1connect.NewSchedulerServiceClient(httpClient, base, connect.WithInterceptors(interceptors...)),
		http:  httpClient,
		keys:  !o.noKeys,
	}, nil
}

// Scheduler returns the generated SchedulerService client the Client
// calls with, for calls it has no method for. Its errors are *Error
// values, as the Client's are.
func (c *Client) Scheduler() batonv1connect.SchedulerServiceClient { return c.sched }

// Close closes the client's idle connections. Calls in flight go on; a
// call made after Close opens a new connection.
func (c *Client) Close() {
	c.http.CloseIdleConnections()
}

// Start starts a job (with req.All, one on every matching worker) and
// returns at once: RUNNING, or QUEUED when it waits for a free slot. A
// start whose answer is lost to the network is tried again with the same
// idempotency key, so it starts one job (or one group) at most.
func (c *Client) Start(ctx context.Context, req *batonv1.StartJobRequest) (*batonv1.StartJobResponse, error) {
	req = c.keyed(req)
	if req.GetIdempotencyKey() == "" {
		res, err := c.sched.StartJob(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return res.Msg, nil
	}
	unknown := false
	retry := newBackoff()
	for {
		var sent sentFlag
		res, err := c.sched.StartJob(sent.trace(ctx), connect.NewRequest(req))
		if err == nil {
			return res.Msg, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		unknown = unknown || lost(err, &sent)
		if !retryStart(err, false, unknown) || retry.wait(ctx) != nil {
			return nil, err
		}
	}
}

// Stop stops a job (SIGTERM, then SIGKILL after its worker's grace) or
// cancels it while it is queued, and returns its final status. Stopping
// an ended job changes nothing.
func (c *Client) Stop(ctx context.Context, jobID string) (*batonv1.JobStatus, error) {
	res, err := c.sched.StopJob(ctx, connect.NewRequest(&batonv1.StopJobRequest{JobId: jobID}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetStatus(), nil
}

// Query returns a job's status, with whether it ended (done) and whether
// it ended in any state but success (error).
func (c *Client) Query(ctx context.Context, jobID string) (*batonv1.QueryJobResponse, error) {
	res, err := c.sched.QueryJob(ctx, connect.NewRequest(&batonv1.QueryJobRequest{JobId: jobID}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// keyed returns req with an idempotency key: its own, or a copy with a
// new one unless the client makes none up. The caller's request is left
// as it is.
func (c *Client) keyed(req *batonv1.StartJobRequest) *batonv1.StartJobRequest {
	if !c.keys || req.GetIdempotencyKey() != "" {
		return req
	}
	req = proto.CloneOf(req)
	req.IdempotencyKey = uuid.NewString()
	return req
}
