package p2p

import (
	"bufio"
	"errors"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// blobConn is the serving side of one exchange of the blob protocol, on a libp2p stream
// (streamConn) or on a direct connection (directConn): serveBlob is written once against it.
// Response lines go out with Write; the body with writeBody; then exactly one of end,
// cutShort, retract or reset finishes the exchange.
type blobConn interface {
	io.ReadWriter
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	remotePeer() peer.ID
	// protocol is the blob protocol version spoken (blobProtocolGrant answers GRANTED).
	protocol() protocol.ID
	// writeBody sends frame[frameHeader:] as body bytes; frame[:frameHeader] is room the
	// connection may use for its framing. It returns the body bytes written.
	writeBody(frame []byte) (int, error)
	// end finishes an exchange whose answer is complete; keep says the connection may carry
	// the next request (a direct connection then stays open for it).
	end(keep bool)
	// complete finishes an exchange whose whole body went out: it returns once the asker has
	// it (a direct connection waits for the asker's DONE line, as a stream's writes wait for
	// the asker's window), so an upload counts until then (Config.MaxUploadsPerBlob). It
	// reports whether the asker said it has the body (a stream: whether the writes went out).
	complete() bool
	// cutShort ends a body before its announced size: the asker sees io.ErrUnexpectedEOF and
	// keeps what it got.
	cutShort()
	// retract takes back the body bytes sent (the asker gets ErrRetracted).
	retract()
	// reset aborts the exchange and its connection or stream.
	reset()
}

// blobClient is the asking side of one exchange (fetch, blobReader).
type blobClient interface {
	io.Writer
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	protocol() protocol.ID
	// requestSent tells the peer no more request bytes follow (a stream half-closes).
	requestSent()
	// lineReader reads the response lines.
	lineReader() *bufio.Reader
	// bodyReader reads the body after the response lines.
	bodyReader() io.Reader
	// received tells the peer the whole body arrived (a direct connection sends DONE).
	received()
	// release ends an exchange that completed (a direct connection goes back to the pool).
	release(ok bool) error
	// reset aborts, from any goroutine.
	reset()
}

// streamConn is a libp2p stream as one exchange of the blob protocol (both sides).
type streamConn struct {
	network.Stream
	br *bufio.Reader // client side: what lineReader made
}

var (
	_ blobConn   = (*streamConn)(nil)
	_ blobClient = (*streamConn)(nil)
)

func (s *streamConn) remotePeer() peer.ID             { return s.Conn().RemotePeer() }
func (s *streamConn) protocol() protocol.ID           { return s.Protocol() }
func (s *streamConn) writeBody(f []byte) (int, error) { return s.Write(f[frameHeader:]) }
func (s *streamConn) retract()                        { _ = s.ResetWithError(retractCode) }
func (s *streamConn) reset()                          { _ = s.Reset() }
func (s *streamConn) requestSent()                    { _ = s.CloseWrite() }
func (s *streamConn) complete() bool                  { s.end(true); return true }
func (s *streamConn) received()                       {}

func (s *streamConn) end(bool) {
	_ = s.CloseWrite()
	_ = s.Close()
}

// cutShort closes cleanly rather than resets: a reset would make yamux drop what is still
// buffered, and the asker knows the size anyway.
func (s *streamConn) cutShort() { s.end(false) }

func (s *streamConn) lineReader() *bufio.Reader {
	s.br = bufio.NewReaderSize(s.Stream, 64<<10)
	return s.br
}

func (s *streamConn) bodyReader() io.Reader { return streamBody{s} }

func (s *streamConn) release(bool) error { return s.Close() }

// streamBody reads what the line reader buffered, then the stream directly: yamux buffers
// anyway, and bufio would copy every read shorter than its buffer once more.
type streamBody struct{ s *streamConn }

func (b streamBody) Read(p []byte) (int, error) {
	if b.s.br.Buffered() > 0 {
		return b.s.br.Read(p)
	}
	return b.s.Stream.Read(p)
}

// isRetract reports whether a body read failed because the sender retracted its bytes.
func isRetract(err error) bool {
	var se *network.StreamError
	return errors.As(err, &se) && se.Remote && se.ErrorCode == retractCode || errors.Is(err, errFrameRetract)
}
