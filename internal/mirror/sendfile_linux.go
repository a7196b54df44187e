package mirror

import (
	"errors"
	"io"
	"math"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
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
// the scheduler; nginx 732 sendfile). Here a short send waits for the socket to drain first
// unless poll says it is writable again, as nginx does: ~710 sendfile calls, no EAGAIN. It costs an fstat and an lseek per call (one
// call per write-deadline step of 8 MiB). The write deadline set on c still applies
// (RawConn.Write honours it).
func sendFile(c net.Conn, f *os.File, n int64) (written int64, handled bool, err error) {
	dst, ok := rawConn(c)
	if !ok {
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
		written, serr = sendLoop(dst, int(sfd), nil, min(n, st.Size-pos))
		if serr == nil && written < n {
			serr = io.ErrUnexpectedEOF // the file is shorter than announced
		}
	})
	if cerr != nil && serr == nil {
		serr = cerr
	}
	if written == 0 && unsupported(serr) {
		return 0, false, nil // this file cannot be sent with sendfile: copy it
	}
	return written, true, serr
}

// sendSpans sends a download in flight (a fill's temporary file) to c with sendfile(2) as its
// bytes become readable, up to limit bytes (-1: to the end). It reports false when it could
// not send anything this way; the caller then copies.
func sendSpans(c net.Conn, src fileSpanner, limit int64) (total int64, handled bool, err error) {
	dst, ok := rawConn(c)
	if !ok {
		return 0, false, nil
	}
	for limit < 0 || total < limit {
		max := int64(math.MaxInt64)
		if limit >= 0 {
			max = limit - total
		}
		f, off, n, err := src.span(max)
		if err == io.EOF {
			return total, true, nil
		}
		if err != nil {
			return total, true, err
		}
		fc, err := f.SyscallConn()
		if err != nil {
			return total, total > 0, err
		}
		var k int64
		var serr error
		if cerr := fc.Control(func(sfd uintptr) { k, serr = sendLoop(dst, int(sfd), &off, n) }); cerr != nil && serr == nil {
			serr = cerr
		}
		if serr == nil && k < n {
			serr = io.ErrUnexpectedEOF
		}
		src.sent(k)
		total += k
		if serr != nil {
			if total == 0 && unsupported(serr) {
				return 0, false, nil
			}
			return total, true, serr
		}
	}
	return total, true, nil
}

// sendLoop sends n bytes of the file sfd (at *off, or at its own offset when off is nil) to
// dst, waiting whenever the socket buffer is full. The bytes must be in the file.
func sendLoop(dst syscall.RawConn, sfd int, off *int64, n int64) (written int64, err error) {
	var serr error
	err = dst.Write(func(dfd uintptr) bool {
		for written < n {
			chunk := int(min(n-written, sendfileChunk))
			k, err := syscall.Sendfile(int(dfd), sfd, off, chunk)
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
				return true // the file shrank under us: the caller reports it
			case k < chunk:
				// Usually the socket buffer is full, but a signal (Go preempts goroutines with
				// SIGURG) can cut a send short too, and then no wake-up would come: waiting
				// could stall the client until the write deadline. Ask the socket; when it is
				// not writable, the kernel has flagged it to wake us once it drains.
				if socketWritable(int(dfd)) {
					continue
				}
				return false
			}
		}
		return true
	})
	if serr != nil {
		err = serr
	}
	return written, err
}

// socketWritable polls fd for POLLOUT without waiting (an error counts as writable: the next
// send reports it).
func socketWritable(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(pfd, 0)
	return err != nil || (n > 0 && pfd[0].Revents != 0)
}

func rawConn(c net.Conn) (syscall.RawConn, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	return rc, err == nil
}

// unsupported: sendfile cannot send from this file or to this socket.
func unsupported(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EOPNOTSUPP)
}
