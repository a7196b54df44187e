package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/shoal-mirror/shoal/push"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// pushReq sends one request to the daemon's mirror port and returns status, headers, body.
func pushReq(t *testing.T, d *Daemon, method, path string, body io.Reader, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	return pushReqVia(t, http.DefaultClient, d, method, path, body, hdr)
}

func pushReqVia(t *testing.T, c *http.Client, d *Daemon, method, path string, body io.Reader, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+d.Addr()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Content-Length" {
			fmt.Sscan(v, &req.ContentLength)
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func firstCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("not an OCI error body: %q", body)
	}
	return e.Errors[0].Code
}

// tmpEntries lists the store's temporary files (uploads in progress).
func tmpEntries(t *testing.T, d *Daemon) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(d.cfg.Store.Dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// A real client (go-containerregistry's remote.Write: POST, PATCH, PUT per layer, manifest by
// tag) pushes into shoal.local; it pulls back byte for byte, a copy into another repository
// mounts the blobs, tags list, and the pushed image survives a GC that evicts everything
// else for its TTL.
func TestPushLocalNamespace(t *testing.T) {
	up := newUpstream(t)
	pushRandom(t, up, "cached/img", 64<<10, 2)
	d := startDaemon(t, up, func(c *Config) { c.Store.TTL = time.Millisecond; c.Store.GCInterval = time.Hour })

	img, err := random.Image(300<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(d.Addr()+"/shoal.local/team/app:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push: %v", err)
	}
	got, err := pullThrough(t, d, "shoal.local/team/app:v1")
	if err != nil {
		t.Fatalf("pull of the pushed image: %v", err)
	}
	if mustDigest(t, got) != mustDigest(t, img) {
		t.Fatalf("pulled %s, pushed %s", mustDigest(t, got), mustDigest(t, img))
	}

	// Copy into another repository: the blobs exist, so the client mounts or skips them.
	dst, _ := name.ParseReference(d.Addr()+"/shoal.local/other/app:v2", name.Insecure)
	if err := remote.Write(dst, img); err != nil {
		t.Fatalf("copy: %v", err)
	}
	tags, err := remote.List(dst.Context())
	if err != nil || !slices.Equal(tags, []string{"v2"}) {
		t.Fatalf("tags of other/app: %v %v", tags, err)
	}
	// Cross-repository mount answers 201 without a body.
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	st, hdr, _ := pushReq(t, d, "POST", "/v2/shoal.local/third/app/blobs/uploads/?mount="+ld.String()+"&from=team/app", nil, nil)
	if st != http.StatusCreated || hdr.Get("Docker-Content-Digest") != ld.String() {
		t.Fatalf("mount: %d %v", st, hdr)
	}

	// An image pulled through the mirror is ordinary cache; the pushed one is pinned.
	if _, err := pullThrough(t, d, "cached/img:latest"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		res, err := d.store.GC(context.Background())
		return err == nil && res.ByReason[store.ReasonTTL] > 0
	})
	if _, err := pullThrough(t, d, "shoal.local/team/app:v1"); err != nil {
		t.Fatalf("the pushed image did not survive GC: %v", err)
	}
	if info, err := d.store.Stat(context.Background(), digest.Digest(mustDigest(t, img).String())); err != nil || !info.Pinned {
		t.Fatalf("pushed manifest not pinned: %+v %v", info, err)
	}
	// Never routed upstream: the upstream saw no request for shoal.local.
	if n := up.count("GET", "shoal.local") + up.count("HEAD", "shoal.local"); n != 0 {
		t.Fatalf("upstream saw %d requests for the local namespace", n)
	}
}

// Monolithic and chunked uploads as the spec words them, with the headers clients follow.
func TestPushUploadProtocol(t *testing.T) {
	d := startDaemon(t, newUpstream(t))
	data := make([]byte, 100_000)
	_, _ = rand.Read(data)
	dg := digest.FromBytes(data)

	// Monolithic POST ?digest=.
	st, hdr, body := pushReq(t, d, "POST", "/v2/shoal.local/mono/blobs/uploads/?digest="+dg.String(), bytes.NewReader(data),
		map[string]string{"Content-Type": "application/octet-stream"})
	if st != http.StatusCreated || hdr.Get("Location") != "/v2/shoal.local/mono/blobs/"+dg.String() {
		t.Fatalf("monolithic POST: %d %v %s", st, hdr, body)
	}
	st, hdr, _ = pushReq(t, d, "HEAD", "/v2/shoal.local/mono/blobs/"+dg.String(), nil, nil)
	if st != 200 || hdr.Get("Content-Length") != "100000" || hdr.Get("Docker-Content-Digest") != dg.String() {
		t.Fatalf("HEAD blob: %d %v", st, hdr)
	}

	// Chunked: POST, PATCH with Content-Range, a PATCH that skips ahead (416), GET status, PUT.
	data2 := append([]byte(nil), data...)
	data2[0] ^= 1
	dg2 := digest.FromBytes(data2)
	st, hdr, _ = pushReq(t, d, "POST", "/v2/shoal.local/chunk/blobs/uploads/", nil, nil)
	loc, id := hdr.Get("Location"), hdr.Get("Docker-Upload-UUID")
	if st != http.StatusAccepted || loc == "" || id == "" || hdr.Get("Range") != "0-0" {
		t.Fatalf("POST: %d %v", st, hdr)
	}
	st, hdr, _ = pushReq(t, d, "PATCH", loc, bytes.NewReader(data2[:40_000]), map[string]string{"Content-Range": "0-39999", "Content-Type": "application/octet-stream"})
	if st != http.StatusAccepted || hdr.Get("Range") != "0-39999" {
		t.Fatalf("PATCH 1: %d %v", st, hdr)
	}
	st, hdr, body = pushReq(t, d, "PATCH", loc, bytes.NewReader(data2[50_000:]), map[string]string{"Content-Range": "50000-99999"})
	if st != http.StatusRequestedRangeNotSatisfiable || hdr.Get("Range") != "0-39999" {
		t.Fatalf("out-of-order PATCH: %d %v %s", st, hdr, body)
	}
	st, hdr, _ = pushReq(t, d, "GET", loc, nil, nil)
	if st != http.StatusNoContent || hdr.Get("Range") != "0-39999" || hdr.Get("Docker-Upload-UUID") != id {
		t.Fatalf("status: %d %v", st, hdr)
	}
	st, hdr, _ = pushReq(t, d, "PATCH", loc, bytes.NewReader(data2[40_000:70_000]), nil) // streamed, no Content-Range
	if st != http.StatusAccepted || hdr.Get("Range") != "0-69999" {
		t.Fatalf("PATCH 2: %d %v", st, hdr)
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	st, hdr, body = pushReq(t, d, "PUT", loc+sep+"digest="+dg2.String(), bytes.NewReader(data2[70_000:]), nil)
	if st != http.StatusCreated || hdr.Get("Docker-Content-Digest") != dg2.String() {
		t.Fatalf("final PUT: %d %v %s", st, hdr, body)
	}
	st, _, body = pushReq(t, d, "GET", "/v2/shoal.local/chunk/blobs/"+dg2.String(), nil, nil)
	if st != 200 || !bytes.Equal(body, data2) {
		t.Fatalf("GET chunked blob: %d, %d bytes", st, len(body))
	}
	st, _, body = pushReq(t, d, "GET", loc, nil, nil)
	if st != 404 || firstCode(t, body) != "BLOB_UPLOAD_UNKNOWN" {
		t.Fatalf("finished upload still known: %d %s", st, body)
	}
	if es := tmpEntries(t, d); len(es) != 0 {
		t.Fatalf("temporary files left: %v", es)
	}

	// Manifest by digest, then DELETE of tag, manifest and blob.
	cfgBlob := []byte(`{}`)
	cd := digest.FromBytes(cfgBlob)
	pushReq(t, d, "POST", "/v2/shoal.local/chunk/blobs/uploads/?digest="+cd.String(), bytes.NewReader(cfgBlob), nil)
	man := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":100000}]}`, cd, dg2)
	md := digest.FromString(man)
	mt := map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
	if st, _, body := pushReq(t, d, "PUT", "/v2/shoal.local/chunk/manifests/"+md.String(), strings.NewReader(man), mt); st != 201 {
		t.Fatalf("PUT manifest by digest: %d %s", st, body)
	}
	if st, _, body := pushReq(t, d, "PUT", "/v2/shoal.local/chunk/manifests/t1", strings.NewReader(man), mt); st != 201 {
		t.Fatalf("PUT manifest by tag: %d %s", st, body)
	}
	st, hdr, _ = pushReq(t, d, "HEAD", "/v2/shoal.local/chunk/manifests/t1", nil, nil)
	if st != 200 || hdr.Get("Docker-Content-Digest") != md.String() || hdr.Get("Content-Type") != mt["Content-Type"] {
		t.Fatalf("HEAD manifest: %d %v", st, hdr)
	}
	if st, _, _ := pushReq(t, d, "DELETE", "/v2/shoal.local/chunk/manifests/t1", nil, nil); st != 202 {
		t.Fatalf("DELETE tag: %d", st)
	}
	if st, _, _ := pushReq(t, d, "GET", "/v2/shoal.local/chunk/manifests/t1", nil, nil); st != 404 {
		t.Fatalf("deleted tag still resolves: %d", st)
	}
	if st, _, _ := pushReq(t, d, "DELETE", "/v2/shoal.local/chunk/manifests/"+md.String(), nil, nil); st != 202 {
		t.Fatalf("DELETE manifest: %d", st)
	}
	if st, _, _ := pushReq(t, d, "GET", "/v2/shoal.local/chunk/manifests/"+md.String(), nil, nil); st != 404 {
		t.Fatalf("deleted manifest still served: %d", st)
	}
	if st, _, _ := pushReq(t, d, "DELETE", "/v2/shoal.local/chunk/blobs/"+dg2.String(), nil, nil); st != 202 {
		t.Fatalf("DELETE blob: %d", st)
	}
	if st, _, _ := pushReq(t, d, "HEAD", "/v2/shoal.local/chunk/blobs/"+dg2.String(), nil, nil); st != 404 {
		t.Fatalf("deleted blob still served: %d", st)
	}
	// containerd's hosts.toml form: ?ns=shoal.local with the bare repository in the path.
	st, hdr, _ = pushReq(t, d, "HEAD", "/v2/mono/blobs/"+dg.String()+"?ns=shoal.local", nil, nil)
	if st != 200 || hdr.Get("Docker-Content-Digest") != dg.String() {
		t.Fatalf("HEAD via ns: %d", st)
	}
	// Outside the namespace a push is still refused as before.
	if st, _, body := pushReq(t, d, "POST", "/v2/library/alpine/blobs/uploads/", nil, nil); st != http.StatusMethodNotAllowed || firstCode(t, body) != "UNSUPPORTED" {
		t.Fatalf("push outside the namespace: %d %s", st, body)
	}
}

// A large streamed upload (over several of the store's buffers and writeback chunks) with one
// byte flipped on the way is refused at the final PUT with DIGEST_INVALID: nothing visible, no
// temporary file; the intact bytes then push and read back byte for byte.
func TestPushLargeCorruptedUploadIsCaught(t *testing.T) {
	d := startDaemon(t, newUpstream(t))
	data := make([]byte, 20<<20+4321)
	_, _ = rand.Read(data)
	dg := digest.FromBytes(data)
	bad := bytes.Clone(data)
	bad[13<<20+7] ^= 1
	upload := func(body []byte) (int, []byte) {
		t.Helper()
		st, hdr, b := pushReq(t, d, "POST", "/v2/shoal.local/big/blobs/uploads/", nil, nil)
		if st != http.StatusAccepted {
			t.Fatalf("POST: %d %s", st, b)
		}
		loc := hdr.Get("Location")
		// Streamed as clients do (no length: chunked), in uneven pieces.
		st, _, b = pushReq(t, d, "PATCH", loc, struct{ io.Reader }{bytes.NewReader(body)}, map[string]string{"Content-Length": "-1"})
		if st != http.StatusAccepted {
			t.Fatalf("PATCH: %d %s", st, b)
		}
		sep := "?"
		if strings.Contains(loc, "?") {
			sep = "&"
		}
		st, _, b = pushReq(t, d, "PUT", loc+sep+"digest="+dg.String(), nil, nil)
		return st, b
	}
	if st, body := upload(bad); st != http.StatusBadRequest || firstCode(t, body) != "DIGEST_INVALID" {
		t.Fatalf("corrupted upload: %d %s", st, body)
	}
	if st, _, _ := pushReq(t, d, "HEAD", "/v2/shoal.local/big/blobs/"+dg.String(), nil, nil); st != 404 {
		t.Fatalf("corrupted upload visible: %d", st)
	}
	if es := tmpEntries(t, d); len(es) != 0 {
		t.Fatalf("temporary files left: %v", es)
	}
	if st, body := upload(data); st != http.StatusCreated {
		t.Fatalf("intact upload: %d %s", st, body)
	}
	st, _, body := pushReq(t, d, "GET", "/v2/shoal.local/big/blobs/"+dg.String(), nil, nil)
	if st != 200 || !bytes.Equal(body, data) {
		t.Fatalf("GET: %d, %d bytes, equal %v", st, len(body), bytes.Equal(body, data))
	}
}

// Bad input gets clear OCI errors, leaves nothing visible and no temporary data.
func TestPushBadInput(t *testing.T) {
	d := startDaemon(t, newUpstream(t), func(c *Config) { c.StoreMaxBlobSize = 1 << 20 })
	data := []byte("some layer bytes")
	good := digest.FromBytes(data)
	wrong := digest.FromString("other bytes")

	// Digest mismatch on a monolithic upload.
	st, _, body := pushReq(t, d, "POST", "/v2/shoal.local/bad/blobs/uploads/?digest="+wrong.String(), bytes.NewReader(data), nil)
	if st != 400 || firstCode(t, body) != "DIGEST_INVALID" {
		t.Fatalf("digest mismatch: %d %s", st, body)
	}
	for _, dg := range []digest.Digest{good, wrong} {
		if st, _, _ := pushReq(t, d, "HEAD", "/v2/shoal.local/bad/blobs/"+dg.String(), nil, nil); st != 404 {
			t.Fatalf("blob %s visible after a mismatch: %d", dg, st)
		}
	}

	// A manifest referencing blobs never uploaded.
	man := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":2},"layers":[]}`, wrong)
	st, _, body = pushReq(t, d, "PUT", "/v2/shoal.local/bad/manifests/v1", strings.NewReader(man), map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
	if st != 400 || firstCode(t, body) != "MANIFEST_BLOB_UNKNOWN" || !strings.Contains(string(body), wrong.String()) {
		t.Fatalf("manifest with missing blobs: %d %s", st, body)
	}
	if st, _, _ := pushReq(t, d, "GET", "/v2/shoal.local/bad/manifests/v1", nil, nil); st != 404 {
		t.Fatalf("rejected manifest's tag resolves: %d", st)
	}
	if _, err := d.store.Stat(context.Background(), digest.FromString(man)); err == nil {
		t.Fatal("rejected manifest was stored")
	}
	// A manifest pushed by a digest it does not hash to.
	st, _, body = pushReq(t, d, "PUT", "/v2/shoal.local/bad/manifests/"+wrong.String(), strings.NewReader(`{"schemaVersion":2}`), nil)
	if st != 400 || firstCode(t, body) != "DIGEST_INVALID" {
		t.Fatalf("manifest digest mismatch: %d %s", st, body)
	}

	// A huge upload (announced) and an endless one (chunked, no length): 413, session gone.
	st, _, body = pushReq(t, d, "POST", "/v2/shoal.local/bad/blobs/uploads/?digest="+good.String(), bytes.NewReader(make([]byte, 2<<20)), nil)
	if st != http.StatusRequestEntityTooLarge || firstCode(t, body) != "SIZE_INVALID" {
		t.Fatalf("huge upload: %d %s", st, body)
	}
	_, hdr, _ := pushReq(t, d, "POST", "/v2/shoal.local/bad/blobs/uploads/", nil, nil)
	loc := hdr.Get("Location")
	endless := io.LimitReader(zeros{}, 64<<20) // stands for a body that never ends
	st, _, body = pushReq(t, d, "PATCH", loc, endless, map[string]string{"Content-Length": "-1"})
	if st != http.StatusRequestEntityTooLarge || firstCode(t, body) != "SIZE_INVALID" {
		t.Fatalf("endless upload: %d %s", st, body)
	}
	if st, _, _ := pushReq(t, d, "GET", loc, nil, nil); st != 404 {
		t.Fatalf("upload over the cap still open: %d", st)
	}
	waitFor(t, func() bool { return len(tmpEntries(t, d)) == 0 })

	// Bad names and references.
	if st, _, body := pushReq(t, d, "POST", "/v2/shoal.local/Bad_Name/blobs/uploads/", nil, nil); st != 400 || firstCode(t, body) != "NAME_INVALID" {
		t.Fatalf("bad name: %d %s", st, body)
	}
	if st, _, body := pushReq(t, d, "PUT", "/v2/shoal.local/ok/blobs/uploads/nosuchid?digest="+good.String(), nil, nil); st != 404 || firstCode(t, body) != "BLOB_UPLOAD_UNKNOWN" {
		t.Fatalf("unknown upload: %d %s", st, body)
	}
	if st, _, body := pushReq(t, d, "PUT", "/v2/shoal.local/ok/manifests/v1", strings.NewReader("not json"), nil); st != 400 || firstCode(t, body) != "MANIFEST_INVALID" {
		t.Fatalf("not JSON: %d %s", st, body)
	}
	if st, _, body := pushReq(t, d, "PATCH", "/v2/shoal.local/ok/manifests/v1", nil, nil); st != 405 || firstCode(t, body) != "UNSUPPORTED" {
		t.Fatalf("PATCH on a manifest: %d %s", st, body)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// An upload that stops halfway is dropped after push.upload_timeout with its temporary file.
func TestPushAbandonedUploadIsCleanedUp(t *testing.T) {
	d := startDaemon(t, newUpstream(t), func(c *Config) { c.Push.UploadTimeout = 300 * time.Millisecond })
	_, hdr, _ := pushReq(t, d, "POST", "/v2/shoal.local/gone/blobs/uploads/", nil, nil)
	loc := hdr.Get("Location")
	if st, _, _ := pushReq(t, d, "PATCH", loc, bytes.NewReader(make([]byte, 50_000)), nil); st != 202 {
		t.Fatalf("PATCH: %d", st)
	}
	if es := tmpEntries(t, d); len(es) != 1 {
		t.Fatalf("want the upload's one temporary file, have %v", es)
	}
	waitFor(t, func() bool { return len(tmpEntries(t, d)) == 0 })
	st, _, body := pushReq(t, d, "GET", loc, nil, nil)
	if st != 404 || firstCode(t, body) != "BLOB_UPLOAD_UNKNOWN" {
		t.Fatalf("abandoned upload still known: %d %s", st, body)
	}
}

// Who may push: loopback by default; others need a login and a push.users rule.
func TestPushAuthorization(t *testing.T) {
	dir := t.TempDir()
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	htp := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htp, []byte("ci:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ip := nextIP() // the daemon listens on its own loopback address; clients come from 127.0.0.1
	d := startDaemon(t, newUpstream(t), func(c *Config) {
		c.Listen = ip + ":0"
		c.Guard.Htpasswd = htp
		c.Push.TrustedCIDR = []string{ip + "/32"} // 127.0.0.1 stands for a remote client
		c.Push.Users = []string{"ci=team/*"}
	})
	data := []byte("layer")
	dg := digest.FromBytes(data)
	up := func(repo, user, pass string) (int, http.Header, []byte) {
		req, _ := http.NewRequest("POST", "http://"+d.Addr()+"/v2/shoal.local/"+repo+"/blobs/uploads/?digest="+dg.String(), bytes.NewReader(data))
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	st, hdr, body := up("team/app", "", "")
	if st != 401 || firstCode(t, body) != "UNAUTHORIZED" || !strings.HasPrefix(hdr.Get("Www-Authenticate"), "Basic") {
		t.Fatalf("anonymous remote push: %d %v %s", st, hdr, body)
	}
	if st, _, body := up("team/app", "ci", "wrong"); st != 401 {
		t.Fatalf("wrong password: %d %s", st, body)
	}
	if st, _, body := up("other/app", "ci", "s3cret"); st != 403 || firstCode(t, body) != "DENIED" {
		t.Fatalf("push outside the user's pattern: %d %s", st, body)
	}
	if _, err := d.store.Stat(context.Background(), dg); err == nil {
		t.Fatal("a refused push stored its blob")
	}
	if st, _, body := up("team/app", "ci", "s3cret"); st != 201 {
		t.Fatalf("allowed push: %d %s", st, body)
	}
	// Reads need no push rights; a client on the trusted address pushes without a login.
	if st, _, _ := pushReq(t, d, "HEAD", "/v2/shoal.local/team/app/blobs/"+dg.String(), nil, nil); st != 200 {
		t.Fatalf("read: %d", st)
	}
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}
	defer tr.CloseIdleConnections()
	st, _, body = pushReqVia(t, &http.Client{Transport: tr}, d, "POST", "/v2/shoal.local/any/thing/blobs/uploads/", nil, nil)
	if st != 202 {
		t.Fatalf("trusted push: %d %s", st, body)
	}
	// go-containerregistry's client answers the Basic challenge with the keychain's login.
	img, _ := random.Image(1024, 1)
	ref, _ := name.ParseReference(d.Addr()+"/shoal.local/team/img:v1", name.Insecure)
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "ci", Password: "s3cret"})); err != nil {
		t.Fatalf("push with login: %v", err)
	}
}

// The namespace must not hide an upstream registry of the same name.
func TestPushNamespaceMayNotShadowARegistry(t *testing.T) {
	c := DefaultConfig()
	c.DataDir = t.TempDir()
	c.SetRegistry(push.DefaultNamespace, upstream.RegistryConfig{URL: "http://127.0.0.1:1"})
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "push.namespace") {
		t.Fatalf("want a push.namespace error, got %v", err)
	}
	c = DefaultConfig()
	c.DataDir = t.TempDir()
	c.Push.Namespace = "local" // no dot: would read as docker.io/local/...
	if err := c.Validate(); err == nil {
		t.Fatal("namespace without a dot accepted")
	}
}

// A tag pushed on node A resolves on B–E within a second, with the upstream down; the image
// comes from A (a peer), verified; a tag deleted on C is gone everywhere; two nodes pushing one
// tag at nearly the same time leave every node on the same, newer image.
func TestPushClusterTags(t *testing.T) {
	up := newUpstream(t)
	up.down.Store(true) // the local namespace never needs it
	a := startNode(t, up, nil)
	nodes := []*Daemon{a}
	for range 4 {
		nodes = append(nodes, startNode(t, up, a.node.Addrs()))
	}
	for _, n := range nodes {
		waitFor(t, func() bool { return len(n.node.Status().Peers) >= len(nodes)-1 })
	}

	img, _ := random.Image(200<<10, 2)
	ref, _ := name.ParseReference(a.Addr()+"/shoal.local/team/app:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push on A: %v", err)
	}
	pushed := time.Now()
	for i, n := range nodes[1:] {
		got, err := pullThrough(t, n, "shoal.local/team/app:v1")
		if err != nil {
			t.Fatalf("node %d: pull of A's push: %v", i+1, err)
		}
		if mustDigest(t, got) != mustDigest(t, img) {
			t.Fatalf("node %d: %s, want %s", i+1, mustDigest(t, got), mustDigest(t, img))
		}
	}
	t.Logf("A's tag resolved and pulled on 4 nodes in %v", time.Since(pushed).Round(time.Millisecond))
	if since := time.Since(pushed); since > 10*time.Second {
		t.Errorf("took %v", since)
	}

	// Delete on C: every node stops resolving the tag (within the tag TTL).
	st, _, body := pushReq(t, nodes[2], "DELETE", "/v2/shoal.local/team/app/manifests/v1", nil, nil)
	if st != http.StatusAccepted {
		t.Fatalf("delete on C: %d %s", st, body)
	}
	for _, n := range nodes {
		waitFor(t, func() bool {
			st, _, _ := pushReq(t, n, "HEAD", "/v2/shoal.local/team/app/manifests/v1", nil, nil)
			return st == http.StatusNotFound
		})
	}

	// B and D push the same tag at nearly the same time: every node settles on the same one.
	imgs := make([]v1.Image, 2)
	errs := make(chan error, 2)
	for i, n := range []*Daemon{nodes[1], nodes[3]} {
		imgs[i], _ = random.Image(10<<10, 1)
		go func() {
			r, _ := name.ParseReference(n.Addr()+"/shoal.local/race/app:latest", name.Insecure)
			errs <- remote.Write(r, imgs[i])
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent push: %v", err)
		}
	}
	want := map[string]bool{mustDigest(t, imgs[0]).String(): true, mustDigest(t, imgs[1]).String(): true}
	var settled string
	waitFor(t, func() bool {
		seen := map[string]bool{}
		for _, n := range nodes {
			_, hdr, _ := pushReq(t, n, "HEAD", "/v2/shoal.local/race/app/manifests/latest", nil, nil)
			seen[hdr.Get("Docker-Content-Digest")] = true
			settled = hdr.Get("Docker-Content-Digest")
		}
		return len(seen) == 1 && want[settled]
	})
	if _, err := pullThrough(t, nodes[4], "shoal.local/race/app:latest"); err != nil {
		t.Fatalf("pull of the settled tag on E: %v", err)
	}
}

// startStoppable is startDaemon with a stop function, for a node that leaves mid-test.
func startStoppable(t *testing.T, up *upstreamLog, bootstrap []string, mod ...func(*Config)) (*Daemon, func()) {
	t.Helper()
	ip := nextIP()
	cfg := DefaultConfig()
	cfg.Listen = ip + ":0"
	cfg.DataDir = t.TempDir()
	cfg.DefaultRegistry = up.host()
	cfg.Upstream.OnlyConfigured = true
	cfg.SetRegistry(up.host(), upstream.RegistryConfig{URL: up.srv.URL})
	cfg.P2PEnabled = true
	cfg.P2P.Listen = []string{"/ip4/" + ip + "/tcp/0"}
	cfg.P2P.Bootstrap = bootstrap
	cfg.P2P.LookupTimeout = 2 * time.Second
	for _, f := range mod {
		f(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("daemon.New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("daemon.Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return d, stop
}

// A push returns once push.local_replicas nodes hold the image (X-Shoal-Copies says how many);
// when the pushing node is killed right after, the image still pulls everywhere and the
// remaining holders bring the copies back to K.
func TestPushCopiesSurviveANode(t *testing.T) {
	up := newUpstream(t)
	up.down.Store(true)
	fast := func(c *Config) { c.Push.RepairInterval = 200 * time.Millisecond }
	a, stopA := startStoppable(t, up, nil, fast)
	nodes := []*Daemon{a}
	for range 3 {
		n, _ := startStoppable(t, up, a.node.Addrs(), fast)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		waitFor(t, func() bool { return len(n.node.Status().Peers) >= len(nodes)-1 })
	}
	img, _ := random.Image(100<<10, 2)
	var copies string
	ref, _ := name.ParseReference(a.Addr()+"/shoal.local/keep/app:v1", name.Insecure)
	tr := &headerSpy{rt: http.DefaultTransport, path: "/manifests/v1", header: "X-Shoal-Copies", got: &copies}
	if err := remote.Write(ref, img, remote.WithTransport(tr)); err != nil {
		t.Fatalf("push: %v", err)
	}
	if copies != "2" {
		t.Fatalf("X-Shoal-Copies %q, want 2", copies)
	}
	md := digest.Digest(mustDigest(t, img).String())
	all := layerDigests(t, img)
	holds := func(n *Daemon) bool {
		for _, d := range append(all, md) {
			if _, err := n.store.Stat(context.Background(), d); err != nil {
				return false
			}
		}
		return true
	}
	holders := 0
	for _, n := range nodes[1:] {
		if holds(n) {
			holders++
		}
	}
	if holders != 1 {
		t.Fatalf("%d other nodes hold the image when the push returned, want 1", holders)
	}
	stopA() // the pushing node leaves right after the push
	rest := nodes[1:]
	waitFor(t, func() bool {
		n := 0
		for _, d := range rest {
			if holds(d) {
				n++
			}
		}
		return n >= 2
	})
	for i, n := range rest {
		got, err := pullThrough(t, n, "shoal.local/keep/app:v1")
		if err != nil || mustDigest(t, got) != mustDigest(t, img) {
			t.Fatalf("node %d after A left: %v", i+1, err)
		}
	}
}

// headerSpy records a response header of requests whose path has a suffix.
type headerSpy struct {
	rt     http.RoundTripper
	path   string
	header string
	got    *string
}

func (h *headerSpy) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.rt.RoundTrip(r)
	if err == nil && r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, h.path) {
		*h.got = resp.Header.Get(h.header)
	}
	return resp, err
}

// Rejected pushes leak nothing to peers: no provider record, no tag record, nothing a peer can
// fetch.
func TestPushRejectedContentNeverReachesPeers(t *testing.T) {
	up := newUpstream(t)
	up.down.Store(true)
	a := startNode(t, up, nil)
	b := startNode(t, up, a.node.Addrs())
	waitFor(t, func() bool { return len(b.node.Status().Peers) >= 1 })

	data := []byte("bytes sent under the wrong digest")
	sent, wrong := digest.FromBytes(data), digest.FromString("something else")
	if st, _, _ := pushReq(t, a, "POST", "/v2/shoal.local/bad/blobs/uploads/?digest="+wrong.String(), bytes.NewReader(data), nil); st != 400 {
		t.Fatalf("digest mismatch: %d", st)
	}
	man := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":2},"layers":[]}`, wrong)
	if st, _, _ := pushReq(t, a, "PUT", "/v2/shoal.local/bad/manifests/v1", strings.NewReader(man), map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}); st != 400 {
		t.Fatalf("manifest with missing blobs: %d", st)
	}
	// A good push after them, so that we know announcements do reach B.
	img, _ := random.Image(1024, 1)
	ref, _ := name.ParseReference(a.Addr()+"/shoal.local/good/app:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	waitProvided(t, b.node, digest.Digest(mustDigest(t, img).String()))

	for _, d := range []digest.Digest{sent, wrong, digest.FromString(man)} {
		if ps, _ := b.node.FindProviders(t.Context(), d, 5); len(ps) != 0 {
			t.Errorf("%s is provided by %v", d, ps)
		}
		if st, _, _ := pushReq(t, b, "GET", "/v2/shoal.local/bad/blobs/"+d.String(), nil, nil); st != 404 {
			t.Errorf("B serves %s: %d", d, st)
		}
	}
	if _, err := b.node.LookupTag(t.Context(), "shoal.local/bad:v1"); err == nil {
		t.Error("the rejected manifest's tag reached the DHT")
	}
	if st, _, _ := pushReq(t, b, "GET", "/v2/shoal.local/bad/manifests/v1", nil, nil); st != 404 {
		t.Errorf("B resolves the rejected tag: %d", st)
	}
}

// tags/list on the local namespace lists the tags pushed on any node of the swarm, never an
// upstream's (even when the upstream has a repository of the same name and this node pulled
// from it), paginated with n, last and Link, and without tags deleted on another node.
func TestPushTagsListClusterWide(t *testing.T) {
	up := newUpstream(t)
	pushRandom(t, up, "team/app", 1<<10, 1) // the upstream's team/app:latest
	a := startNode(t, up, nil)
	b := startNode(t, up, a.node.Addrs())
	c := startNode(t, up, a.node.Addrs())
	nodes := []*Daemon{a, b, c}
	for _, n := range nodes {
		waitFor(t, func() bool { return len(n.node.Status().Peers) >= len(nodes)-1 })
	}
	if _, err := pullThrough(t, c, "team/app:latest"); err != nil { // C knows the upstream's tag
		t.Fatal(err)
	}
	for _, p := range []struct {
		on  *Daemon
		tag string
	}{{a, "v1"}, {a, "v2"}, {b, "v3"}} {
		img, _ := random.Image(1<<10, 1)
		ref, _ := name.ParseReference(p.on.Addr()+"/shoal.local/team/app:"+p.tag, name.Insecure)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	list := func(d *Daemon, query string) ([]string, string) {
		t.Helper()
		st, hdr, body := pushReq(t, d, "GET", "/v2/shoal.local/team/app/tags/list"+query, nil, nil)
		if st != http.StatusOK {
			t.Fatalf("tags/list%s on %s: %d %s", query, d.Addr(), st, body)
		}
		var got struct {
			Name string   `json:"name"`
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(body, &got); err != nil || got.Name != "shoal.local/team/app" {
			t.Fatalf("tags/list%s: %s (%v)", query, body, err)
		}
		return got.Tags, hdr.Get("Link")
	}
	for _, d := range nodes {
		if got, link := list(d, ""); !slices.Equal(got, []string{"v1", "v2", "v3"}) || link != "" {
			t.Fatalf("tags/list on %s: %q (Link %q), want v1 v2 v3: the tags pushed on A and B, not the upstream's latest", d.Addr(), got, link)
		}
	}
	got, link := list(c, "?n=2")
	if !slices.Equal(got, []string{"v1", "v2"}) || link != `</v2/shoal.local/team/app/tags/list?n=2&last=v2>; rel="next"` {
		t.Fatalf("page 1: %q, Link %q", got, link)
	}
	if got, link := list(c, "?n=2&last=v2"); !slices.Equal(got, []string{"v3"}) || link != "" {
		t.Fatalf("page 2: %q, Link %q", got, link)
	}
	// v2 (pushed on A) deleted on B: every node stops listing it within the tag TTL.
	if st, _, body := pushReq(t, b, "DELETE", "/v2/shoal.local/team/app/manifests/v2", nil, nil); st != http.StatusAccepted {
		t.Fatalf("delete v2 on B: %d %s", st, body)
	}
	for _, d := range nodes {
		waitFor(t, func() bool { got, _ := list(d, ""); return slices.Equal(got, []string{"v1", "v3"}) })
	}
}

// DELETE of a manifest by digest removes it from the namespace on every node: the tags of the
// repository naming it (pushed on another node) stop resolving everywhere, reads by digest
// answer 404 everywhere, the node holding its copy unpins it (cache now, evictable), a second
// DELETE answers 404 MANIFEST_UNKNOWN; another tag of the repository is untouched, and a push
// of the same image afterwards makes it readable again.
func TestPushDeleteManifestClusterWide(t *testing.T) {
	up := newUpstream(t)
	up.down.Store(true)
	a := startNode(t, up, nil)
	b := startNode(t, up, a.node.Addrs())
	c := startNode(t, up, a.node.Addrs())
	nodes := []*Daemon{a, b, c}
	for _, n := range nodes {
		waitFor(t, func() bool { return len(n.node.Status().Peers) >= len(nodes)-1 })
	}
	img, _ := random.Image(10<<10, 1)
	other, _ := random.Image(10<<10, 1)
	md := digest.Digest(mustDigest(t, img).String())
	for _, p := range []struct {
		tag string
		img v1.Image
	}{{"v1", img}, {"also", img}, {"other", other}} {
		ref, _ := name.ParseReference(a.Addr()+"/shoal.local/team/del:"+p.tag, name.Insecure)
		if err := remote.Write(ref, p.img); err != nil {
			t.Fatal(err)
		}
	}
	var holder *Daemon // the node that took the push's copy (local_replicas 2)
	for _, n := range nodes[1:] {
		if info, err := n.store.Stat(context.Background(), md); err == nil && info.Pinned {
			holder = n
		}
	}
	if holder == nil {
		t.Fatal("no other node holds a pinned copy after the push")
	}
	// The deleter must not hold the manifest, or the test would not show a cluster-wide
	// delete. A replica the nearest peer refused for a moment (busy) lands on the next one,
	// so on a loaded machine b and c can both hold it: then a fresh node deletes.
	var deleter *Daemon
	for _, n := range nodes[1:] {
		if _, err := n.store.Stat(context.Background(), md); err != nil {
			deleter = n
		}
	}
	if deleter == nil {
		deleter = startNode(t, up, a.node.Addrs())
		nodes = append(nodes, deleter)
		waitFor(t, func() bool { return len(deleter.node.Status().Peers) >= len(nodes)-1 })
		if _, err := deleter.store.Stat(context.Background(), md); err == nil {
			t.Fatal("a node that joined after the push holds the manifest")
		}
	}
	path := "/v2/shoal.local/team/del/manifests/"
	if st, _, body := pushReq(t, deleter, "DELETE", path+md.String(), nil, nil); st != http.StatusAccepted {
		t.Fatalf("DELETE by digest on a node that does not hold it: %d %s", st, body)
	}
	for _, n := range nodes {
		for _, ref := range []string{"v1", "also", md.String()} {
			waitFor(t, func() bool {
				st, _, _ := pushReq(t, n, "GET", path+ref, nil, nil)
				return st == http.StatusNotFound
			})
		}
		if st, _, body := pushReq(t, n, "GET", path+"other", nil, nil); st != http.StatusOK {
			t.Fatalf("other tag on %s after the delete: %d %s", n.Addr(), st, body)
		}
	}
	if info, err := holder.store.Stat(context.Background(), md); err == nil && info.Pinned {
		t.Fatal("the holder still pins the deleted manifest")
	}
	if st, _, body := pushReq(t, a, "DELETE", path+md.String(), nil, nil); st != http.StatusNotFound || firstCode(t, body) != "MANIFEST_UNKNOWN" {
		t.Fatalf("second DELETE: %d %s", st, body)
	}
	// Pushed again: readable by digest on every node.
	ref, _ := name.ParseReference(c.Addr()+"/shoal.local/team/del:v2", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitFor(t, func() bool {
			st, _, _ := pushReq(t, n, "GET", path+md.String(), nil, nil)
			return st == http.StatusOK
		})
	}
}

// Status and cache ls show the local namespace's images apart from cached upstream content:
// two tags naming one pushed image count one image, its manifest and blobs once, pinned;
// an image pulled from the upstream is not counted and not marked local.
func TestPushLocalImagesInStatus(t *testing.T) {
	up := newUpstream(t)
	pushRandom(t, up, "team/cached", 32<<10, 1)
	d := startDaemon(t, up)
	if _, err := pullThrough(t, d, "team/cached:latest"); err != nil {
		t.Fatal(err)
	}
	img, _ := random.Image(64<<10, 2)
	for _, tag := range []string{"v1", "stable"} {
		ref, _ := name.ParseReference(d.Addr()+"/shoal.local/team/app:"+tag, name.Insecure)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	cl := adminFor(t, d)
	s, err := cl.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	local := map[string]bool{mustDigest(t, img).String(): true}
	var want int64
	raw, _ := img.RawManifest()
	want += int64(len(raw))
	for _, dg := range layerDigests(t, img) {
		local[dg.String()] = true
		info, err := d.store.Stat(t.Context(), dg)
		if err != nil {
			t.Fatal(err)
		}
		want += info.Size
	}
	if l := s.Local; l == nil || l.Namespace != "shoal.local" || l.Tags != 2 || l.Images != 1 || l.Pinned != 1 || l.Bytes != want {
		t.Fatalf("status local_images: %+v, want 2 tags, 1 image, 1 pinned, %d bytes", s.Local, want)
	}
	if s.Store.BytesUsed <= want {
		t.Fatalf("store holds %d bytes, local %d: the cached upstream image is missing", s.Store.BytesUsed, want)
	}
	l, err := cl.CacheList(t.Context(), "size")
	if err != nil {
		t.Fatal(err)
	}
	marked := 0
	for _, e := range l.Entries {
		if e.Local != local[e.Digest] {
			t.Errorf("cache ls: %s local=%v, want %v", e.Digest, e.Local, local[e.Digest])
		}
		if e.Local {
			marked++
		}
	}
	if marked != len(local) || len(l.Entries) <= marked {
		t.Fatalf("cache ls marked %d of %d entries local, want %d (and the cached image unmarked)", marked, len(l.Entries), len(local))
	}
}

// A manifest deleted by digest stays deleted on every node that held it after the nodes
// restart (the delete is kept in the store, not only in memory): a read by digest answers
// 404 MANIFEST_UNKNOWN on the holder that kept a cached copy, on a node that pulled it and on
// the deleting node; pushing it again makes it readable everywhere.
func TestPushDeleteManifestSurvivesRestart(t *testing.T) {
	up := newUpstream(t)
	up.down.Store(true)
	type node struct {
		d       *Daemon
		stop    func()
		dir, ip string
	}
	start := func(n *node, bootstrap []string) {
		n.d, n.stop = startStoppable(t, up, bootstrap, func(c *Config) {
			c.DataDir = n.dir
			c.Listen = n.ip + ":0"
			c.P2P.Listen = []string{"/ip4/" + n.ip + "/tcp/0"}
		})
	}
	nodes := make([]*node, 3)
	for i := range nodes {
		nodes[i] = &node{dir: t.TempDir(), ip: nextIP()}
		var boot []string
		if i > 0 {
			boot = nodes[0].d.node.Addrs()
		}
		start(nodes[i], boot)
	}
	waitPeers := func() {
		for _, n := range nodes {
			waitFor(t, func() bool { return len(n.d.node.Status().Peers) >= len(nodes)-1 })
		}
	}
	waitPeers()
	a := nodes[0]
	img, _ := random.Image(10<<10, 1)
	md := digest.Digest(mustDigest(t, img).String())
	ref, _ := name.ParseReference(a.d.Addr()+"/shoal.local/team/gone:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	path := "/v2/shoal.local/team/gone/manifests/"
	// Every node holds a copy: the pusher, the replica, and a node that pulled it by tag.
	for _, n := range nodes {
		if st, _, body := pushReq(t, n.d, "GET", path+"v1", nil, nil); st != http.StatusOK {
			t.Fatalf("GET v1 on %s: %d %s", n.d.Addr(), st, body)
		}
		if _, err := n.d.store.Stat(t.Context(), md); err != nil {
			t.Fatalf("%s holds no copy before the delete: %v", n.d.Addr(), err)
		}
	}
	deleter := nodes[1]
	if st, _, body := pushReq(t, deleter.d, "DELETE", path+md.String(), nil, nil); st != http.StatusAccepted {
		t.Fatalf("DELETE by digest: %d %s", st, body)
	}
	for _, n := range nodes {
		waitFor(t, func() bool {
			st, _, _ := pushReq(t, n.d, "GET", path+md.String(), nil, nil)
			return st == http.StatusNotFound
		})
	}
	kept := 0 // nodes that still hold the bytes (as cache): the test must cover them
	for _, n := range nodes {
		if _, err := n.d.store.Stat(t.Context(), md); err == nil {
			kept++
		}
	}
	if kept == 0 {
		t.Fatal("no node kept a cached copy: the restart would not show that the delete persists")
	}
	for _, n := range nodes {
		n.stop()
	}
	for i, n := range nodes {
		var boot []string
		if i > 0 {
			boot = nodes[0].d.node.Addrs()
		}
		start(n, boot)
	}
	waitPeers()
	for _, n := range nodes {
		for _, method := range []string{"GET", "HEAD"} {
			st, _, body := pushReq(t, n.d, method, path+md.String(), nil, nil)
			if st != http.StatusNotFound || (method == "GET" && firstCode(t, body) != "MANIFEST_UNKNOWN") {
				t.Fatalf("%s by digest on %s after a restart: %d %s, want 404 MANIFEST_UNKNOWN", method, n.d.Addr(), st, body)
			}
		}
		if st, _, body := pushReq(t, n.d, "GET", path+"v1", nil, nil); st != http.StatusNotFound {
			t.Fatalf("tag v1 on %s after a restart: %d %s", n.d.Addr(), st, body)
		}
	}
	if st, _, body := pushReq(t, a.d, "DELETE", path+md.String(), nil, nil); st != http.StatusNotFound || firstCode(t, body) != "MANIFEST_UNKNOWN" {
		t.Fatalf("second DELETE after a restart: %d %s", st, body)
	}
	// Pushed again: readable by digest on every node.
	ref, _ = name.ParseReference(nodes[2].d.Addr()+"/shoal.local/team/gone:v2", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitFor(t, func() bool {
			st, _, _ := pushReq(t, n.d, "GET", path+md.String(), nil, nil)
			return st == http.StatusOK
		})
	}
}

// Blob DELETE in the local namespace acts on every node, as manifest DELETE does: asked of a
// node that does not hold the blob, every node then answers it 404 BLOB_UNKNOWN; a copy that
// nothing references is removed on every holder, one that a held manifest references stays as
// cache (unpinned) but is answered 404 in that repository; a second DELETE is 404 BLOB_UNKNOWN
// on every node; uploading the blob again makes it readable everywhere.
func TestPushDeleteBlobClusterWide(t *testing.T) {
	up := newUpstream(t)
	up.down.Store(true)
	a := startNode(t, up, nil)
	b := startNode(t, up, a.node.Addrs())
	c := startNode(t, up, a.node.Addrs())
	nodes := []*Daemon{a, b, c}
	for _, n := range nodes {
		waitFor(t, func() bool { return len(n.node.Status().Peers) >= len(nodes)-1 })
	}
	ctx := t.Context()
	repo := "/v2/shoal.local/team/blobdel"
	// A blob nothing references, pushed on A, read (and so held) on B.
	data := []byte("a blob of the local namespace that no manifest references")
	x := digest.FromBytes(data)
	if st, _, body := pushReq(t, a, "POST", repo+"/blobs/uploads/?digest="+x.String(), bytes.NewReader(data),
		map[string]string{"Content-Type": "application/octet-stream"}); st != http.StatusCreated {
		t.Fatalf("monolithic upload: %d %s", st, body)
	}
	waitFor(t, func() bool {
		st, _, _ := pushReq(t, b, "GET", repo+"/blobs/"+x.String(), nil, nil)
		return st == http.StatusOK
	})
	// An image whose layer the copy's holder references.
	img, _ := random.Image(10<<10, 1)
	ref, _ := name.ParseReference(a.Addr()+"/shoal.local/team/blobdel:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	md := digest.Digest(mustDigest(t, img).String())
	layer := layerDigests(t, img)[0]
	var holder *Daemon
	for _, n := range nodes[1:] {
		if info, err := n.store.Stat(ctx, md); err == nil && info.Pinned {
			holder = n
		}
	}
	if holder == nil {
		t.Fatal("no other node holds a pinned copy of the image after the push")
	}
	for _, n := range nodes {
		if _, err := n.store.Stat(ctx, x); (err == nil) != (n != c) {
			t.Fatalf("before the delete, %s holds the blob: %v (want A and B only)", n.Addr(), err == nil)
		}
	}

	if st, _, body := pushReq(t, c, "DELETE", repo+"/blobs/"+x.String(), nil, nil); st != http.StatusAccepted {
		t.Fatalf("DELETE of a blob on a node that does not hold it: %d %s", st, body)
	}
	for _, n := range nodes {
		waitFor(t, func() bool {
			_, err := n.store.Stat(ctx, x)
			return errors.Is(err, store.ErrNotFound)
		})
		for _, method := range []string{"GET", "HEAD"} {
			st, _, body := pushReq(t, n, method, repo+"/blobs/"+x.String(), nil, nil)
			if st != http.StatusNotFound || (method == "GET" && firstCode(t, body) != "BLOB_UNKNOWN") {
				t.Fatalf("%s of the deleted blob on %s: %d %s", method, n.Addr(), st, body)
			}
		}
		st, _, body := pushReq(t, n, "DELETE", repo+"/blobs/"+x.String(), nil, nil)
		if st != http.StatusNotFound || firstCode(t, body) != "BLOB_UNKNOWN" {
			t.Fatalf("second DELETE on %s: %d %s", n.Addr(), st, body)
		}
	}

	// The layer: deleted from the namespace; the holder keeps its bytes as cache (the manifest
	// it holds references them) but answers the blob 404.
	deleter := b
	if holder == b {
		deleter = c
	}
	if st, _, body := pushReq(t, deleter, "DELETE", repo+"/blobs/"+layer.String(), nil, nil); st != http.StatusAccepted {
		t.Fatalf("DELETE of a layer: %d %s", st, body)
	}
	waitFor(t, func() bool {
		st, _, _ := pushReq(t, holder, "GET", repo+"/blobs/"+layer.String(), nil, nil)
		return st == http.StatusNotFound
	})
	if info, err := holder.store.Stat(ctx, layer); err != nil || info.Pinned {
		t.Fatalf("the holder's copy of a referenced layer: %+v %v, want kept, unpinned", info, err)
	}

	// Uploaded again (on B): readable on every node.
	if st, _, body := pushReq(t, b, "POST", repo+"/blobs/uploads/?digest="+x.String(), bytes.NewReader(data),
		map[string]string{"Content-Type": "application/octet-stream"}); st != http.StatusCreated {
		t.Fatalf("upload again: %d %s", st, body)
	}
	for _, n := range nodes {
		waitFor(t, func() bool {
			st, _, got := pushReq(t, n, "GET", repo+"/blobs/"+x.String(), nil, nil)
			return st == http.StatusOK && bytes.Equal(got, data)
		})
	}
}
