package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// wtHost names the in-process upstream registry for write-through tests: a host name (not
// 127.0.0.1:PORT) so that it can be the first element of a repository name clients accept.
const wtHost = "wt.example"

func writeThrough(up *upstreamLog, rc upstream.RegistryConfig) func(*Config) {
	return func(c *Config) {
		rc.URL = up.srv.URL
		c.SetRegistry(wtHost, rc)
	}
}

// crane push (go-containerregistry's remote.Write, crane's own code) through node A to a
// registry configured with write_through: the upstream holds the image, with the same digest;
// node B pulls it right after from A (0 upstream blob GETs).
func TestWriteThroughPush(t *testing.T) {
	up := newUpstream(t)
	wt := writeThrough(up, upstream.RegistryConfig{WriteThrough: true})
	a := startNode(t, up, nil, wt)
	b := startNode(t, up, a.node.Addrs(), wt)
	waitFor(t, func() bool { return b.node.Status().RoutingTableSize > 0 && a.node.Status().RoutingTableSize > 0 })

	img, _ := random.Image(512<<10, 3)
	ref, _ := name.ParseReference(a.Addr()+"/"+wtHost+"/team/app:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push through A: %v", err)
	}
	// The upstream holds it: a client asking the upstream directly gets the same digest.
	direct, _ := name.ParseReference(up.host()+"/team/app:v1", name.Insecure)
	got, err := remote.Image(direct)
	if err != nil {
		t.Fatalf("pull from the upstream: %v; upstream saw %v", err, up.reqs)
	}
	if mustDigest(t, got) != mustDigest(t, img) {
		t.Fatalf("upstream holds %s, pushed %s", mustDigest(t, got), mustDigest(t, img))
	}
	if tg, err := a.store.GetTag(t.Context(), wtHost+"/team/app:v1"); err != nil || tg.Digest.String() != mustDigest(t, img).String() {
		t.Fatalf("A's tag: %+v %v", tg, err)
	}

	// B pulls right after: the blobs come from A, not from the upstream.
	waitProvided(t, b.node, layerDigests(t, img)...)
	up.reset()
	pulled, err := pullThrough(t, b, wtHost+"/team/app:v1")
	if err != nil {
		t.Fatalf("pull on B: %v", err)
	}
	if mustDigest(t, pulled) != mustDigest(t, img) {
		t.Fatalf("B pulled %s", mustDigest(t, pulled))
	}
	if n := up.count("GET", "/blobs/"); n != 0 {
		t.Errorf("B's pull made %d upstream blob GETs, want 0", n)
	}
}

// A registry without write_through, and any registry not configured, still answer 405.
func TestWriteThroughOnlyWhereConfigured(t *testing.T) {
	up := newUpstream(t)
	d := startDaemon(t, up, writeThrough(up, upstream.RegistryConfig{}))
	for _, p := range []string{"/v2/" + wtHost + "/team/app/blobs/uploads/", "/v2/other.example/team/app/blobs/uploads/", "/v2/team/app/blobs/uploads/"} {
		st, _, body := pushReq(t, d, "POST", p, nil, nil)
		if st != http.StatusMethodNotAllowed || firstCode(t, body) != "UNSUPPORTED" {
			t.Errorf("POST %s: %d %s, want 405 UNSUPPORTED", p, st, body)
		}
	}
	img, _ := random.Image(1024, 1)
	ref, _ := name.ParseReference(d.Addr()+"/"+wtHost+"/team/app:v1", name.Insecure)
	if err := remote.Write(ref, img); err == nil {
		t.Fatal("push to a registry without write_through succeeded")
	}
	if up.count("PUT", "/manifests/") != 0 || up.count("POST", "/blobs/uploads/") != 0 {
		t.Error("something was forwarded to a registry without write_through")
	}
}

// The upstream refuses: shoal's credentials (the client's first blob HEAD already sees it),
// or the push alone (an account that may pull, not push: 403 DENIED on the upload, as Docker
// Hub and distribution answer). The client sees the refusal, nothing is tagged on the node,
// the upstream holds nothing.
func TestWriteThroughUpstreamRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*upstreamLog)
	}{
		{"wrong credentials", func(u *upstreamLog) { u.basicAuth("team/", "ci", "right") }},
		{"push denied", func(u *upstreamLog) { u.denyWrites() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t)
			tc.set(up)
			d := startDaemon(t, up, writeThrough(up, upstream.RegistryConfig{WriteThrough: true, Username: "ci", Password: "wrong"}))
			img, _ := random.Image(4096, 2)
			ref, _ := name.ParseReference(d.Addr()+"/"+wtHost+"/team/app:v1", name.Insecure)
			err := remote.Write(ref, img)
			if err == nil {
				t.Fatal("push succeeded though the upstream refused it")
			}
			if !strings.Contains(err.Error(), "DENIED") && !strings.Contains(err.Error(), "403") {
				t.Errorf("client saw %v, want the upstream's refusal (403 DENIED)", err)
			}
			t.Logf("client saw: %v", err)
			if _, err := d.store.GetTag(t.Context(), wtHost+"/team/app:v1"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("tag on the node after a refused push: %v", err)
			}
			md, _ := img.Digest()
			if _, err := d.store.Stat(t.Context(), digest.Digest(md.String())); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("manifest stored on the node after a refused push: %v", err)
			}
			direct, _ := name.ParseReference(up.host()+"/team/app:v1", name.Insecure)
			if _, err := remote.Head(direct, remote.WithAuth(&authn.Basic{Username: "ci", Password: "right"})); err == nil {
				t.Error("the upstream holds the tag")
			}
		})
	}
}

// denyWrites refuses every write with 403 DENIED: an account that may pull but not push.
func (u *upstreamLog) denyWrites() {
	inner := u.registry
	u.registry = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`))
			return
		}
		inner.ServeHTTP(w, r)
	})
}

// Content pushed to a registry that needed credentials is not offered to peers (private stays
// private): B has to fetch it from the upstream itself.
func TestWriteThroughPrivateStaysPrivate(t *testing.T) {
	up := newUpstream(t)
	up.basicAuth("team/", "ci", "right")
	wt := writeThrough(up, upstream.RegistryConfig{WriteThrough: true, Username: "ci", Password: "right"})
	a := startNode(t, up, nil, wt)
	b := startNode(t, up, a.node.Addrs(), wt)
	waitFor(t, func() bool { return b.node.Status().RoutingTableSize > 0 && a.node.Status().RoutingTableSize > 0 })

	img, _ := random.Image(64<<10, 2)
	ref, _ := name.ParseReference(a.Addr()+"/"+wtHost+"/team/app:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push through A: %v", err)
	}
	up.reset()
	if _, err := pullThrough(t, b, wtHost+"/team/app:v1"); err != nil {
		t.Fatalf("pull on B: %v", err)
	}
	if n := up.count("GET", "/blobs/"); n != len(layerDigests(t, img)) {
		t.Errorf("B fetched %d blobs from the upstream, want all %d (none from A)", n, len(layerDigests(t, img)))
	}
	for _, d := range layerDigests(t, img) {
		if ps, _ := b.node.FindProviders(t.Context(), d, 5); len(ps) != 0 && ps[0].ID == a.node.ID() {
			t.Errorf("A advertises private blob %s", d)
		}
	}
}

// write_through in the file reaches the upstream configuration (setRegistry merges field by
// field and would drop a field it does not know).
func TestWriteThroughFromFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("registries:\n  "+wtHost+":\n    url: http://127.0.0.1:1\n    write_through: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	if err := c.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	if !c.Upstream.Registries[wtHost].WriteThrough {
		t.Fatalf("write_through lost: %+v", c.Upstream.Registries[wtHost])
	}
}

// containerd's hosts.toml names the registry with ?ns= (the path then holds the repository
// only): a monolithic upload and a manifest PUT that way reach the registry too.
func TestWriteThroughNsParameter(t *testing.T) {
	up := newUpstream(t)
	d := startDaemon(t, up, writeThrough(up, upstream.RegistryConfig{WriteThrough: true}))
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cd := digest.SHA256.FromBytes(cfg)
	st, _, body := pushReq(t, d, "POST", "/v2/team/ns/blobs/uploads/?ns="+wtHost+"&digest="+cd.String(), bytes.NewReader(cfg),
		map[string]string{"Content-Type": "application/octet-stream"})
	if st != http.StatusCreated {
		t.Fatalf("monolithic upload: %d %s", st, body)
	}
	man := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`, cd, len(cfg)))
	st, hdr, body := pushReq(t, d, "PUT", "/v2/team/ns/manifests/v1?ns="+wtHost, bytes.NewReader(man),
		map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
	if st != http.StatusCreated || hdr.Get("Docker-Content-Digest") != digest.SHA256.FromBytes(man).String() {
		t.Fatalf("manifest PUT: %d %v %s", st, hdr, body)
	}
	resp, err := http.Get(up.srv.URL + "/v2/team/ns/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != digest.SHA256.FromBytes(man).String() {
		t.Fatalf("registry answers %s %q", resp.Status, resp.Header.Get("Docker-Content-Digest"))
	}
}

// A multi-platform image (an index and its child manifests, pushed by digest first) goes
// through write-through whole: the registry serves the index with the same digest.
func TestWriteThroughIndex(t *testing.T) {
	up := newUpstream(t)
	d := startDaemon(t, up, writeThrough(up, upstream.RegistryConfig{WriteThrough: true}))
	idx, err := random.Index(2048, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(d.Addr()+"/"+wtHost+"/team/multi:v1", name.Insecure)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatalf("index push through shoal: %v", err)
	}
	direct, _ := name.ParseReference(up.host()+"/team/multi:v1", name.Insecure)
	got, err := remote.Index(direct)
	if err != nil {
		t.Fatalf("registry: %v", err)
	}
	gd, _ := got.Digest()
	wd, _ := idx.Digest()
	if gd != wd {
		t.Fatalf("registry holds %s, pushed %s", gd, wd)
	}
	im, _ := got.IndexManifest()
	for _, m := range im.Manifests {
		img, err := got.Image(m.Digest)
		if err != nil {
			t.Fatalf("child %s: %v", m.Digest, err)
		}
		if _, err := img.Layers(); err != nil {
			t.Fatal(err)
		}
	}
}

// refuseDeletes answers DELETE as distribution does with storage.delete.enabled false (its
// default; registry/handlers: errcode.ErrorCodeUnsupported, HTTP 405, message "The operation
// is unsupported."); Debian's docker-registry is that code.
func (u *upstreamLog) refuseDeletes() {
	inner := u.registry
	u.registry = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusMethodNotAllowed)
			_, _ = w.Write([]byte(`{"errors":[{"code":"UNSUPPORTED","message":"The operation is unsupported."}]}`))
			return
		}
		inner.ServeHTTP(w, r)
	})
}

// mountable answers cross-repository mounts as the distribution spec says and distribution
// does (POST /v2/REPO/blobs/uploads/?mount=D&from=SRC: 201 Created with the blob's Location and
// Docker-Content-Digest when SRC holds D, else an upload session, 202); go-containerregistry's
// in-process registry ignores mount and always opens a session. mounted counts the 201s.
func (u *upstreamLog) mountable(mounted *atomic.Int64) {
	inner := u.registry
	u.registry = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if repo, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/blobs/uploads/"); ok && r.Method == http.MethodPost && q.Get("mount") != "" {
			rec := httptest.NewRecorder()
			inner.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, "/v2/"+q.Get("from")+"/blobs/"+q.Get("mount"), nil))
			if rec.Code == http.StatusOK {
				mounted.Add(1)
				w.Header().Set("Location", "/v2/"+repo+"/blobs/"+q.Get("mount"))
				w.Header().Set("Docker-Content-Digest", q.Get("mount"))
				w.WriteHeader(http.StatusCreated)
				return
			}
		}
		inner.ServeHTTP(w, r)
	})
}

// The write-through gaps: HEAD of a blob the node lacks is answered from the registry's HEAD
// (the blob is not downloaded); a cross-repository mount is passed to the registry (201 though
// the node does not hold the blob); DELETE of a tag and of a blob reach the registry and the
// node forgets its copy; a registry that turns deletes off gives the client its 405 UNSUPPORTED
// and the node keeps everything.
func TestWriteThroughHeadMountDelete(t *testing.T) {
	up := newUpstream(t)
	var mounted atomic.Int64
	up.mountable(&mounted)
	base := pushRandom(t, up, "team/base", 1<<20, 1) // in the registry only
	d := startDaemon(t, up, writeThrough(up, upstream.RegistryConfig{WriteThrough: true}))
	layer := layerDigests(t, base)[0]
	ls, _ := base.Layers()
	size, _ := ls[0].Size()
	up.reset()
	st, hdr, body := pushReq(t, d, "HEAD", "/v2/"+wtHost+"/team/base/blobs/"+layer.String(), nil, nil)
	if st != http.StatusOK || hdr.Get("Content-Length") != fmt.Sprint(size) || hdr.Get("Docker-Content-Digest") != layer.String() {
		t.Fatalf("HEAD of a registry blob: %d %v %s", st, hdr, body)
	}
	if n := up.count("GET", "/blobs/"); n != 0 {
		t.Fatalf("HEAD made %d upstream blob GETs, want 0 (answered from the registry's HEAD)", n)
	}
	if _, err := d.store.Stat(t.Context(), layer); err == nil {
		t.Fatal("HEAD stored the blob")
	}
	if st, _, _ := pushReq(t, d, "HEAD", "/v2/"+wtHost+"/team/base/blobs/"+digest.FromString("none").String(), nil, nil); st != http.StatusNotFound {
		t.Fatalf("HEAD of a blob nobody holds: %d", st)
	}

	// Mount from another repository of the registry: the registry mounts it.
	st, hdr, body = pushReq(t, d, "POST", "/v2/"+wtHost+"/team/app/blobs/uploads/?mount="+layer.String()+"&from="+wtHost+"/team/base", nil, nil)
	if st != http.StatusCreated || hdr.Get("Docker-Content-Digest") != layer.String() {
		t.Fatalf("mount: %d %v %s", st, hdr, body)
	}
	if mounted.Load() != 1 || up.count("PATCH", "/blobs/uploads/") != 0 || up.count("PUT", "/blobs/uploads/") != 0 {
		t.Fatalf("the registry mounted %d blobs and saw %v, want one mount and no upload", mounted.Load(), up.reqs)
	}

	// DELETE of a tag pushed through the node: gone in the registry and on the node.
	img, _ := random.Image(4096, 1)
	ref, _ := name.ParseReference(d.Addr()+"/"+wtHost+"/team/app:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	if st, _, body := pushReq(t, d, "DELETE", "/v2/"+wtHost+"/team/app/manifests/v1", nil, nil); st != http.StatusAccepted {
		t.Fatalf("DELETE of a tag: %d %s", st, body)
	}
	resp, err := http.Get(up.srv.URL + "/v2/team/app/manifests/v1")
	if err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the registry still serves the deleted tag: %v %v", resp, err)
	}
	resp.Body.Close() // else its connection's goroutines outlive the tests (goleak)
	if _, err := d.store.GetTag(t.Context(), wtHost+"/team/app:v1"); err == nil {
		t.Fatal("the node still holds the deleted tag")
	}

	// A registry with deletes off: its 405 UNSUPPORTED reaches the client; nothing deleted.
	up.refuseDeletes()
	img2, _ := random.Image(4096, 1)
	ref2, _ := name.ParseReference(d.Addr()+"/"+wtHost+"/team/app:v2", name.Insecure)
	if err := remote.Write(ref2, img2); err != nil {
		t.Fatal(err)
	}
	md := mustDigest(t, img2).String()
	for _, p := range []string{"manifests/v2", "manifests/" + md, "blobs/" + layerDigests(t, img2)[0].String()} {
		st, _, body := pushReq(t, d, "DELETE", "/v2/"+wtHost+"/team/app/"+p, nil, nil)
		if st != http.StatusMethodNotAllowed || firstCode(t, body) != "UNSUPPORTED" {
			t.Fatalf("DELETE %s with deletes off upstream: %d %s, want 405 UNSUPPORTED", p, st, body)
		}
	}
	if _, err := d.store.GetTag(t.Context(), wtHost+"/team/app:v2"); err != nil {
		t.Fatal("the node dropped a tag the registry refused to delete")
	}
}

// A write-through push gets its copies too (push.local_replicas, default 2): when it answers,
// another node holds the image (checked with the registry, not pinned: cache content), so the
// rollout right after is served by peers even if the pushing node leaves.
func TestWriteThroughCopies(t *testing.T) {
	up := newUpstream(t)
	wt := writeThrough(up, upstream.RegistryConfig{WriteThrough: true})
	a := startNode(t, up, nil, wt)
	nodes := []*Daemon{a, startNode(t, up, a.node.Addrs(), wt), startNode(t, up, a.node.Addrs(), wt)}
	for _, n := range nodes {
		waitFor(t, func() bool { return len(n.node.Status().Peers) >= len(nodes)-1 })
	}
	img, _ := random.Image(64<<10, 2)
	var copies string
	ref, _ := name.ParseReference(a.Addr()+"/"+wtHost+"/team/app:v1", name.Insecure)
	tr := &headerSpy{rt: http.DefaultTransport, path: "/manifests/v1", header: "X-Shoal-Copies", got: &copies}
	if err := remote.Write(ref, img, remote.WithTransport(tr)); err != nil {
		t.Fatalf("push: %v", err)
	}
	if copies != "2" {
		t.Fatalf("X-Shoal-Copies %q, want 2", copies)
	}
	md := digest.Digest(mustDigest(t, img).String())
	holders := 0
	for _, n := range nodes[1:] {
		held := true
		for _, d := range append(layerDigests(t, img), md) {
			if _, err := n.store.Stat(t.Context(), d); err != nil {
				held = false
			}
		}
		if held {
			holders++
			if info, _ := n.store.Stat(t.Context(), md); info.Pinned {
				t.Error("a write-through copy is pinned; it is cache content")
			}
			if tg, err := n.store.GetTag(t.Context(), wtHost+"/team/app:v1"); err != nil || tg.Digest != md {
				t.Errorf("the holder's tag: %+v %v", tg, err)
			}
		}
	}
	if holders != 1 {
		t.Fatalf("%d other nodes hold the image when the push answered, want 1", holders)
	}
}
