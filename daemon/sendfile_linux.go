package daemon

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// sendfileChunk bounds one sendfile call, as nginx's sendfile_max_chunk (2m) does: the
// kernel fills the socket buffer with at most this much before the loop looks again.
const sendfileChunk = 2 << 20

// sendFile sends n bytes of f, from its current offset, to c with sendfile(2), and reports
// whether it could (false: nothing was sent, the caller copies instead).
//
// Go's own loop (internal/poll.SendFile) calls sendfile again right after a short send and so
// makes twice the calls nginx makes for the same bytes: the second call finds the socket buffer
// still nearly full, sends a sliver or gets EAGAIN, and the goroutine parks anyway (strace -c of
// one cached 1 GiB GET: 1762 sendfile calls, 393 EAGAIN, ~1000 futex and ~1350 nanosleep from
// the scheduler; nginx 732 sendfile). Here a short send waits for the socket to drain first,
// as nginx does: 708 sendfile calls, no EAGAIN. It costs an fstat and an lseek per call (one
// call per write-deadline step of 8 MiB). The write deadline set on c still applies
// (RawConn.Write honours it).
func sendFile(c net.Conn, f *os.File, n int64) (written int64, handled bool, err error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, false, nil
	}
	dst, err := sc.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	src, err := f.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	var serr error
	cerr := src.Control(func(sfd uintptr) {
		// A short send must mean a full socket buffer (the kernel then flags the socket to
		// wake us when it drains), never the end of the file: send at most what the file has.
		var st syscall.Stat_t
		if serr = syscall.Fstat(int(sfd), &st); serr != nil {
			return
		}
		pos, err := syscall.Seek(int(sfd), 0, io.SeekCurrent)
		if serr = err; serr != nil {
			return
		}
		span := min(n, st.Size-pos)
		err = dst.Write(func(dfd uintptr) bool {
			for written < span {
				chunk := int(min(span-written, sendfileChunk))
				k, err := syscall.Sendfile(int(dfd), int(sfd), nil, chunk)
				if k > 0 {
					written += int64(k)
				}
				switch {
				case errors.Is(err, syscall.EINTR):
					continue
				case errors.Is(err, syscall.EAGAIN):
					return false // wait until the socket is writable
				case err != nil:
					serr = err
					return true
				case k == 0:
					return true // the file shrank under us: reported below
				case k < chunk:
					return false // the socket buffer is full: wait for it to drain
				}
			}
			return true
		})
		if serr == nil {
			serr = err
		}
		if serr == nil && written < n {
			serr = io.ErrUnexpectedEOF // the file is shorter than announced
		}
	})
	if cerr != nil && serr == nil {
		serr = cerr
	}
	if serr != nil && written == 0 && (errors.Is(serr, syscall.EINVAL) || errors.Is(serr, syscall.ENOSYS)) {
		return 0, false, nil // this file cannot be sent with sendfile: copy it
	}
	return written, true, serr
}
