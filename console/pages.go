package console

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/shoal-mirror/shoal/adminapi"
)

// adminTimeout bounds one page's admin API calls.
const adminTimeout = 10 * time.Second

// cacheRows is how many cache entries a page lists (the totals count them all): enough to
// see what fills the store, few enough to paint fast.
const cacheRows = 100

type overviewData struct {
	Status   adminapi.Status
	Peers    adminapi.Peers
	InFlight []adminapi.InFlight
	Requests template.HTML // the charts, as SVG
	Bytes    template.HTML
	Sources  []sourceRow
	Saved    int64 // bytes not fetched from an upstream by this node
	Answers  int64
	Bytes1h  int64
}

type sourceRow struct {
	Source          string
	Requests, Bytes int64
	Hour, HourBytes int64
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	var d overviewData
	var tl adminapi.Timeline
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) { d.Status, err = c.admin.Status(gctx); return })
	g.Go(func() (err error) { d.Peers, err = c.admin.Peers(gctx); return })
	g.Go(func() (err error) { d.InFlight, err = c.admin.InFlight(gctx); return })
	g.Go(func() (err error) { tl, err = c.admin.Timeline(gctx); return })
	if err := g.Wait(); err != nil {
		c.fail(w, r, status(err), err)
		return
	}
	rows := map[string]*sourceRow{}
	row := func(s string) *sourceRow {
		if rows[s] == nil {
			rows[s] = &sourceRow{Source: s}
		}
		return rows[s]
	}
	for _, sc := range d.Status.Sources {
		row(sc.Source).Requests, row(sc.Source).Bytes = sc.Requests, sc.Bytes
		if sc.Source != "upstream" && sc.Source != "passthrough" {
			d.Saved += sc.Bytes
		}
	}
	for _, m := range tl.Minutes {
		for s, n := range m.Requests {
			row(s).Hour += n
			d.Answers += n
		}
		for s, n := range m.Bytes {
			row(s).HourBytes += n
			d.Bytes1h += n
		}
	}
	for _, s := range sourceOrder {
		if rw := rows[s]; rw != nil {
			d.Sources = append(d.Sources, *rw)
		}
	}
	d.Requests = chart(tl, false)
	d.Bytes = chart(tl, true)
	c.render(w, r, http.StatusOK, "overview", page{Title: "Node", Refresh: true, Data: d})
}

func (c *Console) peers(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	var st adminapi.Status
	var ps adminapi.Peers
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) { st, err = c.admin.Status(gctx); return })
	g.Go(func() (err error) { ps, err = c.admin.Peers(gctx); return })
	if err := g.Wait(); err != nil {
		c.fail(w, r, status(err), err)
		return
	}
	sort.Slice(ps.Peers, func(i, j int) bool {
		if ps.Peers[i].Banned != ps.Peers[j].Banned {
			return ps.Peers[i].Banned
		}
		return ps.Peers[i].BytesIn+ps.Peers[i].BytesOut > ps.Peers[j].BytesIn+ps.Peers[j].BytesOut
	})
	c.render(w, r, http.StatusOK, "peers", page{Title: "Peers", Refresh: true, Data: struct {
		Status adminapi.Status
		Peers  adminapi.Peers
	}{st, ps}})
}

type cacheData struct {
	List    adminapi.CacheList
	Sort    string
	Shown   int
	Total   int
	Pinned  int
	Entries []adminapi.CacheEntry
}

func (c *Console) cache(w http.ResponseWriter, r *http.Request) {
	by := r.URL.Query().Get("sort")
	if by != "atime" {
		by = "size"
	}
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	var top, pinned adminapi.CacheList
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) { top, err = c.admin.CacheListPart(gctx, by, cacheRows, false); return })
	// Pinned content is listed even when it is not among the largest or latest.
	g.Go(func() (err error) { pinned, err = c.admin.CacheListPart(gctx, by, 10*cacheRows, true); return })
	if err := g.Wait(); err != nil {
		c.fail(w, r, status(err), err)
		return
	}
	d := cacheData{List: top, Sort: by, Total: top.Total, Pinned: len(pinned.Entries), Entries: top.Entries}
	seen := map[string]bool{}
	for _, e := range d.Entries {
		seen[e.Digest] = true
	}
	for _, e := range pinned.Entries {
		if !seen[e.Digest] {
			d.Entries = append(d.Entries, e)
		}
	}
	d.Shown = len(d.Entries)
	c.render(w, r, http.StatusOK, "cache", page{Title: "Cache", Data: d})
}

func (c *Console) pulls(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	var hist []adminapi.Decision
	var inf []adminapi.InFlight
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) { hist, err = c.admin.History(gctx, "", 200); return })
	g.Go(func() (err error) { inf, err = c.admin.InFlight(gctx); return })
	if err := g.Wait(); err != nil {
		c.fail(w, r, status(err), err)
		return
	}
	c.render(w, r, http.StatusOK, "pulls", page{Title: "Pulls", Refresh: true, Data: struct {
		History  []adminapi.Decision
		InFlight []adminapi.InFlight
	}{hist, inf}})
}

func (c *Console) explain(w http.ResponseWriter, r *http.Request) {
	target := strings.TrimSpace(r.URL.Query().Get("target"))
	var e *adminapi.Explain
	var errText string
	if target != "" {
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		x, err := c.admin.Explain(ctx, target)
		if err != nil {
			errText = err.Error()
		} else {
			e = &x
		}
	}
	c.render(w, r, http.StatusOK, "explain", page{Title: "Explain", Err: errText, Data: struct {
		Target  string
		Explain *adminapi.Explain
	}{target, e}})
}

type searchData struct {
	Q, Registry string
	Results     *adminapi.SearchResults
	Hub         bool
}

func (c *Console) search(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d := searchData{Q: strings.TrimSpace(q.Get("q")), Registry: strings.TrimSpace(q.Get("registry"))}
	if d.Registry == "" {
		d.Registry = "docker.io"
	}
	d.Hub = d.Registry == "docker.io"
	var errText string
	if d.Q != "" {
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		res, err := c.admin.Search(ctx, d.Q, d.Registry, 0)
		if err != nil {
			errText = err.Error()
		} else {
			d.Results = &res
		}
	}
	c.render(w, r, http.StatusOK, "search", page{Title: "Search", Err: errText, Data: d})
}

func (c *Console) image(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSpace(r.URL.Query().Get("name"))
	if name == "" {
		c.fail(w, r, http.StatusBadRequest, errors.New("image: name one (?name=alpine)"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	tags, err := c.admin.Tags(ctx, name)
	var errText string
	if err != nil {
		errText = err.Error()
	}
	sort.Sort(sort.Reverse(sort.StringSlice(tags.Tags)))
	c.render(w, r, http.StatusOK, "image", page{Title: name, Err: errText, Data: struct {
		Name string
		Tags adminapi.Tags
	}{name, tags}})
}

// ---- actions (POST, same origin checked by ServeHTTP) ----

// back redirects to the page the form came from (a path of this console only) with a notice.
func back(w http.ResponseWriter, r *http.Request, fallback, key, msg string) {
	to := r.PostFormValue("back")
	if !strings.HasPrefix(to, "/") || strings.HasPrefix(to, "//") || strings.ContainsAny(to, "\\\r\n") {
		to = fallback
	}
	u, err := url.Parse(to)
	if err != nil {
		u = &url.URL{Path: fallback}
	}
	q := u.Query()
	q.Del("msg")
	q.Del("err")
	q.Set(key, msg)
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.String(), http.StatusSeeOther)
}

func (c *Console) pin(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		target := strings.TrimSpace(r.PostFormValue("target"))
		res, err := c.admin.CachePin(r.Context(), target, on)
		if err != nil {
			back(w, r, "/cache", "err", err.Error())
			return
		}
		verb := "unpinned"
		if res.Pinned {
			verb = "pinned"
		}
		back(w, r, "/cache", "msg", fmt.Sprintf("%s %s", verb, target))
	}
}

func (c *Console) remove(w http.ResponseWriter, r *http.Request) {
	target := strings.TrimSpace(r.PostFormValue("target"))
	res, err := c.admin.CacheRemove(r.Context(), target)
	if err != nil {
		back(w, r, "/cache", "err", err.Error())
		return
	}
	back(w, r, "/cache", "msg", fmt.Sprintf("removed %s: %d items, %s", target, len(res.Removed), size(res.Bytes)))
}
