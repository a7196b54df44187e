// Package filestest is a loopback fixture that answers like huggingface.co, its LFS CDN,
// api.github.com, github.com and GitHub's release-assets host, for the tests of the file
// endpoints. Where each behaviour was checked:
//   - Hub resolve (HEAD/GET /{repo}/resolve/{rev}/{path}): X-Repo-Commit, for LFS files a 302 to
//     a signed cdn-lfs URL with X-Linked-Etag (the sha256) and X-Linked-Size, small files 200
//     with ETag = git blob sha1; errors carry X-Error-Code (RepoNotFound with 401,
//     RevisionNotFound / EntryNotFound with 404); Xet file info (application/vnd.xet-fileinfo+json,
//     X-Xet-Hash, Link rel="xet-reconstruction-info" and rel="xet-auth") when the client
//     accepts it: huggingface_hub's file_download.py (get_hf_file_metadata, _normalize_etag)
//     and @huggingface/hub 2.17.5 dist/index.js fileDownloadInfo (installed by .ci/install-deps),
//     ../shared/PROTOCOL-NOTES.md ("Hugging Face clients").
//   - /api/models/{repo}/revision/{rev} (sha, siblings), /api/models/{repo}/tree/{rev}
//     (paginated by Link rel="next" with a cursor), POST /api/models/{repo}/paths-info/{rev}
//     (type, oid, size, path, lfs{oid,size,pointerSize}, lastCommit): @huggingface/hub's
//     modelInfo, listFiles, pathsInfo and snapshotDownload (same file).
//   - GitHub: GET /repos/{o}/{r}/releases/tags/{tag} and /releases/latest with
//     assets[].digest "sha256:…" (null for old assets), releases/download → 302 to a signed
//     release-assets.githubusercontent.com URL that serves Range: GitHub REST docs "Releases"
//     and the changelog of June 2025 (asset digests); PROTOCOL-NOTES.md.
package filestest

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// LFSThreshold: files at least this big are LFS files in the fixture's repos.
const LFSThreshold = 1024

// File is one file of a fixture repo.
type File struct {
	Data   []byte
	SHA256 string // hex
	SHA1   string // git blob sha1, hex
}

func newFile(b []byte) *File {
	s := sha256.Sum256(b)
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(b))
	h.Write(b)
	return &File{Data: b, SHA256: hex.EncodeToString(s[:]), SHA1: hex.EncodeToString(h.Sum(nil))}
}

func (f *File) lfs() bool { return len(f.Data) >= LFSThreshold }

type repo struct {
	commit string
	refs   map[string]string // branch → commit
	files  map[string]*File  // path → file (at commit)
	paths  []string
	gated  bool // needs the token
}

type asset struct {
	name   string
	file   *File
	digest bool
}

// Fixture is the set of fixture servers.
type Fixture struct {
	HF, CDN, API, GitHub, Assets, Raw *httptest.Server
	// FileBytes counts file content bytes sent (CDN, small resolve bodies, release assets).
	FileBytes atomic.Int64
	// Requests counts requests by "HOST-ROLE METHOD PATH" prefix, for assertions.
	reqMu    sync.Mutex
	requests []string
	// Down makes every server drop connections; Corrupt flips one byte of every file body.
	Down, Corrupt atomic.Bool
	// Token, when set, is required for gated repos.
	Token string
	// CDNAuth counts CDN and release-asset requests that carried an Authorization header.
	CDNAuth atomic.Int64

	mu       sync.Mutex
	rawFiles map[string][]byte // raw.githubusercontent.com path → content
	repos    map[string]*repo
	releases map[string]map[string][]asset // owner/repo → tag → assets
	latest   map[string]string
}

// New starts the fixture servers; they stop when the test ends.
func New(t testing.TB) *Fixture {
	f := &Fixture{rawFiles: map[string][]byte{}, repos: map[string]*repo{}, releases: map[string]map[string][]asset{}, latest: map[string]string{}}
	start := func(role string, h http.HandlerFunc) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if f.Down.Load() {
				if hj, ok := w.(http.Hijacker); ok {
					if c, _, err := hj.Hijack(); err == nil {
						c.Close()
						return
					}
				}
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			f.reqMu.Lock()
			f.requests = append(f.requests, role+" "+r.Method+" "+r.URL.Path)
			f.reqMu.Unlock()
			h(w, r)
		}))
		t.Cleanup(s.Close)
		return s
	}
	f.HF = start("hf", f.hub)
	f.CDN = start("cdn", f.cdn)
	f.API = start("api", f.api)
	f.GitHub = start("github", f.github)
	f.Assets = start("assets", f.assets)
	f.Raw = start("raw", f.raw)
	return f
}

// Hosts maps the logical hosts to the fixture servers, for files.Config.Hosts.
func (f *Fixture) Hosts() map[string]string {
	return map[string]string{
		"huggingface.co": f.HF.URL, "cdn-lfs.hf.co": f.CDN.URL,
		"api.github.com": f.API.URL, "github.com": f.GitHub.URL, "release-assets.githubusercontent.com": f.Assets.URL,
		"raw.githubusercontent.com": f.Raw.URL,
	}
}

// Count returns how many requests so far start with prefix ("cdn GET", "hf HEAD /org/m/resolve").
func (f *Fixture) Count(prefix string) int {
	f.reqMu.Lock()
	defer f.reqMu.Unlock()
	n := 0
	for _, r := range f.requests {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

// AddModel adds (or updates: a new commit on main) a model repo; it returns the commit.
func (f *Fixture) AddModel(name string, files map[string][]byte, gated bool) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := &repo{refs: map[string]string{}, files: map[string]*File{}, gated: gated}
	h := sha1.New()
	fmt.Fprintf(h, "%s %d", name, time.Now().UnixNano())
	for p, b := range files {
		r.files[p] = newFile(b)
		r.paths = append(r.paths, p)
		h.Write(b)
	}
	sortStrings(r.paths)
	r.commit = hex.EncodeToString(h.Sum(nil))
	r.refs["main"] = r.commit
	f.repos[name] = r
	return r.commit
}

// File returns a fixture file.
func (f *Fixture) File(repoName, path string) *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.repos[repoName].files[path]
}

// AddRelease adds a release; assets with withDigest get their sha256 in the API.
func (f *Fixture) AddRelease(ownerRepo, tag string, files map[string][]byte, withDigest bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.releases[ownerRepo] == nil {
		f.releases[ownerRepo] = map[string][]asset{}
	}
	for n, b := range files {
		f.releases[ownerRepo][tag] = append(f.releases[ownerRepo][tag], asset{name: n, file: newFile(b), digest: withDigest})
	}
	f.latest[ownerRepo] = tag
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func hubError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("X-Error-Code", code)
	w.Header().Set("X-Error-Message", msg)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// lookup finds repo and commit for a request; false after writing the Hub's error.
func (f *Fixture) lookup(w http.ResponseWriter, r *http.Request, name, rev string) (*repo, string, bool) {
	f.mu.Lock()
	rp := f.repos[name]
	f.mu.Unlock()
	if rp == nil || (rp.gated && r.Header.Get("Authorization") != "Bearer "+f.Token) {
		hubError(w, http.StatusUnauthorized, "RepoNotFound", "Repository not found")
		return nil, "", false
	}
	if c, ok := rp.refs[rev]; ok {
		return rp, c, true
	}
	if rev == rp.commit {
		return rp, rev, true
	}
	hubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
	return nil, "", false
}

func (f *Fixture) hub(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if rest, ok := strings.CutPrefix(p, "/api/models/"); ok {
		f.hubAPI(w, r, rest)
		return
	}
	name, rest, ok := strings.Cut(p[1:], "/resolve/")
	if !ok {
		hubError(w, http.StatusNotFound, "", "Not found")
		return
	}
	rev, path, _ := strings.Cut(rest, "/")
	rp, commit, ok := f.lookup(w, r, name, rev)
	if !ok {
		return
	}
	file := rp.files[path]
	if file == nil {
		w.Header().Set("X-Repo-Commit", commit)
		hubError(w, http.StatusNotFound, "EntryNotFound", path+" does not exist on "+rev)
		return
	}
	h := w.Header()
	h.Set("X-Repo-Commit", commit)
	h.Set("Access-Control-Expose-Headers", "X-Repo-Commit,X-Linked-Etag,X-Linked-Size,ETag,Content-Range,X-Xet-Hash,Link")
	if !file.lfs() {
		h.Set("ETag", `"`+file.SHA1+`"`)
		f.serveBytes(w, r, file)
		return
	}
	h.Set("X-Linked-Etag", `"`+file.SHA256+`"`)
	h.Set("X-Linked-Size", strconv.Itoa(len(file.Data)))
	if strings.Contains(r.Header.Get("Accept"), "application/vnd.xet-fileinfo+json") {
		// The Hub answers Xet file info to clients that accept it; they then download
		// around any mirror, from Xet's CAS service.
		h.Set("Content-Type", "application/vnd.xet-fileinfo+json")
		h.Set("X-Xet-Hash", strings.Repeat("ab", 32))
		h.Set("Link", `<https://cas-server.xethub.hf.co/reconstruction/abab>; rel="xet-reconstruction-info", <https://huggingface.co/api/models/`+name+`/xet-read-token/`+commit+`>; rel="xet-auth"`)
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{"casUrl":"https://cas-server.xethub.hf.co","hash":"abab"}`))
		return
	}
	// The pointer file's git sha1 as ETag (the content's sha256 is X-Linked-Etag).
	h.Set("ETag", `"`+newFile([]byte("version https://git-lfs.github.com/spec/v1\noid sha256:"+file.SHA256+"\n")).SHA1+`"`)
	h.Set("Location", "https://cdn-lfs.hf.co/repos/"+file.SHA256[:2]+"/"+file.SHA256[2:4]+"/"+file.SHA256+"?X-Amz-Expires=3600&X-Amz-Signature=fixture")
	w.WriteHeader(http.StatusFound)
}

func (f *Fixture) cdn(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "" {
		f.CDNAuth.Add(1)
	}
	sum := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
	if r.URL.Query().Get("X-Amz-Signature") == "" {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	f.mu.Lock()
	var file *File
	for _, rp := range f.repos {
		for _, fl := range rp.files {
			if fl.SHA256 == sum {
				file = fl
			}
		}
	}
	f.mu.Unlock()
	if file == nil {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.Header().Set("ETag", `"`+file.SHA256+`"`)
	f.serveBytes(w, r, file)
}

// serveBytes answers with Range support, counting and (when Corrupt) corrupting the bytes.
func (f *Fixture) serveBytes(w http.ResponseWriter, r *http.Request, file *File) {
	data := file.Data
	if f.Corrupt.Load() && len(data) > 0 {
		data = bytes.Clone(data)
		data[len(data)/2] ^= 0xff
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(countingWriter{w, &f.FileBytes, r.Method}, r, "", time.Time{}, bytes.NewReader(data))
}

type countingWriter struct {
	http.ResponseWriter
	n      *atomic.Int64
	method string
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	if c.method != http.MethodHead {
		c.n.Add(int64(n))
	}
	return n, err
}

func (f *Fixture) hubAPI(w http.ResponseWriter, r *http.Request, rest string) {
	// {org}/{name}/{op}/{rev}[/...]
	s := strings.SplitN(rest, "/", 5)
	if len(s) < 3 {
		hubError(w, http.StatusNotFound, "", "Not found")
		return
	}
	name, op := s[0]+"/"+s[1], s[2]
	rev := "main"
	if len(s) >= 4 {
		rev = s[3]
	}
	rp, commit, ok := f.lookup(w, r, name, rev)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Repo-Commit", commit)
	switch {
	case op == "revision" && r.Method == http.MethodGet:
		sib := []map[string]string{}
		for _, p := range rp.paths {
			sib = append(sib, map[string]string{"rfilename": p})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"_id": "fixture", "id": name, "sha": commit, "private": rp.gated, "siblings": sib})
	case op == "tree" && r.Method == http.MethodGet:
		// Two entries a page, the next page linked by a cursor as the Hub does.
		cur, _ := strconv.Atoi(r.URL.Query().Get("cursor"))
		var out []map[string]any
		for i := cur; i < len(rp.paths) && i < cur+2; i++ {
			out = append(out, f.entry(rp, commit, rp.paths[i]))
		}
		if cur+2 < len(rp.paths) {
			q := r.URL.Query()
			q.Set("cursor", strconv.Itoa(cur+2))
			w.Header().Set("Link", `<https://huggingface.co/api/models/`+name+`/tree/`+rev+`?`+q.Encode()+`>; rel="next"`)
		}
		if out == nil {
			out = []map[string]any{}
		}
		_ = json.NewEncoder(w).Encode(out)
	case op == "paths-info" && r.Method == http.MethodPost:
		var body struct {
			Paths []string `json:"paths"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			hubError(w, http.StatusBadRequest, "", "bad body")
			return
		}
		out := []map[string]any{}
		for _, p := range body.Paths {
			if rp.files[p] != nil {
				out = append(out, f.entry(rp, commit, p))
			}
		}
		_ = json.NewEncoder(w).Encode(out)
	default:
		hubError(w, http.StatusNotFound, "", "Not found")
	}
}

func (f *Fixture) entry(rp *repo, commit, p string) map[string]any {
	fl := rp.files[p]
	e := map[string]any{"type": "file", "oid": fl.SHA1, "size": len(fl.Data), "path": p,
		"lastCommit": map[string]any{"id": commit, "title": "fixture", "date": "2026-01-01T00:00:00.000Z"}}
	if fl.lfs() {
		e["lfs"] = map[string]any{"oid": fl.SHA256, "size": len(fl.Data), "pointerSize": 134}
	}
	return e
}

func (f *Fixture) release(ownerRepo, tag string) ([]asset, string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tag == "latest" {
		tag = f.latest[ownerRepo]
	}
	a, ok := f.releases[ownerRepo][tag]
	return a, tag, ok
}

func (f *Fixture) api(w http.ResponseWriter, r *http.Request) {
	// /repos/{o}/{r}/releases/tags/{tag} | /repos/{o}/{r}/releases/latest
	s := strings.Split(strings.TrimPrefix(r.URL.Path, "/repos/"), "/")
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Ratelimit-Limit", "60")
	var tag string
	switch {
	case len(s) == 5 && s[2] == "releases" && s[3] == "tags":
		tag = s[4]
	case len(s) == 4 && s[2] == "releases" && s[3] == "latest":
		tag = "latest"
	}
	assets, tag, ok := f.release(s[0]+"/"+s[min(1, len(s)-1)], tag)
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"message":"Not Found","documentation_url":"https://docs.github.com/rest/releases/releases#get-a-release-by-tag-name","status":"404"}`))
		return
	}
	var out []map[string]any
	for i, a := range assets {
		var d any
		if a.digest {
			d = "sha256:" + a.file.SHA256
		}
		out = append(out, map[string]any{"id": i + 1, "name": a.name, "size": len(a.file.Data), "digest": d, "state": "uploaded",
			"content_type":         "application/octet-stream",
			"browser_download_url": "https://github.com/" + s[0] + "/" + s[1] + "/releases/download/" + tag + "/" + a.name})
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"tag_name": tag, "name": tag, "draft": false, "prerelease": false, "assets": out})
}

func (f *Fixture) github(w http.ResponseWriter, r *http.Request) {
	s := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if len(s) == 6 && s[2] == "releases" && s[3] == "download" {
		assets, _, _ := f.release(s[0]+"/"+s[1], s[4])
		for i, a := range assets {
			if a.name == s[5] {
				w.Header().Set("Location", fmt.Sprintf("https://release-assets.githubusercontent.com/github-production-release-asset/1/%d?sp=r&sv=2018-11-09&sig=fixture&rscd=attachment%%3B+filename%%3D%s", i, a.name))
				w.WriteHeader(http.StatusFound)
				return
			}
		}
	}
	http.NotFound(w, r)
}

func (f *Fixture) assets(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "" {
		f.CDNAuth.Add(1)
	}
	if r.URL.Query().Get("sig") == "" {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	name := strings.TrimPrefix(r.URL.Query().Get("rscd"), "attachment; filename=")
	f.mu.Lock()
	var file *File
	for _, tags := range f.releases {
		for _, as := range tags {
			for _, a := range as {
				if a.name == name {
					file = a.file
				}
			}
		}
	}
	f.mu.Unlock()
	if file == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", `"0x8DD`+file.SHA256[:12]+`"`)
	w.Header().Set("Last-Modified", "Mon, 02 Jun 2025 10:00:00 GMT")
	f.serveBytes(w, r, file)
}

// SetRaw sets a raw.githubusercontent.com file (/OWNER/REPO/REF/PATH).
func (f *Fixture) SetRaw(path string, data []byte) {
	f.mu.Lock()
	f.rawFiles[path] = data
	f.mu.Unlock()
}

// raw answers like raw.githubusercontent.com: a strong ETag (the content's hash), 304 to a
// matching If-None-Match, no digest the client could check in advance.
func (f *Fixture) raw(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	data, ok := f.rawFiles[r.URL.Path]
	f.mu.Unlock()
	if !ok {
		http.Error(w, "404: Not Found", http.StatusNotFound)
		return
	}
	file := newFile(data)
	w.Header().Set("ETag", `"`+file.SHA256[:40]+`"`)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "max-age=300")
	f.serveBytes(w, r, file)
}
