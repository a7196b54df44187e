package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sort"
	"strconv"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/store"
)

func cacheEntry(i store.Info) adminapi.CacheEntry {
	kind := "blob"
	switch {
	case oci.IsIndexType(i.MediaType):
		kind = "index"
	case oci.IsManifestType(i.MediaType):
		kind = "manifest"
	}
	return adminapi.CacheEntry{Digest: i.Digest.String(), Size: i.Size, MediaType: i.MediaType, Kind: kind,
		Created: i.Created.UTC(), Accessed: i.Accessed.UTC(), Pinned: i.Pinned}
}

func (a *admin) cacheList(r *http.Request) (any, error) {
	by := r.URL.Query().Get("sort")
	if by == "" {
		by = "size"
	}
	if by != "size" && by != "atime" {
		return nil, badRequest("sort %q: want size or atime", by)
	}
	var out []adminapi.CacheEntry
	err := a.store.Walk(r.Context(), func(i store.Info) error {
		e := cacheEntry(i)
		if a.fileName != nil && e.Kind == "blob" {
			if n := a.fileName(i.Digest); n != "" { // the daemon's files endpoint
				e.Kind, e.Name = "file", n
			}
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		x, y := out[i], out[j]
		if by == "atime" && !x.Accessed.Equal(y.Accessed) {
			return x.Accessed.After(y.Accessed)
		}
		if x.Size != y.Size {
			return x.Size > y.Size
		}
		return x.Digest < y.Digest
	})
	if out == nil {
		out = []adminapi.CacheEntry{}
	}
	if a.local != nil {
		_, local := a.local(r.Context())
		for i := range out {
			out[i].Local = local[digest.Digest(out[i].Digest)]
		}
	}
	st := a.store.Stats()
	l := adminapi.CacheList{Entries: out, BytesUsed: st.BytesUsed, MaxSize: st.MaxSize, Total: len(out)}
	// The web console lists the first entries and the pinned ones of a large store.
	if q := r.URL.Query(); q.Get("limit") != "" || q.Get("pinned") != "" {
		limited, err := limitCache(l.Entries, q.Get("limit"), q.Get("pinned"))
		if err != nil {
			return nil, err
		}
		l.Entries = limited
	}
	return l, nil
}

// resolveCached turns DIGEST or IMAGE into a digest using only what the store knows: operator
// commands on the cache never ask the upstream.
func (a *admin) resolveCached(ctx context.Context, target string) (digest.Digest, *imageRef, error) {
	if d, err := digest.Parse(target); err == nil {
		return d, nil, nil
	}
	ref, err := parseImageRef(target, a.opt.DefaultRegistry)
	if err != nil {
		return "", nil, err
	}
	if ref.digest != "" {
		return ref.digest, &ref, nil
	}
	t, err := a.store.GetTag(ctx, ref.tagKey())
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return "", &ref, notFound("%s is not in the cache (its tag was never pulled through this node)", ref)
		}
		return "", &ref, err
	}
	return t.Digest, &ref, nil
}

// readStored reads a stored manifest (nil if the content is absent or not a manifest).
func (a *admin) readStored(ctx context.Context, d digest.Digest) ([]byte, store.Info, error) {
	rc, info, err := a.store.Reader(ctx, d)
	if err != nil {
		return nil, info, err
	}
	defer rc.Close()
	if !oci.IsManifestType(info.MediaType) || info.Size > oci.MaxManifestSize {
		return nil, info, nil
	}
	b, err := io.ReadAll(io.LimitReader(rc, oci.MaxManifestSize+1))
	return b, info, err
}

// closure lists d and everything it references through stored manifests (children of an
// index, configs, layers), d first. Content that is not stored is listed too: a layer may have
// been evicted while its manifest stayed.
func (a *admin) closure(ctx context.Context, d digest.Digest) ([]digest.Digest, error) {
	seen := map[digest.Digest]bool{d: true}
	order := []digest.Digest{d}
	for i := 0; i < len(order); i++ {
		data, _, err := a.readStored(ctx, order[i])
		if errors.Is(err, store.ErrNotFound) || (err == nil && data == nil) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, k := range oci.ManifestRefs(data) {
			if !seen[k] {
				seen[k] = true
				order = append(order, k)
			}
		}
	}
	return order, nil
}

func (a *admin) cacheRemove(r *http.Request) (any, error) {
	ctx := r.Context()
	target := r.URL.Query().Get("target")
	if target == "" {
		return nil, badRequest("rm: name a digest or an image")
	}
	d, ref, err := a.resolveCached(ctx, target)
	if err != nil {
		return nil, err
	}
	res := adminapi.RemoveResult{Target: target, Removed: []adminapi.CacheEntry{}}
	if ref == nil { // a digest: exactly that content
		info, err := a.store.Stat(ctx, d)
		if err != nil {
			return nil, notFound("%s is not in the cache", d)
		}
		if err := a.store.Delete(ctx, d); err != nil {
			return nil, err
		}
		res.Removed = append(res.Removed, cacheEntry(info))
		res.Bytes = info.Size
		return res, nil
	}
	if _, err := a.store.Stat(ctx, d); err != nil {
		return nil, notFound("%s (%s) is not in the cache", ref, d)
	}
	mine, err := a.closure(ctx, d)
	if err != nil {
		return nil, err
	}
	inImage := map[digest.Digest]bool{}
	for _, x := range mine {
		inImage[x] = true
	}
	// Content other cached manifests reference stays: removing it would only cost them a refetch.
	others := map[digest.Digest]bool{}
	err = a.store.Walk(ctx, func(i store.Info) error {
		if inImage[i.Digest] || !oci.IsManifestType(i.MediaType) {
			return nil
		}
		data, _, err := a.readStored(ctx, i.Digest)
		if err != nil || data == nil {
			return nil
		}
		for _, x := range oci.ManifestRefs(data) {
			others[x] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, x := range mine {
		if others[x] && x != d {
			res.Shared = append(res.Shared, x.String())
			continue
		}
		info, err := a.store.Stat(ctx, x)
		if err != nil {
			continue
		}
		if err := a.store.Delete(ctx, x); err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		res.Removed = append(res.Removed, cacheEntry(info))
		res.Bytes += info.Size
	}
	return res, nil
}

func (a *admin) cacheGC(r *http.Request) (any, error) {
	g, err := a.store.GC(r.Context())
	if err != nil {
		return nil, err
	}
	if g.ByReason == nil {
		g.ByReason = map[string]int{}
	}
	return adminapi.GCResult{Evicted: g.Evicted, Bytes: g.Bytes, ByReason: g.ByReason, TagsDropped: g.TagsDropped}, nil
}

func (a *admin) cacheVerify(r *http.Request) (any, error) {
	v, err := a.store.Verify(r.Context())
	if err != nil {
		return nil, err
	}
	out := adminapi.VerifyResult{Checked: v.Checked, Bytes: v.Bytes, Corrupt: []string{}, Missing: []string{}}
	for _, d := range v.Corrupt {
		out.Corrupt = append(out.Corrupt, d.String())
	}
	for _, d := range v.Missing {
		out.Missing = append(out.Missing, d.String())
	}
	if len(v.Corrupt)+len(v.Missing) > 0 {
		a.log.Warn("cache verify removed damaged content", "corrupt", len(v.Corrupt), "missing", len(v.Missing))
	}
	return out, nil
}

// cachePin pins an image's top manifest; the store protects what it references.
func (a *admin) cachePin(r *http.Request, pin bool) (any, error) {
	ctx := r.Context()
	target := r.URL.Query().Get("image")
	if target == "" {
		return nil, badRequest("pin: name an image")
	}
	d, _, err := a.resolveCached(ctx, target)
	if err != nil {
		return nil, err
	}
	if pin {
		err = a.store.Pin(ctx, d)
	} else {
		err = a.store.Unpin(ctx, d)
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("%s (%s) is not in the cache", target, d)
	}
	if err != nil {
		return nil, err
	}
	return adminapi.PinResult{Image: target, Digest: d.String(), Pinned: pin}, nil
}

// limitCache keeps the pinned entries (pinned=true) and at most limit entries.
func limitCache(es []adminapi.CacheEntry, limit, pinned string) ([]adminapi.CacheEntry, error) {
	if pinned != "" {
		only, err := strconv.ParseBool(pinned)
		if err != nil {
			return nil, badRequest("pinned %q: want true or false", pinned)
		}
		kept := []adminapi.CacheEntry{}
		for _, e := range es {
			if e.Pinned == only {
				kept = append(kept, e)
			}
		}
		es = kept
	}
	if limit != "" {
		n, err := strconv.Atoi(limit)
		if err != nil || n < 0 {
			return nil, badRequest("limit %q: want a number", limit)
		}
		if len(es) > n {
			es = es[:n]
		}
	}
	return es, nil
}
