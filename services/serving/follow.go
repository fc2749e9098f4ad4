package serving

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"time"
)

// LeaderHeader is the response header with which a scheduler replica that
// is not the leader refuses a call: its value is the leader's client
// address (host:port). Empty, it says the replica knows no leader. A
// replica sets it on the HTTP response itself: Connect error metadata
// travels in trailers (gRPC) or in the stream's end (Connect streams),
// where it would come too late to send the request elsewhere.
const LeaderHeader = "Baton-Leader"

// Following the leader: a request is tried at most followRounds times as
// many times as there are addresses; after each len(addrs) tries that
// found no leader it waits, from followFirstWait doubling up to
// followMaxWait, which rides out most of an election (about 2 s) without
// holding a caller for long.
const (
	followRounds    = 4
	followFirstWait = 200 * time.Millisecond
	followMaxWait   = time.Second
	// MaxReplayBytes caps the request body kept to send a request again:
	// one message of MaxMessageBytes and its envelope.
	MaxReplayBytes = MaxMessageBytes + 1<<10
	// maxRefusalBytes caps what is read of a stream to learn whether it
	// is a refusal; a refusal's end is a few hundred bytes.
	maxRefusalBytes = 16 << 10
)

// FollowLeader returns a RoundTripper that sends each request to the
// scheduler replica it believes leads, among addrs (host:port each; the
// first is believed to lead at start), through base. A request whose
// URL names another host passes through base untouched.
//
// It sends a request again, to another address, only when the first
// could not have acted on it:
//
//   - the address could not be dialled (refused, no route, no such name,
//     a failed TLS handshake): no connection carried the request, so the
//     next address is tried;
//   - a replica refused it with LeaderHeader and code unavailable: the
//     request goes to the leader it names, and the next requests too.
//
// Any other answer or failure is returned as it is, so that a call that
// may have reached a scheduler never runs twice. A request that went out
// and got no answer (its deadline passed, its connection was lost) is
// not sent again either, but the next requests go first to the next
// address: a leader cut off from the network holds a connection that
// swallows requests until HTTP/2's keepalive finds it dead, a minute or
// more, while the replicas still reachable name the leader elected
// meanwhile (or send the requests back, if it is alive). The leader a refusal
// names is followed only when it is one of addrs: a replica's header
// cannot make the client send a request, or the token it carries, to a
// host it was not configured with. A refusal naming another address, or
// none, sends the request to the next address instead.
//
// A request is sent again only when its body is at most MaxReplayBytes
// and of known length, as Connect's unary and server-streaming calls
// are; other requests, client and bidirectional streams among them (their
// bodies are sent as they are written), get one try, to the believed
// leader.
//
// Tries are bounded (followRounds passes over addrs) and honour the
// request's context. The RoundTripper is safe for concurrent use.
func FollowLeader(base http.RoundTripper, addrs []string) (http.RoundTripper, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no scheduler address to follow")
	}
	f := &follower{base: base, addrs: make([]string, len(addrs))}
	for i, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("scheduler address %q is not host:port", a)
		}
		f.addrs[i] = net.JoinHostPort(strings.ToLower(host), port)
	}
	return f, nil
}

// follower is FollowLeader's RoundTripper.
type follower struct {
	base  http.RoundTripper
	addrs []string
	// leader is the index in addrs of the replica believed to lead.
	leader atomic.Int32
}

// index returns the position of addr in f.addrs, or -1.
func (f *follower) index(addr string) int {
	host, port, err := net.SplitHostPort(strings.TrimSpace(addr))
	if err != nil {
		return -1
	}
	addr = net.JoinHostPort(strings.ToLower(host), port)
	for i, a := range f.addrs {
		if a == addr {
			return i
		}
	}
	return -1
}

// RoundTrip sends req to the believed leader and follows refusals and
// dead addresses as FollowLeader says.
func (f *follower) RoundTrip(req *http.Request) (*http.Response, error) {
	if f.index(req.URL.Host) < 0 {
		return f.base.RoundTrip(req)
	}
	body, replayable, err := replayBody(req)
	if err != nil {
		return nil, err
	}
	ctx := req.Context()
	at := int(f.leader.Load())
	if !replayable {
		res, err := f.send(req, at, nil)
		if err == nil {
			f.learn(at, res)
		} else {
			f.unanswered(ctx, at)
		}
		return res, err
	}
	wait := followFirstWait
	for hop := 1; ; hop++ {
		var connected atomic.Bool
		trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { connected.Store(true) }}
		res, err := f.send(req.WithContext(httptrace.WithClientTrace(ctx, trace)), at, body)
		last := hop >= followRounds*len(f.addrs)
		if err != nil {
			// A connection was had: the request may have gone out.
			if connected.Load() || ctx.Err() != nil || last {
				f.unanswered(ctx, at)
				return nil, err
			}
			at = (at + 1) % len(f.addrs)
		} else {
			leader, refused := refusal(res)
			if !refused {
				f.leader.Store(int32(at))
				return res, nil
			}
			if last {
				return res, nil
			}
			drain(res)
			if next := f.index(leader); next >= 0 && next != at {
				f.leader.Store(int32(next))
				at = next
			} else {
				at = (at + 1) % len(f.addrs)
			}
		}
		if hop%len(f.addrs) == 0 {
			// As many tries as addresses found no leader: an election may
			// be under way, or the leader named has just died.
			if err := sleepCtx(ctx, wait); err != nil {
				return nil, err
			}
			wait = min(2*wait, followMaxWait)
		}
	}
}

// unanswered moves the next requests on from the address at, which did
// not answer a request, unless its caller gave up on it.
func (f *follower) unanswered(ctx context.Context, at int) {
	if errors.Is(ctx.Err(), context.Canceled) {
		return
	}
	f.leader.CompareAndSwap(int32(at), int32((at+1)%len(f.addrs)))
}

// learn remembers the leader a refusal names, for the next requests.
func (f *follower) learn(at int, res *http.Response) {
	leader, refused := refusal(res)
	if !refused {
		f.leader.Store(int32(at))
	} else if next := f.index(leader); next >= 0 {
		f.leader.Store(int32(next))
	}
}

// send sends req to f.addrs[at], with body when it is replayable (nil:
// req's own body, sent once).
func (f *follower) send(req *http.Request, at int, body []byte) (*http.Response, error) {
	addr := f.addrs[at]
	out := req.Clone(req.Context())
	out.URL.Host = addr
	if req.Host == "" || req.Host == req.URL.Host {
		out.Host = addr
	}
	if body != nil {
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		out.ContentLength = int64(len(body))
	}
	return f.base.RoundTrip(out)
}

// CloseIdleConnections closes the idle connections of the transport
// beneath, so that http.Client.CloseIdleConnections reaches it.
func (f *follower) CloseIdleConnections() {
	if c, ok := f.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// replayBody reads req's body so that it can be sent again: every byte
// when its length is known and at most MaxReplayBytes. A body of unknown
// length is a stream the caller is still writing (connect-go's client
// and bidirectional streams): it is left alone, not replayable. The
// returned body is non-nil when replayable.
func replayBody(req *http.Request) ([]byte, bool, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return []byte{}, true, nil
	}
	if req.ContentLength <= 0 || req.ContentLength > MaxReplayBytes {
		return nil, false, nil
	}
	body := make([]byte, req.ContentLength)
	_, err := io.ReadFull(req.Body, body)
	_ = req.Body.Close()
	if err != nil {
		return nil, false, fmt.Errorf("reading the request body: %w", err)
	}
	return body, true, nil
}

// refusal reports whether res is a replica's refusal: LeaderHeader and
// code unavailable, in whichever protocol the call used, and the leader
// the header names. A response carrying the header with any other answer
// is not a refusal, and is returned to the caller.
func refusal(res *http.Response) (leader string, refused bool) {
	values := res.Header.Values(LeaderHeader)
	if len(values) == 0 {
		return "", false
	}
	leader = strings.TrimSpace(values[0])
	if status := res.Header.Get("Grpc-Status"); status != "" {
		// An error before any message, in the headers ("trailers-only"),
		// as gRPC-Web servers answer.
		return leader, status == grpcUnavailable
	}
	contentType := res.Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(contentType, "application/grpc-web"):
		return leader, grpcWebUnavailable(res)
	case strings.HasPrefix(contentType, "application/grpc"):
		return leader, grpcUnavailable == grpcTrailerStatus(res)
	case strings.HasPrefix(contentType, "application/connect+"):
		return leader, connectStreamUnavailable(res)
	}
	// Connect unary: the error is the body, and unavailable is 503.
	return leader, res.StatusCode == http.StatusServiceUnavailable
}

// grpcUnavailable is code unavailable in a grpc-status.
const grpcUnavailable = "14"

// Envelope flags of the streaming protocols.
const (
	flagCompressed = 0b1
	flagEndStream  = 0b10       // Connect: the end of the stream, in JSON
	flagTrailers   = 0b10000000 // gRPC-Web: the trailers, as header lines
)

// grpcTrailerStatus returns the grpc-status of a gRPC response with no
// message: net/http has its trailers once the empty body is read. It
// returns "" when a message comes first.
func grpcTrailerStatus(res *http.Response) string {
	var one [1]byte
	n, err := io.ReadFull(res.Body, one[:])
	res.Body = prepend(one[:n], res.Body)
	if n > 0 || err != io.EOF {
		return ""
	}
	return res.Trailer.Get("Grpc-Status")
}

// grpcWebUnavailable reports whether a gRPC-Web response's first envelope
// is its trailers with status unavailable.
func grpcWebUnavailable(res *http.Response) bool {
	flags, payload, ok := peekEnvelope(res)
	if !ok || flags&flagTrailers == 0 {
		return false
	}
	if payload, ok = uncompressed(flags, payload, res.Header.Get("Grpc-Encoding")); !ok {
		return false
	}
	for line := range strings.SplitSeq(string(payload), "\r\n") {
		name, value, _ := strings.Cut(line, ":")
		if strings.EqualFold(strings.TrimSpace(name), "grpc-status") {
			return strings.TrimSpace(value) == grpcUnavailable
		}
	}
	return false
}

// connectStreamUnavailable reports whether a Connect stream's first
// envelope ends it with code unavailable.
func connectStreamUnavailable(res *http.Response) bool {
	flags, payload, ok := peekEnvelope(res)
	if !ok || flags&flagEndStream == 0 {
		return false
	}
	if payload, ok = uncompressed(flags, payload, res.Header.Get("Connect-Content-Encoding")); !ok {
		return false
	}
	var end struct {
		Error *struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	return json.Unmarshal(payload, &end) == nil && end.Error != nil && end.Error.Code == "unavailable"
}

// uncompressed returns an envelope's payload uncompressed (bounded),
// when it is not compressed or compressed with gzip, the one encoding
// connect-go's servers use.
func uncompressed(flags byte, payload []byte, encoding string) ([]byte, bool) {
	if flags&flagCompressed == 0 {
		return payload, true
	}
	if encoding != "gzip" {
		return nil, false
	}
	zr, err := gzip.NewReader(bytes.NewReader(payload))
	if err != nil {
		return nil, false
	}
	payload, err = io.ReadAll(io.LimitReader(zr, maxRefusalBytes))
	return payload, err == nil
}

// peekEnvelope reads the first envelope of a streaming response (flags,
// length, payload) when it is at most maxRefusalBytes. What it reads is
// put back in front of res.Body, so the caller reads the stream whole
// either way.
func peekEnvelope(res *http.Response) (flags byte, payload []byte, ok bool) {
	var prefix [5]byte
	n, err := io.ReadFull(res.Body, prefix[:])
	read := append([]byte(nil), prefix[:n]...)
	defer func() { res.Body = prepend(read, res.Body) }()
	size := binary.BigEndian.Uint32(prefix[1:])
	if err != nil || size > maxRefusalBytes {
		return 0, nil, false
	}
	payload = make([]byte, size)
	m, err := io.ReadFull(res.Body, payload)
	read = append(read, payload[:m]...)
	return prefix[0], payload, err == nil
}

// prepend returns body with read in front of what is left of it.
func prepend(read []byte, body io.ReadCloser) io.ReadCloser {
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(read), body), body}
}

// drain reads what is left of a refusal (bounded) and closes it, so that
// its connection serves the next try.
func drain(res *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, maxRefusalBytes))
	_ = res.Body.Close()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
