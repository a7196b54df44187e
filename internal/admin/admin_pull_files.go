package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
)

// isFileTarget reports whether a pull target names files (docs/files.md) rather than an image.
func isFileTarget(s string) bool {
	return strings.HasPrefix(s, "hf://") || strings.HasPrefix(s, "https://github.com/")
}

// fileJob is one file of a files pull.
type fileJob struct {
	path   string // shown
	url    string // through the mirror, in process
	sha256 string // when the Hub states it (LFS/Xet): waited for in the store
	size   int64
}

// pullFiles warms the node with a Hugging Face snapshot (hf://ORG/NAME[@REV], every file or
// those matching include) or one GitHub release file, through the daemon's own file endpoints.
func (a *admin) pullFiles(ctx context.Context, target string, include []string, ev *eventStream, tot *pullTotals) {
	fail := func(err error) {
		ev.send(adminapi.PullEvent{Type: adminapi.EventImage, Image: target, State: adminapi.StateError, Error: err.Error()})
		tot.add(0, 0, 1)
	}
	var jobs []fileJob
	resolved := target
	if rest, ok := strings.CutPrefix(target, "hf://"); ok {
		repo, rev, _ := strings.Cut(rest, "@")
		if rev == "" {
			rev = "main"
		}
		kind := "models"
		if k, r, ok := strings.Cut(repo, "/"); ok && (k == "datasets" || k == "spaces") {
			kind, repo = k, r
		}
		if strings.Count(repo, "/") > 1 || repo == "" || strings.Contains(repo, "..") {
			fail(fmt.Errorf("%s: want hf://ORG/NAME[@REVISION] or hf://datasets/ORG/NAME[@REVISION]", target))
			return
		}
		commit, files, err := a.hfSnapshot(ctx, kind, repo, rev)
		if err != nil {
			fail(err)
			return
		}
		resolved = commit
		prefix := a.self.base() + "/hf/" + repo
		if kind != "models" {
			prefix = a.self.base() + "/hf/" + kind + "/" + repo
		}
		for _, f := range files {
			if !matchInclude(include, f.path) {
				continue
			}
			var esc []string
			for _, s := range strings.Split(f.path, "/") {
				esc = append(esc, url.PathEscape(s))
			}
			f.url = prefix + "/resolve/" + commit + "/" + strings.Join(esc, "/")
			jobs = append(jobs, f)
		}
	} else {
		jobs = []fileJob{{path: target, url: a.self.base() + "/" + target, size: -1}}
	}
	ev.send(adminapi.PullEvent{Type: adminapi.EventImage, Image: target, Digest: resolved, Source: "upstream"})
	var wg sync.WaitGroup
	sem := make(chan struct{}, pullConcurrency)
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			n, err := a.warmFile(ctx, target, j, ev)
			if err != nil {
				tot.add(1, n, 1)
			} else {
				tot.add(1, n, 0)
			}
		}()
	}
	wg.Wait()
}

// hfSnapshot resolves rev to a commit and lists every file at it (the tree, all pages).
func (a *admin) hfSnapshot(ctx context.Context, kind, repo, rev string) (string, []fileJob, error) {
	var info struct {
		SHA string `json:"sha"`
	}
	if _, err := a.selfJSON(ctx, a.self.base()+"/hf/api/"+kind+"/"+repo+"/revision/"+url.PathEscape(rev), &info); err != nil {
		return "", nil, err
	}
	if info.SHA == "" {
		return "", nil, fmt.Errorf("hf://%s@%s: the Hub named no commit", repo, rev)
	}
	var out []fileJob
	next := a.self.base() + "/hf/api/" + kind + "/" + repo + "/tree/" + info.SHA + "?recursive=true"
	for pages := 0; next != "" && pages < 10000; pages++ {
		var entries []struct {
			Type string `json:"type"`
			Path string `json:"path"`
			Size int64  `json:"size"`
			LFS  *struct {
				OID string `json:"oid"`
			} `json:"lfs"`
		}
		hdr, err := a.selfJSON(ctx, next, &entries)
		if err != nil {
			return "", nil, err
		}
		for _, e := range entries {
			if e.Type != "file" {
				continue
			}
			j := fileJob{path: e.Path, size: e.Size}
			if e.LFS != nil {
				j.sha256 = e.LFS.OID
			}
			out = append(out, j)
		}
		next = nextLink(hdr.Get("Link"))
	}
	return info.SHA, out, nil
}

func (a *admin) selfJSON(ctx context.Context, u string, v any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.self.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, mirrorErr(resp)
	}
	return resp.Header, json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v)
}

// nextLink finds rel="next" in a Link header.
func nextLink(h string) string {
	for _, part := range strings.Split(h, ",") {
		u, params, ok := strings.Cut(part, ";")
		if ok && strings.Contains(params, `rel="next"`) {
			return strings.Trim(strings.TrimSpace(u), "<>")
		}
	}
	return ""
}

// matchInclude: no patterns match everything; a pattern matches the path or its base name.
func matchInclude(patterns []string, p string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, pat := range patterns {
		if ok, _ := path.Match(pat, p); ok {
			return true
		}
		if ok, _ := path.Match(pat, path.Base(p)); ok {
			return true
		}
	}
	return false
}

// warmFile reads one file through the mirror and, for a file with a sha256, waits until the
// store holds it.
func (a *admin) warmFile(ctx context.Context, target string, j fileJob, ev *eventStream) (int64, error) {
	base := adminapi.PullEvent{Type: adminapi.EventBlob, Image: target, Digest: j.path, Kind: "file", Size: max(j.size, 0)}
	fail := func(n int64, err error) (int64, error) {
		e := base
		e.State, e.Error = adminapi.StateError, err.Error()
		ev.send(e)
		return n, err
	}
	start := base
	start.State = adminapi.StateStart
	ev.send(start)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return fail(0, err)
	}
	req.Header.Set("User-Agent", "shoal-admin")
	resp, err := a.self.hc.Do(req)
	if err != nil {
		return fail(0, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fail(0, mirrorErr(resp))
	}
	source := resp.Header.Get(hdrSource)
	if base.Size == 0 && resp.ContentLength > 0 {
		base.Size = resp.ContentLength
	}
	buf := make([]byte, 256<<10)
	var n int64
	last := time.Now()
	for {
		k, rerr := resp.Body.Read(buf)
		n += int64(k)
		if time.Since(last) >= progressEvery {
			last = time.Now()
			e := base
			e.State, e.Source, e.Done = adminapi.StateProgress, source, n
			ev.send(e)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fail(n, fmt.Errorf("reading %s from the mirror: %w", j.path, rerr))
		}
	}
	want := j.sha256
	if want == "" { // a release asset whose digest GitHub states: the files endpoint's ETag
		want = sha256ETag(resp.Header.Get("ETag"))
	}
	if want != "" && source != "passthrough" {
		if err := a.waitStored(ctx, digest.NewDigestFromEncoded(digest.SHA256, want)); err != nil {
			return fail(n, err)
		}
	}
	e := base
	e.State, e.Source, e.Done, e.Size = adminapi.StateDone, source, n, n
	ev.send(e)
	return n, nil
}

// sha256ETag returns the hex SHA-256 an ETag carries (the files endpoint sets a file's
// sha256 as its ETag when the host states it), or "".
func sha256ETag(etag string) string {
	etag = strings.Trim(strings.TrimPrefix(etag, "W/"), `"`)
	if len(etag) != 64 {
		return ""
	}
	for _, c := range etag {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return ""
		}
	}
	return etag
}
