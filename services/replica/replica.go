// Package replica makes one scheduler of several: every replica campaigns
// for leadership in etcd, the leader runs the scheduler on a store fenced
// by its term, and the others answer each call with the leader's address.
//
// The term is the epoch: the creation revision of the leader's election
// key, unique and increasing. The store refuses any write of an older term
// ([store.ErrFenced]), and workers refuse calls carrying an older epoch,
// so a leader deposed without knowing it yet can change nothing.
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/grpchealth"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
	"github.com/baton-run/baton/services/scheduler/store"
	"github.com/baton-run/baton/services/serving"
)

// Defaults of Options.
const (
	DefaultPrefix     = "/baton/"
	DefaultSessionTTL = 2 * time.Second
	// resignTimeout bounds the resignation at shutdown: past it the
	// session's lease expires on its own.
	resignTimeout = time.Second
	// retryCampaign is the pause after a failed campaign (etcd out of
	// reach): the next attempt is then as fast as etcd comes back.
	retryCampaign = 200 * time.Millisecond
)

// LeaderHeader names the leader's address in a follower's refusal.
const LeaderHeader = serving.LeaderHeader

// Term is one leader's time in office: the scheduler built on the fenced
// store, serving until its Run ends.
type Term interface {
	// Handler serves the API while the term lasts.
	Handler() http.Handler
	// Run works until ctx ends (the term is over).
	Run(ctx context.Context) error
	// SetNotServing ends the term's streams and health.
	SetNotServing()
}

// Lead starts a term: a scheduler on st, which refuses writes once a newer
// term has begun, telling workers epoch. It returns the term and its
// metrics (nil for none), served at /metrics while the term lasts.
type Lead func(ctx context.Context, st store.Store, epoch int64) (Term, prometheus.Gatherer, error)

// Options configure a Replica.
type Options struct {
	// Client reaches the etcd cluster; the caller closes it after Run.
	Client *clientv3.Client
	// Prefix is where the scheduler's keys live in etcd.
	Prefix string
	// Address is where clients and workers reach this replica (host:port):
	// followers hand it out as the leader's address.
	Address string
	// SessionTTL is how long a leader that stopped renewing its lease
	// (crashed, cut off) keeps office: rounded up to whole seconds.
	SessionTTL time.Duration
	// Lead starts a term when this replica is elected.
	Lead Lead
	// Logger receives leadership changes. Default: discard.
	Logger *slog.Logger
	// Relay makes a transport that carries the calls of clients that
	// reach a follower to the leader (with this replica's own
	// certificate, the leader's being the scheduler's); each caller gets
	// one. RelayTLS says whether the leader's address speaks TLS (h2c
	// otherwise). Without Relay a follower refuses clients' calls with
	// the leader's address, as it does workers'.
	Relay    func() http.RoundTripper
	RelayTLS bool
}

// Replica campaigns for leadership and serves as leader or follower.
type Replica struct {
	opts    Options
	logger  *slog.Logger
	current atomic.Pointer[state]
	reg     *prometheus.Registry
	leading prometheus.Gauge
	epochG  prometheus.Gauge
	terms   prometheus.Counter

	// health answers followers' health checks.
	health http.Handler
	// relayer passes clients' calls to the leader; nil when Options.Relay is.
	relayer *relayer
}

// state is what the replica serves: the term's handler while it leads,
// and the leader it knows of otherwise.
type state struct {
	term    Term
	metrics prometheus.Gatherer
	leader  string
	epoch   int64
}

// New prepares a replica; Run campaigns.
func New(opts Options) (*Replica, error) {
	if opts.Client == nil || opts.Lead == nil || opts.Address == "" {
		return nil, errors.New("replica: Client, Lead and Address are required")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = DefaultSessionTTL
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Replica{opts: opts, logger: opts.Logger, reg: prometheus.NewRegistry()}
	r.leading = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "baton_scheduler_leader",
		Help: "1 while this scheduler replica leads, 0 while it follows.",
	})
	r.epochG = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "baton_scheduler_epoch",
		Help: "The epoch of the leader this replica knows of (its own while it leads).",
	})
	r.terms = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "baton_scheduler_terms_total",
		Help: "Terms this replica has led.",
	})
	r.reg.MustRegister(r.leading, r.epochG, r.terms)
	r.current.Store(&state{})
	_, r.health = grpchealth.NewHandler(grpchealth.NewStaticChecker(batonv1connect.SchedulerServiceName))
	if opts.Relay != nil {
		r.relayer = newRelayer(opts.Address, opts.Relay, opts.RelayTLS)
	}
	return r, nil
}

// CloseIdleConnections closes the relay's idle connections to the
// leader; call it after Run.
func (r *Replica) CloseIdleConnections() {
	if r.relayer != nil {
		r.relayer.closeIdleConnections()
	}
}

// Leader returns the address and epoch of the leader this replica knows
// of, and whether it is this replica.
func (r *Replica) Leader() (addr string, epoch int64, self bool) {
	s := r.current.Load()
	return s.leader, s.epoch, s.term != nil
}

// Handler serves the leader's API while this replica leads, /metrics
// always, and otherwise relays clients' calls to the leader and answers
// the others with where the leader is.
func (r *Replica) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		s := r.current.Load()
		if req.Method == http.MethodGet && req.URL.Path == "/metrics" {
			gs := prometheus.Gatherers{r.reg}
			if s.metrics != nil {
				gs = append(gs, s.metrics)
			}
			promhttp.HandlerFor(gs, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, req)
			return
		}
		if s.term != nil {
			s.term.Handler().ServeHTTP(w, req)
			return
		}
		r.follow(w, req, s)
	})
}

// follow serves a call to a follower. Health checks are answered: a
// follower is alive. A client's call is relayed to the leader when one is
// known. Any other call (a worker's, one relayed already, any while no
// leader is known) is refused in the caller's protocol: Connect, gRPC or
// gRPC-Web clients all read an unavailable error, and the leader's
// address in LeaderHeader, empty while no leader is known, so that a
// client tells this refusal from a leader's own unavailable and tries
// another replica.
func (r *Replica) follow(w http.ResponseWriter, req *http.Request, s *state) {
	if strings.HasPrefix(req.URL.Path, "/"+grpchealth.HealthV1ServiceName+"/") {
		r.health.ServeHTTP(w, req)
		return
	}
	if s.leader != "" && r.relayer != nil && relays(req) {
		r.relayer.relay(w, req, s.leader)
		return
	}
	msg := "this scheduler replica is not the leader and knows of none yet: try again shortly"
	if s.leader != "" {
		msg = "this scheduler replica is not the leader; the leader is at " + s.leader
	}
	writeUnavailable(w, req, s.leader, msg)
}

// Run campaigns, leads and follows until ctx ends; then, if leading, it
// resigns so that another replica takes over at once.
func (r *Replica) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		if err := r.serveOneSession(ctx); err != nil && ctx.Err() == nil {
			r.logger.Warn("leadership session ended", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(retryCampaign):
			}
		}
	}
	return nil
}

// serveOneSession holds one etcd session: it follows until elected, leads
// until the term ends, and returns when the session can no longer be
// trusted.
func (r *Replica) serveOneSession(ctx context.Context) error {
	ttl := int((r.opts.SessionTTL + time.Second - 1) / time.Second)
	sess, err := concurrency.NewSession(r.opts.Client, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("etcd session: %w", err)
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, strings.TrimSuffix(r.opts.Prefix, "/")+"/leader")

	observeCtx, stopObserving := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Observing ends before it is waited for: waiting first would hold
	// this session, and every campaign after it, until shutdown.
	defer func() {
		stopObserving()
		wg.Wait()
	}()
	newer := make(chan int64, 1)
	wg.Go(func() { r.observe(observeCtx, el, newer) })

	// Campaigning ends with the session: a replica whose lease expired
	// while it waited must not take office on its word.
	if err := el.Campaign(sess.Ctx(), r.opts.Address); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	select {
	case <-sess.Done():
		return errors.New("the session expired while campaigning")
	default:
	}
	return r.lead(ctx, sess, el, newer)
}

// observe keeps the known leader up to date for followers' answers, and
// tells lead about any leader other than this one.
func (r *Replica) observe(ctx context.Context, el *concurrency.Election, newer chan<- int64) {
	for resp := range el.Observe(ctx) {
		if len(resp.Kvs) == 0 {
			continue
		}
		kv := resp.Kvs[0]
		addr, epoch := string(kv.Value), kv.CreateRevision
		for {
			s := r.current.Load()
			if s.term != nil {
				// Election keys only get newer revisions: a lower epoch
				// is a late notice of an earlier leader.
				if epoch > s.epoch {
					select {
					case newer <- epoch:
					default:
					}
				}
				break
			}
			// lead may take office meanwhile: its state must not be
			// overwritten by a follower's.
			if r.current.CompareAndSwap(s, &state{leader: addr, epoch: epoch}) {
				r.epochG.Set(float64(epoch))
				break
			}
		}
	}
}

// lead runs one term: the scheduler on a store fenced by the election
// key's creation revision, until the session ends or its lease can no
// longer be counted on, a write is fenced, a newer leader shows or ctx
// ends.
func (r *Replica) lead(ctx context.Context, sess *concurrency.Session, el *concurrency.Election, newer <-chan int64) error {
	epoch := el.Rev()
	// The lease is renewed here too, so that the term ends as soon as it
	// can no longer be sure of its lease: before the cluster can end it
	// and elect another leader. The session's own renewal finds a lapse
	// later (counting from when an answer arrived, checked once a
	// second), which left a cut-off leader in office for a moment after
	// the next one took it.
	lease, err := r.holdLease(ctx, sess.Lease())
	if err != nil {
		r.resign(el)
		return fmt.Errorf("renewing the lease of epoch %d: %w", epoch, err)
	}
	defer lease.stop()
	// The store tells of a write refused for a stale term: the replica
	// leaves office at once instead of waiting to see its session end.
	// Each term has its own signal, so that a late refusal of an earlier
	// term's write cannot end this one.
	fenced := make(chan struct{}, 1)
	st, err := store.OpenEtcd(ctx, r.opts.Client, store.EtcdOptions{
		Prefix: r.opts.Prefix,
		Fence: &store.Fence{Key: el.Key(), Term: epoch, Fenced: func() {
			select {
			case fenced <- struct{}{}:
			default:
			}
		}},
	})
	if err != nil {
		r.resign(el)
		return fmt.Errorf("opening the store for epoch %d: %w", epoch, err)
	}
	defer st.Close()
	termCtx, endTerm := context.WithCancel(ctx)
	defer endTerm()
	term, reg, err := r.opts.Lead(termCtx, st, epoch)
	if err != nil {
		r.resign(el)
		return fmt.Errorf("taking office at epoch %d: %w", epoch, err)
	}
	r.logger.Info("leading the scheduler", "epoch", epoch, "address", r.opts.Address)
	r.current.Store(&state{term: term, metrics: reg, leader: r.opts.Address, epoch: epoch})
	r.leading.Set(1)
	r.epochG.Set(float64(epoch))
	r.terms.Inc()

	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = term.Run(termCtx)
	}()
	var why string
	select {
	case <-ctx.Done():
		why = "shutting down"
	case <-sess.Done():
		why = "the leadership session expired"
	case <-lease.lapsed:
		why = "the leadership lease could not be renewed in time: etcd is out of reach or too slow"
	case <-fenced:
		why = "the store refused a write: a newer leader has taken office"
	case e := <-newer:
		why = fmt.Sprintf("a newer leader took office (epoch %d)", e)
	case <-runDone:
		why = "the scheduler stopped"
	}
	// Followers' answers name no leader until the next one is observed:
	// naming this one would send callers back here.
	r.current.Store(&state{})
	r.leading.Set(0)
	endTerm()
	<-runDone
	term.SetNotServing()
	r.logger.Info("left office", "epoch", epoch, "why", why)
	r.resign(el)
	if ctx.Err() != nil {
		return nil
	}
	return errors.New(why)
}

// heldLease is a lease renewed by holdLease.
type heldLease struct {
	// lapsed closes when the lease may have ended.
	lapsed chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// stop ends the renewals and waits for them.
func (h *heldLease) stop() {
	h.cancel()
	<-h.done
}

// holdLease renews lease once, then again every third of its TTL, until
// stopped. Its lapsed channel closes once no renewal sent within the last
// TTL, less a tenth for this process's own delays, has been answered:
// etcd renews a lease when a renewal arrives, so until then the lease is
// alive whatever the cluster does, and from then on it may have ended. It
// fails if the first renewal does.
func (r *Replica) holdLease(ctx context.Context, lease clientv3.LeaseID) (*heldLease, error) {
	sent := time.Now()
	ttl, err := r.renew(ctx, lease, sent.Add(r.opts.SessionTTL))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	h := &heldLease{lapsed: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		deadline := sent.Add(ttl - ttl/10)
		for {
			wait := time.NewTimer(min(ttl/3, time.Until(deadline)))
			select {
			case <-ctx.Done():
				wait.Stop()
				return
			case <-wait.C:
			}
			if !time.Now().Before(deadline) {
				close(h.lapsed)
				return
			}
			sent := time.Now()
			got, err := r.renew(ctx, lease, deadline)
			switch {
			case err == nil:
				ttl = got
				deadline = sent.Add(ttl - ttl/10)
			case errors.Is(err, rpctypes.ErrLeaseNotFound):
				close(h.lapsed)
				return
			}
		}
	}()
	return h, nil
}

// renew renews lease once, giving up at deadline, and returns its TTL.
func (r *Replica) renew(ctx context.Context, lease clientv3.LeaseID, deadline time.Time) (time.Duration, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	resp, err := r.opts.Client.KeepAliveOnce(ctx, lease)
	if err != nil {
		return 0, err
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

// resign gives up leadership at once, so that another replica is elected
// without waiting for this one's lease to expire.
func (r *Replica) resign(el *concurrency.Election) {
	ctx, cancel := context.WithTimeout(context.Background(), resignTimeout)
	defer cancel()
	if err := el.Resign(ctx); err != nil {
		r.logger.Warn("resigning failed: the lease expires on its own", "error", err)
	}
}
