package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/fetch"
	"github.com/shoal-mirror/shoal/p2p"
)

// hostileBlob makes the upstream registry answer GETs of one blob path badly and counts the
// body bytes it sent; everything else is the real registry.
type hostileBlob struct {
	path   string
	length int64 // >0: announce this Content-Length and send that many bytes; 0: endless, chunked
	sent   atomic.Int64
}

func (h *hostileBlob) wrap(up *upstreamLog) {
	inner := up.srv.Config.Handler
	up.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != h.path || r.Method != http.MethodGet {
			inner.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if h.length > 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(h.length, 10))
		}
		w.WriteHeader(http.StatusOK)
		chunk := []byte(strings.Repeat("a", 32<<10))
		for h.length == 0 || h.sent.Load() < h.length {
			p := chunk
			if h.length > 0 {
				p = p[:min(int64(len(p)), h.length-h.sent.Load())]
			}
			n, err := w.Write(p)
			h.sent.Add(int64(n))
			if err != nil || r.Context().Err() != nil {
				return
			}
		}
	})
}

// waitEmptyDir polls until dir holds no file, failing the test after a deadline.
func waitEmptyDir(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, err := os.ReadDir(dir)
		if err == nil && len(ents) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var names []string
			for _, e := range ents {
				info, _ := e.Info()
				names = append(names, fmt.Sprintf("%s (%d bytes)", e.Name(), info.Size()))
			}
			t.Fatalf("%s still holds %v (%v)", dir, names, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEndlessOrOversizedUpstreamBlobIsBounded: an upstream that answers a blob with a body that
// never ends (chunked, no Content-Length), or with a Content-Length that disagrees with the
// manifest, must not fill the disk: the download stops at the descriptor's size when the
// manifest was pulled through shoal first, at store.max_blob_size otherwise; its temp file is
// removed, the client gets an OCI error or a cut transfer, the upstream is named in a warning
// and counted, and the store goes on serving other content.
func TestEndlessOrOversizedUpstreamBlobIsBounded(t *testing.T) {
	t.Parallel()
	const maxBlob = 4 << 20
	for _, tc := range []struct {
		name          string
		manifestFirst bool
		length        func(layerSize int64) int64 // 0: endless
		reason        string
		maxSent       int64 // what the upstream may have sent: the bound plus socket buffers
	}{
		{"endless, manifest pulled first", true, func(int64) int64 { return 0 }, fetch.BoundDescriptor, 48 << 20},
		{"endless, no manifest seen", false, func(int64) int64 { return 0 }, fetch.BoundMax, maxBlob + 48<<20},
		{"Content-Length above the descriptor size", true, func(n int64) int64 { return n + 1000 }, fetch.BoundLength, 0},
		{"Content-Length above max_blob_size", false, func(int64) int64 { return maxBlob + 1 }, fetch.BoundMax, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t)
			img := pushRandom(t, up, "test/bound", 256<<10, 1)
			good := pushRandom(t, up, "test/good", 64<<10, 1)
			layers, _ := img.Layers()
			dg, body := layerBytes(t, layers[0])
			hb := &hostileBlob{path: "/v2/test/bound/blobs/" + dg.String(), length: tc.length(int64(len(body)))}
			hb.wrap(up)
			maxBlobSize := int64(maxBlob)
			if tc.manifestFirst {
				maxBlobSize = 1 << 40 // the descriptor must be the bound, not this
			}
			d, logs := startBehind(t, up.host(), func(c *Config) { c.StoreMaxBlobSize = maxBlobSize })
			base := "http://" + d.Addr()
			if tc.manifestFirst {
				if a := ask(t, http.DefaultClient, "GET", base+"/v2/test/bound/manifests/latest", nil); a.status != 200 {
					t.Fatalf("manifest: %d %s", a.status, a.code)
				}
			}

			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/test/bound/blobs/"+dg.String(), nil)
			resp, err := http.DefaultClient.Do(req)
			var got int
			var readErr error
			if err == nil {
				var b []byte
				b, readErr = io.ReadAll(resp.Body)
				got = len(b)
				resp.Body.Close()
				switch {
				case ctx.Err() != nil:
					t.Fatalf("the download was not stopped: %d bytes sent by the upstream, %d to the client", hb.sent.Load(), got)
				case resp.StatusCode == http.StatusOK && readErr == nil:
					t.Fatalf("the client got a complete 200 with %d bytes", got)
				case resp.StatusCode >= 400:
					var e struct {
						Errors []struct{ Code, Message string }
					}
					if json.Unmarshal(b, &e) != nil || len(e.Errors) == 0 || resp.StatusCode != http.StatusBadGateway {
						t.Errorf("status %d with body %q; want 502 with an OCI error", resp.StatusCode, b)
					}
				}
				t.Logf("client: status %d, %d bytes, read error %v; upstream sent %d bytes", resp.StatusCode, got, readErr, hb.sent.Load())
			} else {
				t.Logf("client: %v; upstream sent %d bytes", err, hb.sent.Load())
			}
			if tc.maxSent > 0 && hb.sent.Load() > tc.maxSent {
				t.Errorf("the upstream sent %d bytes, more than the bound allows (%d)", hb.sent.Load(), tc.maxSent)
			}
			if tc.length(int64(len(body))) > 0 && (err != nil || resp.StatusCode != http.StatusBadGateway) {
				t.Errorf("a size that can be refused up front did not get a 502 before any byte was sent")
			}
			waitEmptyDir(t, filepath.Join(d.cfg.DataDir, "tmp"))
			if n := d.fetch.BoundExceeded()[tc.reason]; n != 1 {
				t.Errorf("shoal_blob_bound_exceeded_total{reason=%q} = %d, want 1 (all: %v)", tc.reason, n, d.fetch.BoundExceeded())
			}
			for _, want := range []string{"broke its size bound", "registry=" + up.host(), "digest=" + dg.String(), "reason=" + tc.reason} {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("no warning with %q in the log", want)
				}
			}
			if _, err := d.store.Stat(context.Background(), digest.Digest(dg)); err == nil {
				t.Error("the blob was stored")
			}
			// The store still serves: another image pulls through, verified.
			if got, err := pullThrough(t, d, "test/good:latest"); err != nil || mustDigest(t, got) != mustDigest(t, good) {
				t.Fatalf("pull of another image afterwards: %v", err)
			}
			checkStore(t, d)
		})
	}
}

// oversizedContent advertises a blob and answers for it with a size it makes up, then bytes
// that never end.
type oversizedContent struct {
	d    digest.Digest
	size int64
}

func (h *oversizedContent) OpenForPeer(ctx context.Context, d digest.Digest, off int64) (io.ReadCloser, int64, error) {
	if d != h.d {
		return nil, 0, p2p.ErrNotFound
	}
	return io.NopCloser(endlessReader{}), h.size, nil
}

func (h *oversizedContent) ShareList(context.Context) ([]digest.Digest, error) {
	return []digest.Digest{h.d}, nil
}

type endlessReader struct{}

func (endlessReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}

// TestPeerOverBoundIsBannedAndPullSucceeds: the bound holds whatever the source. A peer that
// announces a size other than the manifest's descriptor, or one above store.max_blob_size, is
// refused before its bytes are taken, banned like a peer that sent wrong bytes, and the
// download starts again from the upstream: the client gets the verified blob.
func TestPeerOverBoundIsBannedAndPullSucceeds(t *testing.T) {
	for _, tc := range []struct {
		name          string
		manifestFirst bool
		announce      func(size int64) int64
		reason        string
	}{
		{"size other than the descriptor's", true, func(n int64) int64 { return n + 1 }, fetch.BoundLength},
		{"size above max_blob_size", false, func(int64) int64 { return 1 << 40 }, fetch.BoundMax},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t)
			img := pushRandom(t, up, "test/peerbound", 256<<10, 1)
			dg, body := layerBytes(t, mustLayer(t, img))

			ip := nextIP()
			hcfg := p2p.DefaultConfig()
			hcfg.Listen = []string{"/ip4/" + ip + "/tcp/0"}
			hostile, err := p2p.New(t.Context(), hcfg, t.TempDir(), &oversizedContent{d: dg, size: tc.announce(int64(len(body)))}, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { hostile.Close() })
			b := startNode(t, up, hostile.Addrs(), func(c *Config) { c.StoreMaxBlobSize = 4 << 20 })
			waitFor(t, func() bool { return b.node.Status().RoutingTableSize > 0 })
			if err := hostile.Provide(t.Context(), dg); err != nil {
				t.Fatal(err)
			}
			waitProvided(t, b.node, dg)

			if tc.manifestFirst {
				got, err := pullThrough(t, b, "test/peerbound:latest")
				if err != nil || mustDigest(t, got) != mustDigest(t, img) {
					t.Fatalf("pull with a peer announcing a wrong size: %v", err)
				}
			} else {
				resp, got, err := getRange(t, b, "test/peerbound", dg, "")
				if err != nil || resp.StatusCode != http.StatusOK || v1Hash(got).String() != dg.String() {
					t.Fatalf("blob with a peer announcing a huge size: status %d, %d bytes, %v", resp.StatusCode, len(got), err)
				}
			}
			if ps := peerStatus(b.node, hostile.ID()); !ps.Banned {
				t.Errorf("peer not banned: %+v", ps)
			}
			if n := b.fetch.BoundExceeded()[tc.reason]; n != 1 {
				t.Errorf("bound exceeded (%s) %d times, want 1: %v", tc.reason, n, b.fetch.BoundExceeded())
			}
			waitEmptyDir(t, filepath.Join(b.cfg.DataDir, "tmp"))
			checkStore(t, b)
		})
	}
}

func mustLayer(t *testing.T, img v1.Image) v1.Layer {
	t.Helper()
	ls, err := img.Layers()
	if err != nil || len(ls) == 0 {
		t.Fatalf("layers: %v", err)
	}
	return ls[0]
}

// TestMaxBlobSizeDefaultsToTheBudget: without store.max_blob_size, no blob may grow past the
// store's budget (the issue's --store-max-size 100MiB); a value set wins.
func TestMaxBlobSizeDefaultsToTheBudget(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	for _, tc := range []struct {
		set, want int64
	}{{0, 100 << 20}, {10 << 20, 10 << 20}} {
		d, _ := startBehind(t, up.host(), func(c *Config) { c.Store.MaxSize = 100 << 20; c.StoreMaxBlobSize = tc.set })
		if d.fetch.MaxBlob() != tc.want {
			t.Errorf("store.max_blob_size %d: bound %d, want %d", tc.set, d.fetch.MaxBlob(), tc.want)
		}
	}
}

// TestEndlessBlobOnAFullDiskIsBounded: when the disk fills under a download, the client's
// answer goes on straight from the upstream (pass-through); an endless body must be stopped
// there too, at store.max_blob_size, not streamed for ever.
func TestEndlessBlobOnAFullDiskIsBounded(t *testing.T) {
	dir := mountTmpfs(t, "3m")

	up := newUpstream(t)
	img := pushRandom(t, up, "test/endless", 64<<10, 1)
	dg, _ := layerBytes(t, mustLayer(t, img))
	hb := &hostileBlob{path: "/v2/test/endless/blobs/" + dg.String()}
	hb.wrap(up)
	d := startDaemon(t, up, func(c *Config) {
		c.DataDir = dir
		c.Store.MaxSize = 1 << 30 // far above the disk: writes really hit ENOSPC
		c.Store.MinFree = "0"
		c.StoreMaxBlobSize = 16 << 20
	})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.Addr()+"/v2/test/endless/blobs/"+dg.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case ctx.Err() != nil:
		t.Fatalf("not stopped: the client got %d bytes, the upstream sent %d", n, hb.sent.Load())
	case err == nil:
		t.Fatalf("status %d and %d bytes ending cleanly", resp.StatusCode, n)
	case n > 16<<20:
		t.Errorf("the client got %d bytes, more than store.max_blob_size", n)
	}
	t.Logf("status %d, %d bytes to the client, %d sent by the upstream: %v", resp.StatusCode, n, hb.sent.Load(), err)
	if got := d.fetch.BoundExceeded()[fetch.BoundMax]; got != 1 {
		t.Errorf("bound exceeded %d times, want 1: %v", got, d.fetch.BoundExceeded())
	}
}
