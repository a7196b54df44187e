package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
)

const (
	// defaultTokenLifetime applies when a token response has no expires_in (the token spec
	// says 60 s).
	defaultTokenLifetime = 60 * time.Second
	// maxTokenEarly is the most a token is refreshed ahead of its expiry.
	maxTokenEarly = 30 * time.Second
	// maxTokenBody caps a token response: a token server that never stops talking must not
	// fill memory.
	maxTokenBody = 1 << 20
	// oauthClientID is sent as client_id on OAuth POST token requests.
	oauthClientID = "shoal"
	// maxTokenEntries triggers a sweep of expired tokens.
	maxTokenEntries = 4096
)

// challenge is what a 401 asked for. scope is empty when the challenge named none.
type challenge struct {
	scheme                auth.AuthenticationScheme
	realm, service, scope string
}

// parseChallenge picks the challenge shoal answers from a 401: Bearer before Basic
// (auth.ParseAuthHeader sorts them that way), others ignored.
func parseChallenge(h http.Header) (challenge, bool) {
	for _, c := range auth.ParseAuthHeader(h) {
		switch c.Scheme {
		case auth.BearerAuth:
			if c.Parameters["realm"] == "" {
				continue
			}
			return challenge{scheme: auth.BearerAuth, realm: c.Parameters["realm"],
				service: c.Parameters["service"], scope: c.Parameters["scope"]}, true
		case auth.BasicAuth:
			return challenge{scheme: auth.BasicAuth}, true
		}
	}
	return challenge{}, false
}

// tokenKey identifies a cached token. who distinguishes anonymous tokens from credentialed
// ones (and one user's from another's) at the same realm.
type tokenKey struct {
	realm, service, scope, who string
}

func (k tokenKey) String() string {
	return k.realm + "\x00" + k.service + "\x00" + k.scope + "\x00" + k.who
}

type tokenEntry struct {
	token     string
	refreshAt time.Time
}

// pullScope is the scope shoal asks for when no challenge named one.
func pullScope(repo string) string { return "repository:" + repo + ":pull" }

// authorize sets the Authorization header for a request to reg under challenge ch.
// reject is a token the upstream just refused: it is not reused. It returns the value it
// set (to recognise a rejection later) and whether credentials were involved.
func (c *Client) authorize(ctx context.Context, req *http.Request, reg *registry, ch challenge, scope, reject string) (string, bool, error) {
	switch ch.scheme {
	case auth.BasicAuth:
		if reg.creds.anonymous() {
			return "", false, nil
		}
		req.SetBasicAuth(reg.creds.username, reg.creds.secret)
		return req.Header.Get("Authorization"), true, nil
	case auth.BearerAuth:
		tok, err := c.token(ctx, reg, ch, scope, strings.TrimPrefix(reject, "Bearer "))
		if err != nil {
			return "", false, err
		}
		v := "Bearer " + tok
		req.Header.Set("Authorization", v)
		return v, !reg.creds.anonymous(), nil
	}
	return "", false, nil
}

// token returns a Bearer token for (realm, service, scope), from the cache while it is
// fresh, else fetched once however many requests want it at the same time.
func (c *Client) token(ctx context.Context, reg *registry, ch challenge, scope, reject string) (string, error) {
	key := tokenKey{realm: ch.realm, service: ch.service, scope: scope, who: "anonymous"}
	if !reg.creds.anonymous() {
		key.who = "user:" + reg.creds.username
	}
	if tok, ok := c.cachedToken(key, reject); ok {
		return tok, nil
	}
	v, err, _ := c.tokenFlight.Do(key.String(), func() (any, error) {
		// A request that arrived while another's fetch was finishing may find a fresh token.
		if tok, ok := c.cachedToken(key, reject); ok {
			return tok, nil
		}
		// The fetch is shared: one caller hanging up must not fail the others.
		fctx, cancel := context.WithTimeout(withRegistry(context.WithoutCancel(ctx), reg), c.timeout)
		defer cancel()
		tok, lifetime, err := c.fetchToken(fctx, reg, ch, scope)
		c.noteToken(reg.host, err)
		if err != nil {
			return nil, err
		}
		early := min(lifetime/10, maxTokenEarly)
		c.storeToken(key, tokenEntry{token: tok, refreshAt: c.now().Add(lifetime - early)})
		c.log.Debug("fetched upstream token", "registry", reg.host, "realm_host", hostOf(ch.realm),
			"scope", scope, "credentialed", !reg.creds.anonymous(), "lifetime", lifetime)
		return tok, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

func (c *Client) cachedToken(key tokenKey, reject string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.tokens[key]
	switch {
	case !ok:
		return "", false
	case reject != "" && e.token == reject:
		delete(c.tokens, key)
		return "", false
	case !c.now().Before(e.refreshAt):
		return "", false
	}
	return e.token, true
}

func (c *Client) storeToken(key tokenKey, e tokenEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.tokens) >= maxTokenEntries {
		now := c.now()
		for k, old := range c.tokens {
			if !now.Before(old.refreshAt) {
				delete(c.tokens, k)
			}
		}
	}
	c.tokens[key] = e
}

// fetchToken validates the realm, then asks the token server: OAuth POST when there are
// credentials (falling back to GET for servers that refuse POST, like containerd does),
// GET otherwise. It returns the token and its lifetime.
func (c *Client) fetchToken(ctx context.Context, reg *registry, ch challenge, scope string) (string, time.Duration, error) {
	realm, err := url.Parse(ch.realm)
	if err != nil {
		return "", 0, fmt.Errorf("%w: token realm is not a URL", ErrRefused)
	}
	if err := checkTarget(reg, realm, true); err != nil {
		return "", 0, err
	}
	to := auth.TokenOptions{
		Realm:    realm.String(),
		Service:  ch.service,
		Scopes:   strings.Fields(scope),
		Username: reg.creds.username,
		Secret:   reg.creds.secret,
	}
	hdr := http.Header{"User-Agent": {userAgent}}
	ctx = c.withContainerdLog(ctx)
	var (
		tok       string
		expiresIn int
	)
	if !reg.creds.anonymous() {
		r, err := auth.FetchTokenWithOAuth(ctx, c.tokenHTTP, hdr, oauthClientID, to)
		if err == nil {
			tok, expiresIn = r.AccessToken, r.ExpiresInSeconds
		} else if st, ok := errors.AsType[remoteerrors.ErrUnexpectedStatus](err); ok && oauthFallback(st.StatusCode, to.Username) {
			r, gerr := auth.FetchToken(ctx, c.tokenHTTP, hdr, to)
			if gerr != nil {
				return "", 0, c.tokenError(reg, realm, gerr)
			}
			tok, expiresIn = r.Token, r.ExpiresInSeconds
		} else {
			return "", 0, c.tokenError(reg, realm, err)
		}
	} else {
		r, err := auth.FetchToken(ctx, c.tokenHTTP, hdr, to)
		if err != nil {
			return "", 0, c.tokenError(reg, realm, err)
		}
		tok, expiresIn = r.Token, r.ExpiresInSeconds
	}
	lifetime := time.Duration(expiresIn) * time.Second
	if expiresIn <= 0 {
		lifetime = defaultTokenLifetime
	}
	return tok, lifetime, nil
}

// oauthFallback reports whether a refused OAuth POST should be retried as GET. Registries
// without POST support answer 404 (GCR), 401 (Artifactory), 400 (ACR) or 405.
func oauthFallback(status int, username string) bool {
	return status == http.StatusNotFound || status == http.StatusUnauthorized ||
		status == http.StatusBadRequest || (status == http.StatusMethodNotAllowed && username != "")
}

// tokenError turns a token-server failure into shoal's error types. containerd's errors
// name the request URL and may hold the body; only the status and OCI code are kept.
func (c *Client) tokenError(reg *registry, realm *url.URL, err error) error {
	if st, ok := errors.AsType[remoteerrors.ErrUnexpectedStatus](err); ok {
		code, msg := parseOCIError(st.Body)
		// A token server that echoes the password must not leak it.
		code, msg = reg.creds.redact(code), reg.creds.redact(msg)
		if msg == "" {
			msg = "token server " + realm.Host + " refused the request"
		} else {
			msg = "token server " + realm.Host + ": " + msg
		}
		return &Error{Host: reg.host, Status: st.StatusCode, Code: code, Message: msg}
	}
	// url.Error repeats the token URL; the cause is what matters.
	if uerr, ok := errors.AsType[*url.Error](err); ok {
		err = uerr.Err
	}
	return fmt.Errorf("upstream %s: token from %s: %w", reg.host, realm.Host, err)
}

func hostOf(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Host
	}
	return ""
}
