package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/oci"
)

// explain says, for each manifest, config and layer of an image (or one digest), whether the
// store has it, which peers advertise it and where the next request for it would be answered
// from, with the recent decisions for them. It never fetches a blob; a manifest the store
// lacks is fetched through the mirror (as a pull would), since without it the layers are
// unknown.
func (a *admin) explain(r *http.Request) (any, error) {
	ctx := r.Context()
	target := r.URL.Query().Get("target")
	if target == "" {
		return nil, badRequest("explain: name an image or a digest")
	}
	res := adminapi.Explain{Target: target, P2P: a.node != nil, Blobs: []adminapi.ExplainEntry{}, History: []adminapi.Decision{}}
	var entries []adminapi.ExplainEntry
	add := func(d digest.Digest, kind, plat string, size int64) int {
		e := adminapi.ExplainEntry{Digest: d.String(), Kind: kind, Platform: plat, Size: size}
		if info, err := a.store.Stat(ctx, d); err == nil {
			e.InStore, e.Pinned, e.Size = true, info.Pinned, info.Size
			if kind == "config" {
				e.Labels = a.storedLabels(ctx, d, info.Size)
			}
		}
		entries = append(entries, e)
		return len(entries) - 1
	}
	// manifest returns a manifest's bytes from the store, or through the mirror.
	var ref *imageRef
	manifest := func(d digest.Digest) ([]byte, string, bool) {
		if data, info, err := a.readStored(ctx, d); err == nil && data != nil {
			return data, info.MediaType, false
		}
		if ref == nil {
			return nil, "", false
		}
		fm, err := a.self.manifest(ctx, *ref, d.String())
		if err != nil {
			return nil, "", false
		}
		return fm.data, fm.mediaType, true
	}

	fileTarget := false
	if (isFileTarget(target) || strings.HasPrefix(target, "https://")) && a.fileDigest != nil { // the daemon's files endpoint
		d, ok := a.fileDigest(target)
		if !ok {
			return nil, notFound("%s: no file of that name was served by this node (name it as `shoal cache ls` does: hf://ORG/NAME@COMMIT/PATH)", target)
		}
		target, fileTarget = d.String(), true
	}
	if d, err := digest.Parse(target); err == nil {
		res.Digest, res.Resolution = d.String(), "digest given"
		if fileTarget {
			res.Resolution = "file name, as this node served it"
		}
		info, serr := a.store.Stat(ctx, d)
		kind := "blob"
		if serr == nil {
			res.MediaType = info.MediaType
			kind = cacheEntry(info).Kind
		}
		if a.fileName != nil && kind == "blob" && a.fileName(d) != "" {
			kind = "file"
		}
		add(d, kind, "", info.Size)
		if kind == "index" || kind == "manifest" {
			a.explainChildren(ctx, d, manifest, add)
		}
	} else {
		r, err := parseImageRef(target, a.opt.DefaultRegistry)
		if err != nil {
			return nil, err
		}
		ref = &r
		top, how, err := a.resolveForExplain(ctx, r)
		if err != nil {
			return nil, err
		}
		res.Digest, res.Resolution = top.String(), how
		data, mt, fetched := manifest(top)
		if data == nil {
			return nil, fmt.Errorf("explain: manifest %s of %s is not available", top, r)
		}
		res.MediaType = mt
		kind := "manifest"
		if oci.IsIndexType(mt) {
			kind = "index"
		}
		i := add(top, kind, "", int64(len(data)))
		if fetched {
			entries[i].Reason = "fetched now through the mirror for explain"
		}
		a.explainChildren(ctx, top, manifest, add)
	}
	var registry, repo string
	if ref != nil {
		registry, repo = ref.registry, ref.repo
	}
	a.dl.Explain(ctx, registry, repo, entries)
	res.Blobs = entries
	seen := map[string]bool{}
	for _, e := range entries {
		if seen[e.Digest] {
			continue
		}
		seen[e.Digest] = true
		res.History = append(res.History, a.dl.Recent(digest.Digest(e.Digest), 5)...)
	}
	sort.SliceStable(res.History, func(i, j int) bool { return res.History[i].Time.After(res.History[j].Time) })
	if len(res.History) > 50 {
		res.History = res.History[:50]
	}
	return res, nil
}

// resolveForExplain finds an image's digest: given, from the store's tag record, or by asking
// the mirror (which revalidates the tag as a client's pull would).
func (a *admin) resolveForExplain(ctx context.Context, r imageRef) (digest.Digest, string, error) {
	if r.digest != "" {
		return r.digest, "digest given in the reference", nil
	}
	if t, err := a.store.GetTag(ctx, r.tagKey()); err == nil {
		return t.Digest, fmt.Sprintf("tag %s known to the store (last checked upstream %s ago)", r.tag, time.Since(t.Checked).Round(time.Second)), nil
	}
	fm, err := a.self.manifest(ctx, r, r.tag)
	if err != nil {
		return "", "", err
	}
	return fm.digest, fmt.Sprintf("tag %s was not cached: resolved through the mirror now (source %s)", r.tag, fm.source), nil
}

// explainChildren adds the platform manifests of an index, and configs and layers.
func (a *admin) explainChildren(ctx context.Context, d digest.Digest, manifest func(digest.Digest) ([]byte, string, bool), add func(digest.Digest, string, string, int64) int) {
	data, _, _ := manifest(d)
	if data == nil {
		return
	}
	doc, err := oci.ParseManifest(data)
	if err != nil {
		return
	}
	layers := func(doc oci.Doc, plat string) {
		if c := doc.Config(); c != nil {
			add(c.Digest, "config", plat, c.Size)
		}
		for _, l := range doc.Layers() {
			add(l.Digest, "layer", plat, l.Size)
		}
	}
	if !doc.IsIndex() {
		layers(doc, "")
		return
	}
	for _, child := range doc.Manifests() {
		plat := oci.FormatPlatform(child.Platform)
		add(child.Digest, "manifest", plat, child.Size)
		cdata, _, _ := manifest(child.Digest)
		if cdata == nil {
			continue
		}
		if cdoc, err := oci.ParseManifest(cdata); err == nil {
			layers(cdoc, plat)
		}
	}
}

// storedLabels reads an image config's labels from the store (nil when it is not there, too
// large or not a config). They come from the image's author: shown, never trusted.
func (a *admin) storedLabels(ctx context.Context, d digest.Digest, size int64) map[string]string {
	if size > 1<<20 {
		return nil
	}
	rc, _, err := a.store.Reader(ctx, d)
	if err != nil {
		return nil
	}
	defer rc.Close()
	var cfg struct {
		Config struct {
			Labels map[string]string `json:"Labels"`
		} `json:"config"`
	}
	if json.NewDecoder(io.LimitReader(rc, 1<<20)).Decode(&cfg) != nil {
		return nil
	}
	return cfg.Config.Labels
}
