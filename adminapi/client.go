package adminapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client talks to a daemon's admin API.
type Client struct {
	addr Addr
	hc   *http.Client
}

// NewClient returns a client for the admin API at addr (see ParseAddr).
func NewClient(addr string) (*Client, error) {
	a, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		DialContext:           func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx, a) },
		ResponseHeaderTimeout: 0, // verify and gc answer when they are done
		IdleConnTimeout:       30 * time.Second,
		DisableCompression:    true,
	}
	return &Client{addr: a, hc: &http.Client{Transport: tr}}, nil
}

// Addr is the address the client talks to.
func (c *Client) Addr() Addr { return c.addr }

// APIError is an error answer from the daemon.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string { return e.Message }

// do sends a request and returns the response if it is a success; error answers become
// *APIError and connection failures *UnreachableError.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	// On TCP the daemon serves only a loopback or localhost Host (a rebound name is refused):
	// send the address as given. On the socket the name is only a placeholder.
	host := "shoal"
	if c.addr.Network == "tcp" {
		host = c.addr.Address
	}
	u := "http://" + host + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set(Header, "1") // on the socket too, though it does not ask for it
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if unreachable(err) {
			return nil, &UnreachableError{Addr: c.addr, Err: err}
		}
		return nil, fmt.Errorf("admin API at %s: %w", c.addr, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var eb ErrorBody
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb = ErrorBody{Error: fmt.Sprintf("admin API: %s: %s", resp.Status, strings.TrimSpace(string(b))), Code: CodeInternal}
		}
		return nil, &APIError{Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
	}
	return resp, nil
}

func (c *Client) getJSON(ctx context.Context, method, path string, q url.Values, body, out any) error {
	resp, err := c.do(ctx, method, path, q, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("admin API: bad answer to %s: %w", path, err)
	}
	return nil
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.getJSON(ctx, http.MethodGet, "/v1/status", nil, nil, &s)
}

// Peers lists connected and banned peers.
func (c *Client) Peers(ctx context.Context) (Peers, error) {
	var p Peers
	return p, c.getJSON(ctx, http.MethodGet, "/v1/peers", nil, nil, &p)
}

// Ping measures the round trip to a peer.
func (c *Client) Ping(ctx context.Context, peer string) (Ping, error) {
	var p Ping
	return p, c.getJSON(ctx, http.MethodPost, "/v1/peers/ping", url.Values{"peer": {peer}}, nil, &p)
}

// CacheList lists the store's content, sorted by "size" (largest first) or "atime" (most
// recently read first).
func (c *Client) CacheList(ctx context.Context, sort string) (CacheList, error) {
	var l CacheList
	return l, c.getJSON(ctx, http.MethodGet, "/v1/cache", url.Values{"sort": {sort}}, nil, &l)
}

// CacheRemove removes a digest, or an image and the content only it uses.
func (c *Client) CacheRemove(ctx context.Context, target string) (RemoveResult, error) {
	var r RemoveResult
	return r, c.getJSON(ctx, http.MethodPost, "/v1/cache/rm", url.Values{"target": {target}}, nil, &r)
}

// CacheGC runs the store's sweep now.
func (c *Client) CacheGC(ctx context.Context) (GCResult, error) {
	var r GCResult
	return r, c.getJSON(ctx, http.MethodPost, "/v1/cache/gc", nil, nil, &r)
}

// CacheVerify re-hashes all content, removing what does not match.
func (c *Client) CacheVerify(ctx context.Context) (VerifyResult, error) {
	var r VerifyResult
	return r, c.getJSON(ctx, http.MethodPost, "/v1/cache/verify", nil, nil, &r)
}

// CachePin pins (pin=true) or unpins a cached image.
func (c *Client) CachePin(ctx context.Context, image string, pin bool) (PinResult, error) {
	var r PinResult
	path := "/v1/cache/unpin"
	if pin {
		path = "/v1/cache/pin"
	}
	return r, c.getJSON(ctx, http.MethodPost, path, url.Values{"image": {image}}, nil, &r)
}

// Explain says where each piece of an image (or one digest) is.
func (c *Client) Explain(ctx context.Context, target string) (Explain, error) {
	var e Explain
	return e, c.getJSON(ctx, http.MethodGet, "/v1/explain", url.Values{"target": {target}}, nil, &e)
}

// History returns recent decisions, newest first, for a digest ("" for all).
func (c *Client) History(ctx context.Context, digest string, limit int) ([]Decision, error) {
	var h []Decision
	q := url.Values{"limit": {fmt.Sprint(limit)}}
	if digest != "" {
		q.Set("digest", digest)
	}
	return h, c.getJSON(ctx, http.MethodGet, "/v1/history", q, nil, &h)
}

// Pull warms the cache; fn sees every progress event as it arrives. It returns the final
// done event.
func (c *Client) Pull(ctx context.Context, req PullRequest, fn func(PullEvent)) (PullEvent, error) {
	resp, err := c.do(ctx, http.MethodPost, "/v1/pull", nil, req)
	if err != nil {
		return PullEvent{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev PullEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return PullEvent{}, fmt.Errorf("admin API: bad pull event: %w", err)
		}
		if fn != nil {
			fn(ev)
		}
		if ev.Type == EventDone {
			return ev, nil
		}
	}
	if err := sc.Err(); err != nil {
		return PullEvent{}, fmt.Errorf("pull stream broken: %w", err)
	}
	return PullEvent{}, errors.New("pull stream ended before the pull was done (daemon stopped?)")
}

// ExportRequest names the images of a tarball.
type ExportRequest struct {
	Images []string
	// Platform selects the platform of multi-platform images ("" = the daemon's own).
	Platform string
	// AllPlatforms puts every platform into the OCI part of the tarball.
	AllPlatforms bool
}

// Export streams a tarball that `docker load` and `ctr image import` accept. The caller must
// read it to the end: a tarball cut short (the daemon failed half way) ends in an error.
func (c *Client) Export(ctx context.Context, req ExportRequest) (io.ReadCloser, error) {
	q := url.Values{"image": req.Images}
	if req.Platform != "" {
		q.Set("platform", req.Platform)
	}
	if req.AllPlatforms {
		q.Set("all_platforms", "true")
	}
	resp, err := c.do(ctx, http.MethodGet, "/v1/export", q, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}
