package ocierr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/push"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// Error is an error with the OCI distribution code and HTTP status a client must see.
type Error struct {
	Status  int
	Code    string
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// ErrBlobBound marks a download stopped because the blob broke its bound (the manifest's
// descriptor size, store.max_blob_size).
var ErrBlobBound = errors.New("blob exceeds its size bound")

var (
	ErrUnsupported = &Error{Status: http.StatusMethodNotAllowed, Code: oci.CodeUnsupported, Message: "shoal is a pull-through mirror: pushes and deletes are not supported"}
	ErrNoRoute     = &Error{Status: http.StatusNotFound, Code: oci.CodeNameUnknown, Message: "no such route"}
)

// IsUpstreamNotFound reports whether err is the upstream's 404: a routine answer (a client
// asked for what the upstream does not have), not a failure worth a warning.
func IsUpstreamNotFound(err error) bool {
	var ue *upstream.Error
	return errors.As(err, &ue) && ue.Status == http.StatusNotFound
}

// NotFoundAs turns a "not found" from any source into the code that fits the route
// (BLOB_UNKNOWN for blobs, MANIFEST_UNKNOWN for manifests), keeping other errors.
func NotFoundAs(err error, code, what string) error {
	if errors.Is(err, store.ErrNotFound) || IsUpstreamNotFound(err) {
		return &Error{Status: http.StatusNotFound, Code: code, Message: what + " unknown to the upstream registry", Err: err}
	}
	return err
}

// Write is the one place where errors become OCI error responses. It must only be called
// before any header has been written.
func Write(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	e := Classify(err)
	if e == nil { // the client went away: nothing to say to it
		return
	}
	if e.Status >= 500 {
		log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "status", e.Status, "err", err)
	}
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(ue.RetryAfter.Seconds()+0.5)))
	}
	h := w.Header()
	var pe *push.Error
	if errors.As(err, &pe) {
		for k, v := range pe.Header {
			h[k] = v
		}
	}
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	h.Del("Docker-Content-Digest")
	w.WriteHeader(e.Status)
	if r.Method == http.MethodHead {
		return
	}
	type item struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Detail  string `json:"detail,omitempty"`
	}
	body := struct {
		Errors []item `json:"errors"`
	}{Errors: []item{{Code: e.Code, Message: e.Message}}}
	if e.Err != nil {
		body.Errors[0].Detail = e.Err.Error()
	}
	_ = json.NewEncoder(w).Encode(body)
}

func Classify(err error) *Error {
	var oe *Error
	var ue *upstream.Error
	var pe *push.Error
	switch {
	case errors.As(err, &oe):
		return oe
	case errors.As(err, &pe):
		return &Error{Status: pe.Status, Code: pe.Code, Message: pe.Message, Err: pe.Err}
	case errors.Is(err, context.Canceled):
		return nil
	case errors.Is(err, oci.ErrNameInvalid):
		return &Error{Status: http.StatusBadRequest, Code: oci.CodeNameInvalid, Message: "invalid repository name", Err: err}
	case errors.Is(err, oci.ErrDigestInvalid):
		return &Error{Status: http.StatusBadRequest, Code: oci.CodeDigestInvalid, Message: "invalid digest", Err: err}
	case errors.Is(err, oci.ErrTagInvalid):
		return &Error{Status: http.StatusBadRequest, Code: oci.CodeManifestInvalid, Message: "invalid tag", Err: err}
	case errors.Is(err, upstream.ErrUnknownRegistry):
		return &Error{Status: http.StatusNotFound, Code: oci.CodeNameUnknown, Message: "registry not served by this mirror", Err: err}
	case errors.Is(err, upstream.ErrDigestMismatch), errors.Is(err, store.ErrDigestMismatch):
		return &Error{Status: http.StatusBadGateway, Code: oci.CodeDigestInvalid, Message: "upstream sent content that does not match its digest; nothing was stored", Err: err}
	case errors.Is(err, upstream.ErrRefused): // guard.go's brief: hostile upstreams get a clear 502
		return &Error{Status: http.StatusBadGateway, Code: oci.CodeUnavailable, Message: "the upstream registry pointed shoal at an address it may not reach (token realm or redirect)", Err: err}
	case errors.Is(err, ErrBlobBound): // internal/fetch (blob size bounds)
		return &Error{Status: http.StatusBadGateway, Code: oci.CodeUnavailable, Message: "the blob's source sent or announced more bytes than its bound (the manifest's descriptor size, store.max_blob_size) or a size other than its descriptor's; nothing was stored", Err: err}
	case errors.Is(err, upstream.ErrManifestTooLarge), errors.Is(err, upstream.ErrBodyTooLarge):
		return &Error{Status: http.StatusBadGateway, Code: oci.CodeUnavailable, Message: "the upstream registry's answer is larger than shoal accepts", Err: err}
	case errors.As(err, &ue):
		switch {
		case ue.Status == http.StatusNotFound:
			return &Error{Status: http.StatusNotFound, Code: orCode(ue.Code, oci.CodeNameUnknown), Message: "not found upstream", Err: err}
		case ue.Status == http.StatusUnauthorized || ue.Status == http.StatusForbidden:
			// Never relay the upstream's challenge: the client cannot answer it, shoal holds the credentials.
			return &Error{Status: http.StatusForbidden, Code: oci.CodeDenied, Message: "the upstream registry refused shoal's credentials for this repository", Err: err}
		case ue.Status == http.StatusTooManyRequests:
			return &Error{Status: http.StatusTooManyRequests, Code: oci.CodeTooManyRequests, Message: "the upstream registry is rate limiting this mirror", Err: err}
		case ue.Status >= 400 && ue.Status < 500:
			return &Error{Status: ue.Status, Code: orCode(ue.Code, oci.CodeUnknown), Message: "upstream refused the request", Err: err}
		}
		return &Error{Status: http.StatusBadGateway, Code: oci.CodeUnavailable, Message: "upstream registry failed", Err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusGatewayTimeout, Code: oci.CodeUnavailable, Message: "upstream registry timed out", Err: err}
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) {
		return &Error{Status: http.StatusBadGateway, Code: oci.CodeUnavailable, Message: "upstream registry unreachable", Err: err}
	}
	return &Error{Status: http.StatusInternalServerError, Code: oci.CodeUnknown, Message: "internal error", Err: err}
}

func orCode(code, def string) string {
	if code != "" {
		return code
	}
	return def
}
