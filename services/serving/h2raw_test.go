package serving_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// A hostile HTTP/2 peer needs frames written by hand: Go's own client obeys
// the server's settings (stream limit, header list size), which is exactly
// what the hardening tests must not rely on. This speaks just enough
// HTTP/2 (RFC 9113) and HPACK (RFC 7541) for them: no flow control, no
// header decoding.

// HTTP/2 frame types and flags used here.
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePing         = 0x6
	frameGoAway       = 0x7
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
)

// HTTP/2 error codes the server may reset a stream with.
const (
	errCodeProtocol      = 0x1
	errCodeRefusedStream = 0x7
)

// h2Frame is one frame read from the server.
type h2Frame struct {
	typ, flags byte
	stream     uint32
	payload    []byte
}

// errorCode is the code of a RST_STREAM or GOAWAY frame.
func (f h2Frame) errorCode() uint32 {
	switch {
	case f.typ == frameRSTStream && len(f.payload) >= 4:
		return binary.BigEndian.Uint32(f.payload)
	case f.typ == frameGoAway && len(f.payload) >= 8:
		return binary.BigEndian.Uint32(f.payload[4:])
	}
	return 0
}

// h2Conn is a raw HTTP/2 client connection over h2c (prior knowledge). Its
// writes are serialized; one goroutine reads.
type h2Conn struct {
	conn net.Conn
	br   *bufio.Reader
	mu   sync.Mutex // serializes writes
}

// dialH2 connects, sends the client preface and empty SETTINGS.
func dialH2(t *testing.T, addr string) *h2Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := &h2Conn{conn: conn, br: bufio.NewReader(conn)}
	if _, err := io.WriteString(conn, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.writeFrame(frameSettings, 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *h2Conn) writeFrame(typ, flags byte, stream uint32, payload []byte) error {
	if len(payload) >= 1<<24 {
		return fmt.Errorf("frame payload of %d bytes", len(payload))
	}
	hdr := make([]byte, 9, 9+len(payload))
	hdr[0], hdr[1], hdr[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	hdr[3], hdr[4] = typ, flags
	binary.BigEndian.PutUint32(hdr[5:], stream&0x7fffffff)
	c.mu.Lock()
	defer c.mu.Unlock()
	// A test must never hang on a server that stopped reading.
	_ = c.conn.SetWriteDeadline(time.Now().Add(waitTimeout))
	_, err := c.conn.Write(append(hdr, payload...))
	return err
}

// readFrame reads the next frame, acknowledging SETTINGS and PING as a
// client must.
func (c *h2Conn) readFrame() (h2Frame, error) {
	var hdr [9]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		return h2Frame{}, err
	}
	f := h2Frame{
		typ:    hdr[3],
		flags:  hdr[4],
		stream: binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff,
	}
	f.payload = make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
	if _, err := io.ReadFull(c.br, f.payload); err != nil {
		return h2Frame{}, err
	}
	switch {
	case f.typ == frameSettings && f.flags&flagAck == 0:
		if err := c.writeFrame(frameSettings, flagAck, 0, nil); err != nil {
			return h2Frame{}, err
		}
	case f.typ == framePing && f.flags&flagAck == 0:
		if err := c.writeFrame(framePing, flagAck, 0, f.payload); err != nil {
			return h2Frame{}, err
		}
	}
	return f, nil
}

// hpackField encodes a header field as a literal without indexing, with a
// literal name and no Huffman coding (RFC 7541 §6.2.2): it leaves the
// server's dynamic table alone, so fields can be encoded independently.
func hpackField(name, value string) []byte {
	b := []byte{0x00}
	b = hpackString(b, name)
	return hpackString(b, value)
}

func hpackString(b []byte, s string) []byte {
	b = hpackInt(b, 0x00, 7, uint64(len(s)))
	return append(b, s...)
}

// hpackInt appends an integer with an n-bit prefix (RFC 7541 §5.1); flags
// are the first byte's bits above the prefix.
func hpackInt(b []byte, flags byte, n uint, v uint64) []byte {
	limit := uint64(1)<<n - 1
	if v < limit {
		return append(b, flags|byte(v))
	}
	b = append(b, flags|byte(limit))
	v -= limit
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// getRequest encodes the header block of a GET request for path.
func getRequest(authority, path string) []byte {
	var b []byte
	b = append(b, hpackField(":method", "GET")...)
	b = append(b, hpackField(":scheme", "http")...)
	b = append(b, hpackField(":authority", authority)...)
	b = append(b, hpackField(":path", path)...)
	return b
}
