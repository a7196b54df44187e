package mirror

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// byteRange is a single satisfiable range [start, end] (inclusive), as HTTP writes it.
type byteRange struct{ start, end int64 }

var errRangeInvalid = errors.New("invalid range")

// parseRange reads a Range header for content of the given size (size < 0: unknown yet).
// It returns nil for "no range" (absent, or several ranges, which RFC 9110 lets a server
// ignore). A malformed or unsatisfiable single range is an error that must become 416.
func parseRange(h string, size int64) (*byteRange, error) {
	if h == "" {
		return nil, nil
	}
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return nil, fmt.Errorf("%w: %q: only bytes ranges are supported", errRangeInvalid, h)
	}
	if strings.Contains(spec, ",") {
		return nil, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return nil, fmt.Errorf("%w: %q", errRangeInvalid, h)
	}
	num := func(s string) (int64, bool) {
		if s == "" || len(s) > 19 || strings.Trim(s, "0123456789") != "" {
			return 0, false
		}
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err == nil
	}
	var r byteRange
	switch {
	case first == "": // suffix range: the last N bytes
		n, ok := num(last)
		if !ok || n == 0 {
			return nil, fmt.Errorf("%w: %q", errRangeInvalid, h)
		}
		if size < 0 {
			return nil, fmt.Errorf("%w: %q: suffix range on content of unknown size", errRangeInvalid, h)
		}
		r = byteRange{start: max(0, size-n), end: size - 1}
	default:
		a, ok := num(first)
		if !ok {
			return nil, fmt.Errorf("%w: %q", errRangeInvalid, h)
		}
		r = byteRange{start: a, end: -1}
		if last != "" {
			b, ok := num(last)
			if !ok || b < a {
				return nil, fmt.Errorf("%w: %q", errRangeInvalid, h)
			}
			r.end = b
		}
	}
	if size >= 0 {
		if r.start >= size {
			return nil, fmt.Errorf("%w: %q: content is %d bytes", errRangeInvalid, h, size)
		}
		if r.end < 0 || r.end >= size {
			r.end = size - 1
		}
	}
	return &r, nil
}

// setRangeHeaders writes the headers of a 206 answer.
func setRangeHeaders(h http.Header, r *byteRange, size int64) {
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", r.start, r.end, size))
	h.Set("Content-Length", strconv.FormatInt(r.end-r.start+1, 10))
}
