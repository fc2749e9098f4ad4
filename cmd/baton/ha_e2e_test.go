package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/baton-run/baton/client"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/gen/baton/v1/batonv1connect"
)

// The acceptance bounds of the replicated scheduler: from the leader's
// SIGKILL, or its SIGTERM, to a StartJob accepted again.
const (
	haFailoverBound = 5 * time.Second
	haHandoverBound = time.Second
)

// Load: haLoadClients clients each start a job at most every
// haLoadPause; a start is tried again with its key until answered, for up
// to haKeyPatience.
const (
	haLoadClients = 4
	haLoadPause   = 100 * time.Millisecond
	haKeyPatience = 30 * time.Second
	haCallTimeout = 3 * time.Second
	// haProbeEvery is how often the probe asks each replica to start a
	// job, which times the failover.
	haProbeEvery = 50 * time.Millisecond
)

// TestHAFailover kills the leader with SIGKILL three times in a row while
// clients start jobs, restarting the killed replica each time, and checks
// the history: every acknowledged job is in the store once and no job was
// started twice. Each failover (kill → a StartJob accepted again) must
// take under 5 s.
func TestHAFailover(t *testing.T) {
	requireHA(t)
	c := newHACluster(t, haOptions{})
	rec := startHALoad(t, c)

	var figures []time.Duration
	for round := 1; round <= 3; round++ {
		rec.waitAcks(t, 60, 20*time.Second)
		old, epoch, err := c.leader(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		raft := c.raftRole(old)
		killed := time.Now()
		c.kill(old)
		took, err := rec.firstAckAfter(killed, 30*time.Second)
		if err != nil {
			t.Fatalf("round %d: after the SIGKILL of %s (epoch %d): %v", round, c.replicas[old].name, epoch, err)
		}
		figures = append(figures, took)
		leader, newEpoch, err := c.waitLeader(10*time.Second, old)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: SIGKILL of %s (leader, epoch %d, %s) → StartJob accepted again after %s; %s leads at epoch %d%s",
			round, c.replicas[old].name, epoch, raft, took.Round(time.Millisecond), c.replicas[leader].name, newEpoch, c.electedAfter(leader, newEpoch, killed))
		if newEpoch <= epoch {
			t.Errorf("round %d: the new leader's epoch %d is not above the killed one's %d", round, newEpoch, epoch)
		}
		if err := c.restart(old); err != nil {
			t.Fatal(err)
		}
		if err := c.waitFollowing(old, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	rec.waitAcks(t, 60, 20*time.Second)
	h := rec.finish(t, c)
	t.Logf("failover (SIGKILL of the leader → StartJob accepted): %s (bound %s)", durations(figures), haFailoverBound)
	t.Log(rec.counts())
	for _, line := range haSummary(h) {
		t.Log(line)
	}
	for i, d := range figures {
		if d >= haFailoverBound {
			t.Errorf("failover %d took %s, over %s", i+1, d.Round(time.Millisecond), haFailoverBound)
		}
	}
	for _, v := range checkHAHistory(h) {
		t.Error(v)
	}
}

// TestHAHandover stops the leader with SIGTERM three times while clients
// start jobs: it resigns, and another replica accepts StartJob within 1 s
// of the signal. The history is checked as after the kills.
func TestHAHandover(t *testing.T) {
	requireHA(t)
	c := newHACluster(t, haOptions{})
	rec := startHALoad(t, c)

	var figures []time.Duration
	for round := 1; round <= 3; round++ {
		rec.waitAcks(t, 60, 20*time.Second)
		old, epoch, err := c.leader(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		p := c.replicas[old].current()
		raft := c.raftRole(old)
		signalled := time.Now()
		if err := p.signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		took, err := rec.firstAckAfter(signalled, 30*time.Second)
		if err != nil {
			t.Fatalf("round %d: after the SIGTERM of %s (epoch %d): %v", round, c.replicas[old].name, epoch, err)
		}
		figures = append(figures, took)
		if exited, err := p.wait(20 * time.Second); !exited {
			t.Fatalf("%s did not exit within 20s of SIGTERM", p.name)
		} else if err != nil {
			t.Errorf("%s exit after SIGTERM: %v", p.name, err)
		}
		leader, newEpoch, err := c.waitLeader(10*time.Second, old)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: SIGTERM of %s (leader, epoch %d, %s) → StartJob accepted again after %s; %s leads at epoch %d%s",
			round, c.replicas[old].name, epoch, raft, took.Round(time.Millisecond), c.replicas[leader].name, newEpoch, c.electedAfter(leader, newEpoch, signalled))
		if err := c.restart(old); err != nil {
			t.Fatal(err)
		}
		if err := c.waitFollowing(old, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	rec.waitAcks(t, 60, 20*time.Second)
	h := rec.finish(t, c)
	t.Logf("handover (SIGTERM of the leader → StartJob accepted): %s (bound %s)", durations(figures), haHandoverBound)
	t.Log(rec.counts())
	for _, line := range haSummary(h) {
		t.Log(line)
	}
	for i, d := range figures {
		if d >= haHandoverBound {
			t.Errorf("handover %d took %s, over %s", i+1, d.Round(time.Millisecond), haHandoverBound)
		}
	}
	for _, v := range checkHAHistory(h) {
		t.Error(v)
	}
}

// raftRole says whether replica i's etcd member is the raft leader: a
// failover takes longer when it is, as raft must elect a leader before
// the lease of the replica's session can expire.
func (c *haCluster) raftRole(i int) string {
	r, err := c.raftLeader(c.t.Context())
	switch {
	case err != nil:
		return "raft leader unknown: " + err.Error()
	case r == i:
		return "its member the raft leader"
	}
	return "its member a raft follower"
}

// electedAfter says how long after since replica i took office at epoch,
// as its log tells, for the breakdown of a failover.
func (c *haCluster) electedAfter(i int, epoch int64, since time.Time) string {
	at, err := c.tookOffice(i, epoch)
	if err != nil {
		return " (" + err.Error() + ")"
	}
	return fmt.Sprintf(" (in office after %s)", at.Sub(since).Round(time.Millisecond))
}

// durations formats figures as a list in milliseconds.
func durations(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.Round(time.Millisecond).String()
	}
	return strings.Join(parts, ", ")
}

// haRecorder keeps what the load and the probe did: every acknowledged
// StartJob with when its try was sent and answered, and the errors met.
// Safe for concurrent use.
type haRecorder struct {
	mu   sync.Mutex
	acks []haTimedAck
	errs map[string]int
	// samples holds the first few messages of each error code, with when.
	samples map[string][]string
	tries   int
	failed  []string // keys given up on
	// notify is closed and replaced at each acknowledgement.
	notify chan struct{}

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// haTimedAck is an acknowledgement with the try's send and answer times.
type haTimedAck struct {
	haAck
	sent, answered time.Time
	probe          bool
	// state is the job's state in the answer.
	state batonv1.JobState
}

// startHALoad starts the load clients and the probe against c; finish
// stops them.
func startHALoad(t *testing.T, c *haCluster) *haRecorder {
	ctx, stop := context.WithCancel(context.WithoutCancel(t.Context()))
	rec := &haRecorder{errs: map[string]int{}, samples: map[string][]string{}, notify: make(chan struct{}), stop: stop}
	t.Cleanup(rec.halt)
	for range haLoadClients {
		cl := c.client()
		rec.wg.Go(func() { rec.load(ctx, cl) })
	}
	for i := range c.replicas {
		rc := c.replicaClient(i)
		rec.wg.Go(func() { rec.probe(ctx, rc) })
	}
	return rec
}

// haJobRequest is the short job the load starts, carrying its key in a
// label so that the store's jobs can be matched to the requests.
func haJobRequest(key string) *batonv1.StartJobRequest {
	return &batonv1.StartJobRequest{
		Command:        "sleep",
		Args:           []string{"0.2"},
		IdempotencyKey: key,
		Labels:         map[string]string{haKeyLabel: key},
	}
}

// load starts one job after another until ctx ends, each with a key of
// its own, tried again with the same key until it is answered: an answer
// lost to a dying leader may hide a job that was made.
func (r *haRecorder) load(ctx context.Context, cl *client.Client) {
	for ctx.Err() == nil {
		key := uuid.NewString()
		deadline := time.Now().Add(haKeyPatience)
		for {
			sent := time.Now()
			callCtx, cancel := context.WithTimeout(context.Background(), haCallTimeout)
			res, err := cl.Scheduler().StartJob(callCtx, connect.NewRequest(haJobRequest(key)))
			cancel()
			if err == nil {
				r.ack(haTimedAck{haAck: haAck{Key: key, JobID: res.Msg.GetJobId()}, sent: sent, answered: time.Now(), state: answeredState(res.Msg)})
				break
			}
			r.fail(err)
			if !haRetryable(err) || time.Now().After(deadline) {
				r.giveUp(key, err)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		select {
		case <-ctx.Done():
		case <-time.After(haLoadPause):
		}
	}
}

// haRetryable reports whether a StartJob that failed with err is tried
// again: the scheduler could not answer (no leader yet, a leader dying, a
// call cut), rather than refused the request.
func haRetryable(err error) bool {
	var ce *client.Error
	if !errors.As(err, &ce) {
		return true
	}
	switch ce.Code {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeCanceled, connect.CodeUnknown, connect.CodeAborted:
		return true
	}
	return false
}

// probe asks one replica to start a job every haProbeEvery until ctx
// ends. Each try has a key of its own: a try whose answer is lost is
// not tried again, and its job, if made, is one nobody was told of.
func (r *haRecorder) probe(ctx context.Context, rc batonv1connect.SchedulerServiceClient) {
	for ctx.Err() == nil {
		key := "probe-" + uuid.NewString()
		sent := time.Now()
		callCtx, cancel := context.WithTimeout(ctx, time.Second)
		res, err := rc.StartJob(callCtx, connect.NewRequest(haJobRequest(key)))
		cancel()
		if err == nil {
			r.ack(haTimedAck{haAck: haAck{Key: key, JobID: res.Msg.GetJobId()}, sent: sent, answered: time.Now(), probe: true, state: answeredState(res.Msg)})
		}
		select {
		case <-ctx.Done():
		case <-time.After(haProbeEvery):
		}
	}
}

// answeredState is the state of the job a StartJob answered with.
func answeredState(res *batonv1.StartJobResponse) batonv1.JobState {
	if jobs := res.GetJobs(); len(jobs) > 0 {
		return jobs[0].GetState()
	}
	return batonv1.JobState_JOB_STATE_UNSPECIFIED
}

func (r *haRecorder) ack(a haTimedAck) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tries++
	r.acks = append(r.acks, a)
	close(r.notify)
	r.notify = make(chan struct{})
}

func (r *haRecorder) fail(err error) {
	code := "transport"
	var ce *client.Error
	if errors.As(err, &ce) {
		code = ce.Code.String()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tries++
	r.errs[code]++
	if len(r.samples[code]) < 3 {
		r.samples[code] = append(r.samples[code], time.Now().Format("15:04:05.000")+" "+err.Error())
	}
}

func (r *haRecorder) giveUp(key string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = append(r.failed, fmt.Sprintf("%s: %v", key, err))
}

// waitAcks waits up to d for n more acknowledgements of the load.
func (r *haRecorder) waitAcks(t *testing.T, n int, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	r.mu.Lock()
	want := r.loadAcks() + n
	r.mu.Unlock()
	for {
		r.mu.Lock()
		got, ch := r.loadAcks(), r.notify
		r.mu.Unlock()
		if got >= want {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("the load had %d of %d more acknowledgements within %s", got-want+n, n, d)
		}
	}
}

// loadAcks counts the load's acknowledgements; r.mu is held.
func (r *haRecorder) loadAcks() int {
	n := 0
	for _, a := range r.acks {
		if !a.probe {
			n++
		}
	}
	return n
}

// firstAckAfter waits up to d for a StartJob sent after since to be
// acknowledged, by the load or the probe, and returns how long after
// since that was.
func (r *haRecorder) firstAckAfter(since time.Time, d time.Duration) (time.Duration, error) {
	deadline := time.After(d)
	for {
		r.mu.Lock()
		ch := r.notify
		var first time.Time
		for _, a := range r.acks {
			if a.sent.After(since) && (first.IsZero() || a.answered.Before(first)) {
				first = a.answered
			}
		}
		r.mu.Unlock()
		if !first.IsZero() {
			return first.Sub(since), nil
		}
		select {
		case <-ch:
		case <-deadline:
			return 0, fmt.Errorf("no StartJob accepted within %s", d)
		}
	}
}

// halt stops the load and the probe and waits for them: each load client
// first gets its last key answered.
func (r *haRecorder) halt() {
	r.stop()
	r.wg.Wait()
}

// counts describes the tries and errors.
func (r *haRecorder) counts() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []string
	for _, code := range slices.Sorted(maps.Keys(r.errs)) {
		errs = append(errs, fmt.Sprintf("%s %d (%s)", code, r.errs[code], strings.Join(r.samples[code], "; ")))
	}
	var lat []time.Duration
	answered := map[string]int{}
	for _, a := range r.acks {
		if !a.probe {
			lat = append(lat, a.answered.Sub(a.sent))
		}
		answered[strings.TrimPrefix(a.state.String(), "JOB_STATE_")]++
	}
	var states []string
	for _, st := range slices.Sorted(maps.Keys(answered)) {
		states = append(states, fmt.Sprintf("%s %d", st, answered[st]))
	}
	slices.Sort(lat)
	pct := func(p int) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[(len(lat)-1)*p/100].Round(time.Millisecond)
	}
	return fmt.Sprintf("load and probe: %d tries, %d acknowledged (answered %s), errors: %s; load StartJob latency p50 %s p90 %s p99 %s max %s",
		r.tries, len(r.acks), strings.Join(states, ", "), strings.Join(errs, ", "), pct(50), pct(90), pct(99), pct(100))
}

// finish stops the load, waits for every job to end, and returns the
// history: the acknowledgements, the workers' starts, the store's jobs.
func (r *haRecorder) finish(t *testing.T, c *haCluster) haHistory {
	t.Helper()
	r.halt()
	r.mu.Lock()
	failed := slices.Clone(r.failed)
	h := haHistory{}
	for _, a := range r.acks {
		h.Acks = append(h.Acks, a.haAck)
	}
	r.mu.Unlock()
	for _, f := range failed {
		t.Errorf("a StartJob was refused, or not answered in %s of tries with its key: %s", haKeyPatience, f)
	}
	jobs := waitJobsEnded(t, c, 30*time.Second)
	for _, j := range jobs {
		h.Jobs = append(h.Jobs, haJob{JobID: j.GetJobId(), Key: j.GetSpec().GetLabels()[haKeyLabel], State: j.GetState(), Reason: j.GetReason()})
	}
	starts, err := c.workerStarts()
	if err != nil {
		t.Fatal(err)
	}
	h.Starts = starts
	return h
}

// waitJobsEnded waits up to d until no job in the store is waiting or
// running, and returns the store's jobs; it reports the ones that did
// not end.
func waitJobsEnded(t *testing.T, c *haCluster, d time.Duration) []*batonv1.JobStatus {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		jobs, err := c.listJobs(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var open []string
		for _, j := range jobs {
			switch j.GetState() {
			case batonv1.JobState_JOB_STATE_PENDING, batonv1.JobState_JOB_STATE_QUEUED, batonv1.JobState_JOB_STATE_RUNNING:
				open = append(open, j.GetJobId()+" "+j.GetState().String())
			}
		}
		if len(open) == 0 {
			return jobs
		}
		if time.Now().After(deadline) {
			t.Errorf("%d jobs have not ended %s after the load stopped: %s", len(open), d, strings.Join(open, ", "))
			return jobs
		}
		time.Sleep(200 * time.Millisecond)
	}
}
