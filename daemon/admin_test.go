package daemon

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/admin"
)

// withOps gives a test daemon a metrics port of its own (the default one is shared).
func withOps(c *Config) { c.MetricsListen = "127.0.0.1:0" }

func adminFor(t *testing.T, d *Daemon) *adminapi.Client {
	t.Helper()
	cl, err := adminapi.NewClient(d.AdminAddr())
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func imageBlobs(t *testing.T, img v1.Image) []digest.Digest {
	t.Helper()
	return layerDigests(t, img) // layers, then config
}

func pull(t *testing.T, cl *adminapi.Client, req adminapi.PullRequest) ([]adminapi.PullEvent, adminapi.PullEvent) {
	t.Helper()
	var evs []adminapi.PullEvent
	done, err := cl.Pull(t.Context(), req, func(ev adminapi.PullEvent) { evs = append(evs, ev) })
	if err != nil {
		t.Fatalf("pull %v: %v", req.Images, err)
	}
	return evs, done
}

// shoal pull warms the store through the mirror: every blob is fetched once from the upstream,
// the progress stream says so, and a second pull is answered from the store.
func TestAdminPullWarmsTheCache(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/warm", 256<<10, 3)
	d := startDaemon(t, up, withOps)
	cl := adminFor(t, d)
	up.reset()

	evs, done := pull(t, cl, adminapi.PullRequest{Images: []string{"test/warm"}})
	if done.Errors != 0 || done.Blobs != 4 || done.Images != 1 {
		t.Fatalf("done event %+v, want 1 image, 4 blobs, no errors; events:\n%v", done, evs)
	}
	if evs[0].Type != adminapi.EventImage || evs[0].Digest != mustDigest(t, img).String() {
		t.Errorf("first event %+v, want the image resolved to %s", evs[0], mustDigest(t, img))
	}
	finished := map[string]string{}
	for _, ev := range evs {
		if ev.Type == adminapi.EventBlob && ev.State == adminapi.StateDone {
			finished[ev.Digest] = ev.Source
		}
	}
	for _, b := range imageBlobs(t, img) {
		if finished[b.String()] != "upstream" {
			t.Errorf("blob %s: done from %q, want upstream", b, finished[b.String()])
		}
		if _, err := d.store.Stat(t.Context(), b); err != nil {
			t.Errorf("blob %s not in the store after pull: %v", b, err)
		}
	}
	if n := up.count("GET", "/blobs/"); n != 4 {
		t.Errorf("upstream blob GETs: %d, want 4", n)
	}

	up.reset()
	evs, done = pull(t, cl, adminapi.PullRequest{Images: []string{d.cfg.DefaultRegistry + "/test/warm:latest"}})
	for _, ev := range evs {
		if ev.Type == adminapi.EventBlob && ev.Source != "store" {
			t.Errorf("second pull: %s from %q, want store", ev.Digest, ev.Source)
		}
	}
	if n := up.count("GET", "/blobs/"); n != 0 || done.Bytes != 0 {
		t.Errorf("second pull: %d upstream blob GETs, %d bytes fetched; want 0", n, done.Bytes)
	}
}

func TestAdminPullErrors(t *testing.T) {
	up := newUpstream(t)
	d := startDaemon(t, up, withOps)
	cl := adminFor(t, d)
	_, done := pull(t, cl, adminapi.PullRequest{Images: []string{"test/nothing:here"}})
	if done.Errors != 1 {
		t.Errorf("pull of a missing image: done %+v, want 1 error", done)
	}
	_, err := cl.Pull(t.Context(), adminapi.PullRequest{Images: []string{"Bad/Name"}}, nil)
	var ae *adminapi.APIError
	if !errors.As(err, &ae) || ae.Code != adminapi.CodeBadRequest {
		t.Errorf("pull of an invalid name: %v, want a bad_request API error", err)
	}
}

// explain tells store, in-flight, peer and upstream apart, and shows recorded decisions.
func TestAdminExplainWithoutP2P(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/why", 64<<10, 2)
	d := startDaemon(t, up, withOps)
	cl := adminFor(t, d)

	e, err := cl.Explain(t.Context(), "test/why")
	if err != nil {
		t.Fatal(err)
	}
	if e.Digest != mustDigest(t, img).String() || !strings.Contains(e.Resolution, "not cached") {
		t.Errorf("explain before any pull: digest %s (%s), want %s resolved through the mirror", e.Digest, e.Resolution, mustDigest(t, img))
	}
	for _, b := range e.Blobs {
		if b.Kind == "layer" && (b.InStore || b.Next != "upstream" || !strings.Contains(b.Reason, "P2P disabled")) {
			t.Errorf("before pull: %+v, want next from upstream because P2P is disabled", b)
		}
	}
	if _, err := pullThrough(t, d, "test/why:latest"); err != nil {
		t.Fatal(err)
	}
	waitStored(t, d, imageBlobs(t, img)...)
	e, err = cl.Explain(t.Context(), "test/why")
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Blobs) != 4 { // manifest, config, 2 layers
		t.Fatalf("explain lists %d entries, want 4: %+v", len(e.Blobs), e.Blobs)
	}
	for _, b := range e.Blobs {
		if !b.InStore || b.Next != "store" {
			t.Errorf("after pull: %+v, want in the store", b)
		}
		if b.Kind == "layer" && (b.Last == nil || b.Last.Source != "upstream" || b.Last.Reason != "P2P disabled") {
			t.Errorf("layer %s: last decision %+v, want upstream because P2P disabled", b.Digest, b.Last)
		}
	}
	if len(e.History) == 0 {
		t.Error("explain shows no history after a pull")
	}
	if _, err := cl.Explain(t.Context(), "sha256:"+strings.Repeat("0", 64)); err != nil {
		t.Errorf("explain of an unknown digest: %v", err)
	}
}

// With P2P, explain names the peer that provides a layer this node does not have.
func TestAdminExplainNamesProviders(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/peers", 64<<10, 2)
	a := startNode(t, up, nil, withOps)
	b := startNode(t, up, a.node.Addrs(), withOps)
	if _, err := pullThrough(t, a, "test/peers:latest"); err != nil {
		t.Fatal(err)
	}
	waitProvided(t, b.node, imageBlobs(t, img)...)
	e, err := adminFor(t, b).Explain(t.Context(), "test/peers")
	if err != nil {
		t.Fatal(err)
	}
	// The swarm's designated fetcher of a digest may be B itself: then B holds it already.
	for _, x := range e.Blobs {
		if x.Kind != "layer" {
			continue
		}
		if !slices.Contains(x.Providers, a.node.ID()) {
			t.Errorf("layer %s on B: providers %v, want A (%s) among them", x.Digest, x.Providers, a.node.ID())
		}
		if want := map[bool]string{true: "store", false: "peer"}[x.InStore]; x.Next != want {
			t.Errorf("layer %s on B (in store: %v): next %s, want %s", x.Digest, x.InStore, x.Next, want)
		}
	}
	ps, err := adminFor(t, b).Peers(t.Context())
	if err != nil || !ps.Enabled || len(ps.Peers) == 0 {
		t.Fatalf("peers on B: %+v, %v; want A listed", ps, err)
	}
	if _, err := adminFor(t, b).Ping(t.Context(), a.node.ID()); err != nil {
		t.Errorf("ping A from B: %v", err)
	}
	st, err := adminFor(t, b).Status(t.Context())
	if err != nil || st.P2P == nil || st.P2P.PeerID != b.node.ID() || st.P2P.Peers < 1 {
		t.Errorf("status of B: %+v, %v", st.P2P, err)
	}
}

func TestAdminCacheCommands(t *testing.T) {
	up := newUpstream(t)
	big := pushRandom(t, up, "test/big", 512<<10, 2)
	small := pushRandom(t, up, "test/small", 16<<10, 1)
	d := startDaemon(t, up, withOps)
	cl := adminFor(t, d)
	ctx := t.Context()
	pull(t, cl, adminapi.PullRequest{Images: []string{"test/big", "test/small"}})

	l, err := cl.CacheList(ctx, "size")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Entries) != 7 { // 2 manifests, 2 configs, 3 layers
		t.Fatalf("cache ls: %d entries, want 7", len(l.Entries))
	}
	for i := 1; i < len(l.Entries); i++ {
		if l.Entries[i].Size > l.Entries[i-1].Size {
			t.Fatalf("cache ls --sort size is not largest first: %+v", l.Entries)
		}
	}
	if _, err := cl.CacheList(ctx, "name"); !isAPICode(err, adminapi.CodeBadRequest) {
		t.Errorf("sort by name: %v, want bad_request", err)
	}

	p, err := cl.CachePin(ctx, "test/big", true)
	if err != nil || p.Digest != mustDigest(t, big).String() {
		t.Fatalf("pin: %+v, %v", p, err)
	}
	info, _ := d.store.Stat(ctx, digest.Digest(mustDigest(t, big).String()))
	if !info.Pinned {
		t.Error("pinned image's manifest is not pinned in the store")
	}
	if _, err := cl.CachePin(ctx, "test/unknown", true); !isAPICode(err, adminapi.CodeNotFound) {
		t.Errorf("pin of an uncached image: %v, want not_found", err)
	}
	if _, err := cl.CachePin(ctx, "test/big", false); err != nil {
		t.Fatal(err)
	}

	r, err := cl.CacheRemove(ctx, "test/small")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Removed) != 3 {
		t.Errorf("rm test/small removed %d items, want 3 (manifest, config, layer)", len(r.Removed))
	}
	for _, b := range append(imageBlobs(t, small), digest.Digest(mustDigest(t, small).String())) {
		if _, err := d.store.Stat(ctx, b); err == nil {
			t.Errorf("%s still stored after rm", b)
		}
	}
	for _, b := range imageBlobs(t, big) {
		if _, err := d.store.Stat(ctx, b); err != nil {
			t.Errorf("rm of test/small removed %s of test/big", b)
		}
	}
	layer := imageBlobs(t, big)[0]
	if r, err := cl.CacheRemove(ctx, layer.String()); err != nil || len(r.Removed) != 1 {
		t.Errorf("rm digest: %+v, %v", r, err)
	}
	if _, err := cl.CacheRemove(ctx, layer.String()); !isAPICode(err, adminapi.CodeNotFound) {
		t.Errorf("second rm of a digest: %v, want not_found", err)
	}

	// Damage a stored blob behind the store's back: verify finds and removes it.
	victim := imageBlobs(t, big)[1]
	path := filepath.Join(d.cfg.DataDir, "blobs", victim.Algorithm().String(), victim.Encoded()[:2], victim.Encoded())
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("blob file layout changed? %v", err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := cl.CacheVerify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Corrupt) != 1 || v.Corrupt[0] != victim.String() {
		t.Errorf("verify: corrupt %v, want [%s]", v.Corrupt, victim)
	}
	if _, err := cl.CacheGC(ctx); err != nil {
		t.Errorf("gc: %v", err)
	}
}

// waitStored waits for blobs a client has read to be committed (the last byte goes out once
// verified, before the fsync).
func waitStored(t *testing.T, d *Daemon, ds ...digest.Digest) {
	t.Helper()
	waitFor(t, func() bool {
		for _, x := range ds {
			if _, err := d.store.Stat(context.Background(), x); err != nil {
				return false
			}
		}
		return true
	})
}

func isAPICode(err error, code string) bool {
	var ae *adminapi.APIError
	return errors.As(err, &ae) && ae.Code == code
}

// The export tarball has an OCI layout and a Docker manifest.json over the same verified
// blobs; unknown images fail before any byte of tar is sent.
func TestAdminExportTarball(t *testing.T) {
	up := newUpstream(t)
	one := pushRandom(t, up, "test/one", 32<<10, 2)
	two := pushRandom(t, up, "test/two", 32<<10, 1)
	d := startDaemon(t, up, withOps)
	cl := adminFor(t, d)

	rc, err := cl.Export(t.Context(), adminapi.ExportRequest{Images: []string{"test/one:latest", "test/two"}})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
	rc.Close()
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout: %q", files["oci-layout"])
	}
	for name, b := range files {
		if strings.HasPrefix(name, "blobs/sha256/") && digest.FromBytes(b).Encoded() != strings.TrimPrefix(name, "blobs/sha256/") {
			t.Errorf("%s does not hash to its name", name)
		}
	}
	var idx struct {
		Manifests []ocispec.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &idx); err != nil || len(idx.Manifests) != 2 {
		t.Fatalf("index.json: %v: %s", err, files["index.json"])
	}
	reg := d.cfg.DefaultRegistry
	if got := idx.Manifests[0].Annotations[admin.AnnotationImageName]; got != reg+"/test/one:latest" || idx.Manifests[0].Digest.String() != mustDigest(t, one).String() {
		t.Errorf("index.json names %s %s, want %s/test/one:latest %s", got, idx.Manifests[0].Digest, reg, mustDigest(t, one))
	}
	var dm []admin.DockerEntry
	if err := json.Unmarshal(files["manifest.json"], &dm); err != nil || len(dm) != 2 {
		t.Fatalf("manifest.json: %v: %s", err, files["manifest.json"])
	}
	if dm[1].RepoTags[0] != reg+"/test/two:latest" || len(dm[1].Layers) != 1 {
		t.Errorf("manifest.json entry %+v", dm[1])
	}
	for _, e := range dm {
		for _, p := range append([]string{e.Config}, e.Layers...) {
			if _, ok := files[p]; !ok {
				t.Errorf("manifest.json names %s, which the tar lacks", p)
			}
		}
	}
	_ = two

	// The same tarball under /_shoal/export?images=A,B on the admin socket.
	sock := strings.TrimPrefix(d.AdminAddr(), "unix:")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://admin/_shoal/export?images=test/one,test/two")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-tar" || err != nil || n < 1024 {
		t.Errorf("GET /_shoal/export: %s %s, %d bytes, %v", resp.Status, resp.Header.Get("Content-Type"), n, err)
	}

	_, err = cl.Export(t.Context(), adminapi.ExportRequest{Images: []string{"test/none"}})
	if !isAPICode(err, adminapi.CodeNotFound) {
		t.Errorf("export of a missing image: %v, want not_found before the tar starts", err)
	}
}

func TestAdminUnreachableAndLongSocketPath(t *testing.T) {
	cl, err := adminapi.NewClient("unix:" + filepath.Join(t.TempDir(), "none.sock"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cl.Status(t.Context())
	var ue *adminapi.UnreachableError
	if !errors.As(err, &ue) {
		t.Fatalf("status with no daemon: %v, want UnreachableError", err)
	}

	up := newUpstream(t)
	deep := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	d := startDaemon(t, up, withOps, func(c *Config) { c.DataDir = deep })
	if len(d.AdminAddr()) <= 108 {
		t.Fatalf("socket path %s is not longer than sun_path", d.AdminAddr())
	}
	fi, err := os.Stat(filepath.Join(deep, "admin.sock"))
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("admin socket: %v, mode %v; want 0660", err, fi.Mode().Perm())
	}
	s, err := adminFor(t, d).Status(context.Background())
	if err != nil || s.DataDir != deep || !s.Ready || s.P2P != nil {
		t.Fatalf("status over a long socket path: %+v, %v", s, err)
	}
}
