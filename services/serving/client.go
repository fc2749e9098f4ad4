package serving

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// NewHTTPClient returns an HTTP client for calling Baton services: h2c
// (HTTP/2 with prior knowledge) when tlsConf is nil, HTTP/2 over TLS
// otherwise. Connections are pooled and reused; the client is safe for
// concurrent use.
func NewHTTPClient(tlsConf *tls.Config) *http.Client {
	var protocols http.Protocols
	transport := &http.Transport{
		Protocols:           &protocols,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: pingAfter,
			PingTimeout:     pingAckTimeout,
			// Output streams are bulk data: large frames and windows cut
			// the number of frames and window updates per megabyte.
			MaxReadFrameSize:              1 << 20,
			MaxReceiveBufferPerStream:     4 << 20,
			MaxReceiveBufferPerConnection: 16 << 20,
		},
	}
	if tlsConf == nil {
		protocols.SetUnencryptedHTTP2(true)
	} else {
		protocols.SetHTTP2(true)
		// HTTP/2 transports modify their tls.Config: each gets its own copy.
		transport.TLSClientConfig = tlsConf.Clone()
		transport.ForceAttemptHTTP2 = true
	}
	return &http.Client{Transport: transport}
}

// BaseURL turns a host:port into the URL a Connect client wants.
func BaseURL(addr string, useTLS bool) string {
	if useTLS {
		return "https://" + addr
	}
	return "http://" + addr
}
