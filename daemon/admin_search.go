package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/upstream"
)

// The admin API's reads for the web console and `shoal search`: the answers per minute, the
// downloads in flight, image search and tag lists.

func (a *admin) timeline(r *http.Request) (any, error) { return a.metrics.lastHour(), nil }

func (a *admin) inflightList(r *http.Request) (any, error) { return a.fetch.InFlight(), nil }

func (a *admin) tags(r *http.Request) (any, error) {
	ref, err := parseImageRef(r.URL.Query().Get("image"), a.cfg.DefaultRegistry)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	resp, err := a.up.Get(ctx, ref.registry, ref.repo, "tags/list", "n=1000")
	if err != nil {
		return nil, upstreamAPIError("tags", err)
	}
	defer resp.Body.Close()
	var body struct {
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&body); err != nil {
		return nil, &apiError{status: http.StatusBadGateway, code: adminapi.CodeInternal, err: fmt.Errorf("tags of %s/%s: bad answer: %v", ref.registry, ref.repo, err)}
	}
	if body.Tags == nil {
		body.Tags = []string{}
	}
	return adminapi.Tags{Image: ref.registry + "/" + ref.repo, Registry: ref.registry, Repo: ref.repo, Tags: body.Tags}, nil
}

// upstreamAPIError keeps an upstream's "not found" a 404 and its "too many" a 429; the rest
// is a bad gateway.
func upstreamAPIError(what string, err error) error {
	var ue *upstream.Error
	switch {
	case errors.As(err, &ue) && ue.Status == http.StatusNotFound:
		return notFound("%s: %v", what, err)
	case errors.As(err, &ue) && ue.Status == http.StatusTooManyRequests:
		return &apiError{status: http.StatusTooManyRequests, code: adminapi.CodeRateLimited, err: fmt.Errorf("%s: %w", what, err)}
	case errors.Is(err, upstream.ErrUnknownRegistry):
		return badRequest("%s: %v", what, err)
	}
	return &apiError{status: http.StatusBadGateway, code: adminapi.CodeInternal, err: fmt.Errorf("%s: %w", what, err)}
}

// searcher answers /v1/search: Docker Hub's search API for docker.io, a registry's catalog
// filtered by the term for the others. Answers are cached for a while and each client (by
// address; the unix socket and the console are one client each) is rate-limited, so that a
// page or a script cannot spend the node's standing with Docker Hub.
type searcher struct {
	hub     *url.URL
	hc      *http.Client
	up      *upstream.Client
	ttl     time.Duration
	perMin  int
	maxKeep int

	mu       sync.Mutex
	cache    map[string]searchEntry
	limiters map[string]*rate.Limiter
}

type searchEntry struct {
	res adminapi.SearchResults
	at  time.Time
}

func newSearcher(cfg ConsoleConfig, up *upstream.Client) *searcher {
	hub, _ := url.Parse(cfg.HubSearchURL) // validated with the config
	return &searcher{hub: hub, up: up, ttl: cfg.SearchCacheTTL, perMin: cfg.SearchPerMinute, maxKeep: 512,
		hc:    &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}},
		cache: map[string]searchEntry{}, limiters: map[string]*rate.Limiter{}}
}

// allow takes one search from the client's bucket.
func (s *searcher) allow(client string) bool {
	if s.perMin <= 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.limiters[client]
	if l == nil {
		if len(s.limiters) > 4096 {
			clear(s.limiters)
		}
		l = rate.NewLimiter(rate.Limit(float64(s.perMin)/60), 10)
		s.limiters[client] = l
	}
	return l.Allow()
}

func searchClient(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

func (a *admin) search(r *http.Request) (any, error) {
	q := r.URL.Query()
	term := strings.TrimSpace(q.Get("q"))
	if term == "" || len(term) > 256 {
		return nil, badRequest("search: give a term (q=…, at most 256 characters)")
	}
	n := 25
	if s := q.Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 100 {
			return nil, badRequest("search: n=%q: want 1 to 100", s)
		}
		n = v
	}
	reg := canonicalRegistry(q.Get("registry"))
	if reg == "" {
		reg = "docker.io"
	}
	key := reg + "\x00" + strings.ToLower(term) + "\x00" + strconv.Itoa(n)
	s := a.finder
	s.mu.Lock()
	e, ok := s.cache[key]
	s.mu.Unlock()
	if ok && time.Since(e.at) < s.ttl {
		e.res.Cached = true
		return e.res, nil
	}
	if !s.allow(searchClient(r)) {
		return nil, &apiError{status: http.StatusTooManyRequests, code: adminapi.CodeRateLimited,
			err: fmt.Errorf("search: more than %d searches a minute from this client; wait a little", s.perMin)}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	var res adminapi.SearchResults
	var err error
	if reg == "docker.io" {
		res, err = s.hubSearch(ctx, term, n)
	} else {
		res, err = s.catalogSearch(ctx, reg, term, n)
	}
	if err != nil {
		return nil, err
	}
	res.Registry = reg
	s.mu.Lock()
	if len(s.cache) >= s.maxKeep {
		for k, v := range s.cache {
			if time.Since(v.at) >= s.ttl || len(s.cache) >= s.maxKeep {
				delete(s.cache, k)
			}
		}
	}
	s.cache[key] = searchEntry{res: res, at: time.Now()}
	s.mu.Unlock()
	return res, nil
}

// hubSearch asks Docker Hub: GET /v1/search?q=TERM&n=N, as `docker search` does (moby's
// registry package; the answer's fields are moby's api/types/registry SearchResults).
func (s *searcher) hubSearch(ctx context.Context, term string, n int) (adminapi.SearchResults, error) {
	u := *s.hub
	u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/search"
	u.RawQuery = url.Values{"q": {term}, "n": {strconv.Itoa(n)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return adminapi.SearchResults{}, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.hc.Do(req)
	if err != nil {
		return adminapi.SearchResults{}, &apiError{status: http.StatusBadGateway, code: adminapi.CodeInternal, err: fmt.Errorf("search on Docker Hub: %v", err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		err := fmt.Errorf("search on Docker Hub: %s answered %s", u.Host, resp.Status)
		if resp.StatusCode == http.StatusTooManyRequests {
			return adminapi.SearchResults{}, &apiError{status: http.StatusTooManyRequests, code: adminapi.CodeRateLimited, err: err}
		}
		return adminapi.SearchResults{}, &apiError{status: http.StatusBadGateway, code: adminapi.CodeInternal, err: err}
	}
	var res adminapi.SearchResults
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&res); err != nil {
		return adminapi.SearchResults{}, &apiError{status: http.StatusBadGateway, code: adminapi.CodeInternal, err: fmt.Errorf("search on Docker Hub: bad answer: %v", err)}
	}
	if len(res.Results) > n {
		res.Results = res.Results[:n]
	}
	if res.Results == nil {
		res.Results = []adminapi.SearchResult{}
	}
	res.Query = term
	return res, nil
}

// catalogSearch lists a registry's catalog and keeps the names containing the term.
func (s *searcher) catalogSearch(ctx context.Context, reg, term string, n int) (adminapi.SearchResults, error) {
	names, err := s.up.Catalog(ctx, reg, 1000)
	if err != nil {
		return adminapi.SearchResults{}, upstreamAPIError("catalog of "+reg, err)
	}
	res := adminapi.SearchResults{Query: term, Results: []adminapi.SearchResult{}}
	lt := strings.ToLower(term)
	for _, name := range names {
		if !strings.Contains(strings.ToLower(name), lt) {
			continue
		}
		res.NumResults++
		if len(res.Results) < n {
			res.Results = append(res.Results, adminapi.SearchResult{Name: reg + "/" + name})
		}
	}
	return res, nil
}
