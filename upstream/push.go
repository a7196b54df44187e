package upstream

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// Write-through: pushes forwarded to a registry configured with write_through. These requests
// are not idempotent as a sequence, so they are sent once (with the one 401 round that the
// token flow needs), never retried; the client that pushed sees the registry's answer.

// WriteThrough reports whether host is configured to accept pushes through shoal.
func (c *Client) WriteThrough(host string) bool {
	reg, ok := c.regs.Load().regs[canonicalHost(host)]
	return ok && reg.writeThrough
}

func pushScope(repo string) string { return "repository:" + repo + ":pull,push" }

// send sends one request with authentication (no retries) and returns a 2xx response or an
// *Error with the registry's answer.
func (c *Client) send(ctx context.Context, reg *registry, r request, u *url.URL) (*http.Response, error) {
	resp, err := c.doAuthed(withRegistry(ctx, reg), reg, r, u)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		e := newError(reg.host, resp, c.now())
		e.Message = reg.creds.redact(e.Message)
		return nil, e
	}
	return resp, nil
}

func (c *Client) pushTarget(host, repo string) (*registry, error) {
	reg, err := c.registry(host)
	if err != nil {
		return nil, err
	}
	if !reg.writeThrough {
		return nil, fmt.Errorf("%w: %s is not configured for write_through", ErrUnknownRegistry, reg.host)
	}
	if err := oci.ValidateRepo(repo); err != nil {
		return nil, err
	}
	return reg, nil
}

func (reg *registry) apiURL(repo, sub string) *url.URL {
	u := *reg.endpoint
	u.Path = reg.endpoint.Path + "/v2/" + repo + "/" + sub
	return &u
}

// HasBlob asks a write-through registry whether it holds d in repo (HEAD, push scope).
func (c *Client) HasBlob(ctx context.Context, host, repo string, d digest.Digest) (bool, error) {
	reg, err := c.pushTarget(host, repo)
	if err != nil {
		return false, err
	}
	resp, err := c.send(ctx, reg, request{method: http.MethodHead, repo: repo, scope: pushScope(repo)}, reg.apiURL(repo, "blobs/"+d.String()))
	if e, ok := err.(*Error); ok && e.Status == http.StatusNotFound {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	drain(resp)
	return true, nil
}

// PushBlob uploads a blob of size bytes to a write-through registry: POST a session, then one
// monolithic PUT ?digest= to its Location (the registry verifies the digest too).
func (c *Client) PushBlob(ctx context.Context, host, repo string, d digest.Digest, size int64, open func() (io.ReadCloser, error)) error {
	reg, err := c.pushTarget(host, repo)
	if err != nil {
		return err
	}
	resp, err := c.send(ctx, reg, request{method: http.MethodPost, repo: repo, scope: pushScope(repo)}, reg.apiURL(repo, "blobs/uploads/"))
	if err != nil {
		return err
	}
	drain(resp)
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil || resp.Header.Get("Location") == "" {
		return fmt.Errorf("upstream %s: upload session without a usable Location", reg.host)
	}
	if loc.Host != reg.endpoint.Host || loc.Scheme != reg.endpoint.Scheme {
		// Credentials go to the registry's own endpoint only.
		return fmt.Errorf("%w: upstream %s: upload Location on another host (%s)", ErrRefused, reg.host, loc.Host)
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	resp, err = c.send(ctx, reg, request{method: http.MethodPut, repo: repo, scope: pushScope(repo), body: open, length: size,
		header: http.Header{"Content-Type": {"application/octet-stream"}}}, loc)
	if err != nil {
		return err
	}
	drain(resp)
	return nil
}

// PutManifest stores a manifest in a write-through registry under ref (a tag or its digest)
// and returns the digest the registry answered (the body's sha256 when it names none).
func (c *Client) PutManifest(ctx context.Context, host, repo, ref, mediaType string, data []byte) (digest.Digest, error) {
	reg, err := c.pushTarget(host, repo)
	if err != nil {
		return "", err
	}
	if _, err := manifestRequest(http.MethodPut, repo, ref); err != nil {
		return "", err
	}
	open := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	resp, err := c.send(ctx, reg, request{method: http.MethodPut, repo: repo, scope: pushScope(repo), body: open, length: int64(len(data)),
		header: http.Header{"Content-Type": {mediaType}}}, reg.apiURL(repo, "manifests/"+ref))
	if err != nil {
		return "", err
	}
	drain(resp)
	if d, err := digest.Parse(strings.TrimSpace(resp.Header.Get("Docker-Content-Digest"))); err == nil {
		return d, nil
	}
	return digest.SHA256.FromBytes(data), nil
}

// StatBlob asks a write-through registry for a blob's size (HEAD, pull scope) without
// downloading it: ok is false when the registry does not hold it in repo.
func (c *Client) StatBlob(ctx context.Context, host, repo string, d digest.Digest) (size int64, ok bool, err error) {
	reg, err := c.pushTarget(host, repo)
	if err != nil {
		return 0, false, err
	}
	resp, err := c.send(ctx, reg, request{method: http.MethodHead, repo: repo, scope: "repository:" + repo + ":pull"}, reg.apiURL(repo, "blobs/"+d.String()))
	if e, isUp := err.(*Error); isUp && e.Status == http.StatusNotFound {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	drain(resp)
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != d.String() {
		return 0, false, fmt.Errorf("upstream %s: HEAD of %s answered digest %s", reg.host, d, got)
	}
	return resp.ContentLength, true, nil
}

// MountBlob asks a write-through registry to mount d from repository from into repo (POST
// ?mount=&from=, push scope): true when it answered 201. A 202 (it opened an upload session
// instead) is cancelled and reported as false, so the caller uploads as usual.
func (c *Client) MountBlob(ctx context.Context, host, repo string, d digest.Digest, from string) (bool, error) {
	reg, err := c.pushTarget(host, repo)
	if err != nil {
		return false, err
	}
	if err := oci.ValidateRepo(from); err != nil {
		return false, err
	}
	u := reg.apiURL(repo, "blobs/uploads/")
	u.RawQuery = url.Values{"mount": {d.String()}, "from": {from}}.Encode()
	resp, err := c.send(ctx, reg, request{method: http.MethodPost, repo: repo, scope: pushScope(repo)}, u)
	if err != nil {
		return false, err
	}
	drain(resp)
	if resp.StatusCode == http.StatusCreated {
		return true, nil
	}
	if loc, err := resp.Request.URL.Parse(resp.Header.Get("Location")); err == nil && resp.Header.Get("Location") != "" &&
		loc.Host == reg.endpoint.Host && loc.Scheme == reg.endpoint.Scheme {
		if resp, err := c.send(ctx, reg, request{method: http.MethodDelete, repo: repo, scope: pushScope(repo)}, loc); err == nil {
			drain(resp)
		}
	}
	return false, nil
}

// Delete sends DELETE of sub ("manifests/REF" or "blobs/DIGEST") to a write-through registry
// (delete scope, as distribution's token access maps DELETE). Registries that turn deletes off
// answer 405 UNSUPPORTED; that comes back as an *Error.
func (c *Client) Delete(ctx context.Context, host, repo, sub string) error {
	reg, err := c.pushTarget(host, repo)
	if err != nil {
		return err
	}
	resp, err := c.send(ctx, reg, request{method: http.MethodDelete, repo: repo, scope: "repository:" + repo + ":delete"}, reg.apiURL(repo, sub))
	if err != nil {
		return err
	}
	drain(resp)
	return nil
}
