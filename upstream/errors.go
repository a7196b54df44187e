package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrUnknownRegistry is returned for a registry host shoal will not contact: one not named
// in the configuration when OnlyConfigured is set, or an unnamed host that is an IP literal,
// a loopback or private name, or not a host name at all.
var ErrUnknownRegistry = errors.New("unknown or refused upstream registry")

// ErrDigestMismatch is returned when upstream bytes do not hash to the digest asked for.
var ErrDigestMismatch = errors.New("upstream content does not match its digest")

// ErrManifestTooLarge is returned for a manifest larger than oci.MaxManifestSize.
var ErrManifestTooLarge = errors.New("upstream manifest too large")

// ErrRefused is returned when a token realm or a redirect points somewhere shoal must not go
// (another site, a private or link-local address, a scheme downgrade).
var ErrRefused = errors.New("upstream target refused")

// maxErrorBody bounds how much of a non-2xx body is read to find the OCI error code.
const maxErrorBody = 64 << 10

// Error is an upstream reply that is not a success. Status is the upstream's HTTP status;
// Code the first OCI error code of its body, if any. Error() never contains credentials,
// tokens or request headers.
type Error struct {
	Host       string
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
}

// Error says which upstream answered what; it is safe to show to clients and logs.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream %s: %d %s", e.Host, e.Status, http.StatusText(e.Status))
	if e.Code != "" {
		b.WriteString(": " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	return b.String()
}

// newError builds an *Error from a non-2xx response, reading a bounded part of its body and
// closing it.
func newError(host string, resp *http.Response, now time.Time) *Error {
	e := &Error{Host: host, Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), now)}
	if resp.Body != nil {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		e.Code, e.Message = parseOCIError(body)
	}
	return e
}

// parseOCIError returns the first code and message of an OCI error body
// ({"errors":[{"code":…,"message":…}]}), or empty strings.
func parseOCIError(body []byte) (code, message string) {
	var doc struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &doc) != nil || len(doc.Errors) == 0 {
		return "", ""
	}
	return ociCode(doc.Errors[0].Code), clean(doc.Errors[0].Message, 200)
}

// ociCode keeps an error code only if it looks like one (upper-case letters and underscores,
// as in MANIFEST_UNKNOWN): a code field is not a place for free text an upstream may echo.
func ociCode(s string) string {
	if s == "" || len(s) > 64 {
		return ""
	}
	for _, r := range s {
		if (r < 'A' || r > 'Z') && r != '_' {
			return ""
		}
	}
	return s
}

// clean keeps an upstream-supplied string printable and short before it lands in an error.
func clean(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return -1
		}
		return r
	}, s)
	if len(s) > max {
		s = s[:max]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return s
}

// parseRetryAfter reads a Retry-After header (seconds or an HTTP date); 0 when absent or bad.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > 24*3600 {
			n = 24 * 3600
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return min(d, 24*time.Hour)
		}
	}
	return 0
}
