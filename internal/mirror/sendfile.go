package mirror

import (
	"io"
	"net"
	"os"
)

// fileSpanner is a source whose bytes are in a file that grows (a download in flight): span
// waits for readable bytes and says where they are (at most max), sent records what went out.
type fileSpanner interface {
	span(max int64) (f *os.File, off, n int64, err error)
	sent(n int64)
}

// SendFrom is the mirror connections' ReadFrom (guard.Options.SendFrom): a stored blob and a
// download in flight go out with sendfile(2), from under the one io.LimitedReader net/http
// wraps them in. It reports false when it sent nothing (the connection then copies).
func SendFrom(c net.Conn, r io.Reader) (int64, bool, error) {
	src, limit := r, int64(-1)
	lr, _ := r.(*io.LimitedReader)
	if lr != nil {
		src, limit = lr.R, lr.N
	}
	var (
		n       int64
		handled bool
		err     error
	)
	switch s := src.(type) {
	case *os.File: // a stored blob (sendfile_linux.go)
		if limit > 0 {
			n, handled, err = sendFile(c, s, limit)
		}
	case fileSpanner: // a download in flight, sent from its temporary file as it grows
		n, handled, err = sendSpans(c, s, limit)
	}
	if handled && lr != nil {
		lr.N -= n
	}
	return n, handled, err
}
