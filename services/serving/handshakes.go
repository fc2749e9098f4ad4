package serving

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// handshakeLog is the http.Server's error log. A refused TLS handshake
// (net/http writes "http: TLS handshake error from PEER: ERR") becomes one
// warning naming the peer and, in words an operator acts on, the reason;
// at most one a minute for each peer address, so a client retrying in a
// loop does not flood the log. Every line, refusals included, is also
// logged as it came at debug level.
type handshakeLog struct {
	logger *slog.Logger
	now    func() time.Time

	mu   sync.Mutex
	last map[string]handshakeSeen // by peer IP
}

type handshakeSeen struct {
	at         time.Time
	suppressed int
}

const (
	handshakeLogEvery = time.Minute
	// maxHandshakeLine bounds a logged handshake error; maxHandshakePeers
	// the peers remembered for the rate limit.
	maxHandshakeLine  = 512
	maxHandshakePeers = 10000
)

func newHandshakeLog(logger *slog.Logger) *handshakeLog {
	return &handshakeLog{logger: logger, now: time.Now, last: make(map[string]handshakeSeen)}
}

func (h *handshakeLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	// The peer chooses much of this text (an offered protocol list is
	// quoted in it): bounded, and valid UTF-8, before it is logged.
	if len(line) > maxHandshakeLine {
		line = line[:maxHandshakeLine] + "…"
	}
	line = strings.ToValidUTF8(line, "\uFFFD")
	rest, ok := strings.CutPrefix(line, "http: TLS handshake error from ")
	if !ok {
		h.logger.Debug(line)
		return len(p), nil
	}
	// Every refusal at debug level, as it came; the warning below is
	// rate-limited.
	h.logger.Debug(line)
	peer, cause, _ := strings.Cut(rest, ": ")
	ip := peer
	if host, _, err := net.SplitHostPort(peer); err == nil {
		ip = host
	}
	now := h.now()
	h.mu.Lock()
	seen := h.last[ip]
	if !seen.at.IsZero() && now.Sub(seen.at) < handshakeLogEvery {
		seen.suppressed++
		h.last[ip] = seen
		h.mu.Unlock()
		return len(p), nil
	}
	h.last[ip] = handshakeSeen{at: now}
	if len(h.last) > maxHandshakePeers {
		for k, v := range h.last {
			if now.Sub(v.at) >= handshakeLogEvery {
				delete(h.last, k)
			}
		}
		if len(h.last) > maxHandshakePeers {
			// Many peers within the minute (a scan, or one host with many
			// addresses): start afresh rather than grow.
			clear(h.last)
		}
	}
	h.mu.Unlock()
	attrs := []slog.Attr{slog.String("peer", peer), slog.String("reason", handshakeReason(cause)), slog.String("error", cause)}
	if seen.suppressed > 0 {
		attrs = append(attrs, slog.Int("refused_since_last_logged", seen.suppressed))
	}
	h.logger.LogAttrs(context.Background(), slog.LevelWarn, "refused a TLS handshake", attrs...)
	return len(p), nil
}

// handshakeReason says in words what a handshake error means for the
// operator: the same cause always gives the same words.
func handshakeReason(err string) string {
	switch {
	case strings.Contains(err, "didn't provide a certificate"), strings.Contains(err, "certificate required"):
		return "the client sent no certificate: this port takes a client certificate of the cluster"
	case strings.Contains(err, "signed by unknown authority"):
		return "the client's certificate is not signed by this cluster's CA"
	case strings.Contains(err, "certificate has expired"), strings.Contains(err, "not yet valid"):
		return "the client's certificate has expired or is not valid yet"
	case strings.Contains(err, "first record does not look like a TLS handshake"),
		strings.Contains(err, "client sent an HTTP request to an HTTPS server"):
		return "the client spoke plain HTTP to this TLS port: it should use https (set its ca_file)"
	case strings.Contains(err, "bad certificate"), strings.Contains(err, "unknown certificate authority"):
		return "the client refused this server's certificate: it does not trust the CA that signed it, or the name it dialled is not in it"
	case strings.Contains(err, "EOF"), strings.Contains(err, "connection reset"):
		return "the client hung up during the handshake: it may not trust this server's certificate"
	case strings.Contains(err, "protocol version"):
		return "the client does not speak TLS 1.3"
	}
	return "the handshake failed"
}
