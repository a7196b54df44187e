package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestSecondPullFromCache: pulling an image again (and after a daemon restart) sends no blob GET and
// no manifest GET upstream; only tag revalidation HEADs are allowed.
func TestSecondPullFromCache(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	p := startUpstreamProxy(t, up.Open.URL)
	opts := shoalOpts{registries: []string{"docker.io=" + p.URL}}
	s := startShoal(t, opts)

	pull := func(t *testing.T, s *shoalDaemon, img testImage) {
		t.Helper()
		dst := t.TempDir()
		if out, err := skopeoCopy(t.Context(), t, s.Addr, img.Ref(), "oci:"+dst+":v1", true, "--preserve-digests"); err != nil {
			t.Fatalf("skopeo copy: %v\n%s", err, out)
		}
		if got := ociLayoutDigest(t, dst); got != img.Digest {
			t.Fatalf("digest %s, want %s", got, img.Digest)
		}
	}
	imgs := []testImage{up.Img.Small, up.Img.Multi}
	for _, img := range imgs {
		pull(t, s, img)
	}
	mark := len(p.requests())
	for _, img := range imgs {
		pull(t, s, img)
	}
	assertNoUpstreamFetch(t, p.since(mark))

	// A blob fetched directly now says it came from the store.
	layer := up.Img.Small.Layers[0]
	r := do(t, http.MethodGet, s.URL, "/v2/"+up.Img.Small.Repo+"/blobs/"+layer, nil)
	if r.Status != http.StatusOK || bytesDigest(r.Body) != layer {
		t.Errorf("cached blob: status %d digest %s", r.Status, bytesDigest(r.Body))
	}
	if src := r.Header.Get("X-Shoal-Source"); src != "store" {
		t.Errorf("cached blob: X-Shoal-Source %q, want store", src)
	}

	// The cache survives a restart of the daemon on the same data dir.
	s.stop()
	opts.dataDir = s.DataDir
	s2 := startShoal(t, opts)
	mark = len(p.requests())
	for _, img := range imgs {
		pull(t, s2, img)
	}
	assertNoUpstreamFetch(t, p.since(mark))
}

// TestConcurrentColdPulls: 20 clients (10 skopeo, 10 crane) pulling the same uncached image at once
// cause exactly one upstream GET per blob (the upstream is slowed down so that the pulls overlap).
func TestConcurrentColdPulls(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	img := up.Img.Conc
	p := startUpstreamProxy(t, up.Open.URL)
	p.throttle(16 << 20) // 6 MiB layers take ~0.4 s each: the 20 pulls overlap
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + p.URL}})

	tool(t, "skopeo") // fail here, not in a goroutine, when a client is missing
	tool(t, "crane")
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	dsts := make([]string, n)
	for i := range n {
		dsts[i] = t.TempDir()
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out string
			var err error
			if i%2 == 0 {
				out, err = skopeoCopy(t.Context(), t, s.Addr, img.Ref(), "oci:"+dsts[i]+":v1", false, "--preserve-digests")
			} else {
				out, err = cranePull(t.Context(), t, s.Addr, img.Ref(), dsts[i])
			}
			if err != nil {
				errs[i] = fmt.Errorf("%v\n%s", err, out)
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("pull %d: %v", i, err)
			continue
		}
		if got := ociLayoutDigest(t, dsts[i]); got != img.Digest {
			t.Errorf("pull %d: digest %s, want %s", i, got, img.Digest)
		}
	}
	reqs := p.requests()
	assertOneGETPerBlob(t, reqs, img.Blobs)
	if n := count(reqs, http.MethodGet, "/manifests/"+img.Digest); n > 1 {
		t.Errorf("upstream GETs of manifest %s: %d, want at most 1:\n%s", img.Digest, n, describe(reqs))
	}
	if n := count(reqs, http.MethodGet, "/manifests/"+img.Tag); n > 1 {
		t.Errorf("upstream GETs of tag %s: %d, want at most 1:\n%s", img.Tag, n, describe(reqs))
	}
}

// TestConcurrentBlobGETs: 20 plain HTTP clients GETting one uncached 6 MiB blob at once all get the
// right bytes from a single upstream GET.
func TestConcurrentBlobGETs(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	p := startUpstreamProxy(t, up.Open.URL)
	p.throttle(8 << 20)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + p.URL}})
	layer := up.Img.Conc.Layers[1]
	path := "/v2/" + up.Img.Conc.Repo + "/blobs/" + layer

	const n = 20
	var wg sync.WaitGroup
	results := make([]string, n)
	sources := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, s.URL+path, nil)
			resp, err := httpClient.Do(req)
			if err != nil {
				results[i] = err.Error()
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			switch {
			case err != nil:
				results[i] = err.Error()
			case resp.StatusCode != http.StatusOK:
				results[i] = resp.Status
			default:
				results[i] = bytesDigest(b)
			}
			sources[i] = resp.Header.Get("X-Shoal-Source")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r != layer {
			t.Errorf("client %d got %s, want the blob %s", i, r, layer)
		}
	}
	t.Logf("X-Shoal-Source of the 20 responses: %v", sources)
	// The upstream takes ~0.75 s for this blob and the 20 requests start together: all but the
	// first follow the fill already under way, and say so.
	if !slices.Contains(sources, "inflight") {
		t.Errorf("no response has X-Shoal-Source: inflight although 20 requests overlapped one fill: %v", sources)
	}
	assertOneGETPerBlob(t, p.requests(), []string{layer})
}

// TestStaleTagWhenUpstreamDown: after a pull, with the upstream gone, a pull by tag still succeeds
// from the cache and shoal says the tag is stale; an image never pulled fails with an error, fast.
func TestStaleTagWhenUpstreamDown(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	img := up.Img.Small
	p := startUpstreamProxy(t, up.Open.URL)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + p.URL}, tagTTL: "0s"})

	if out, err := skopeoCopy(t.Context(), t, s.Addr, img.Ref(), "oci:"+t.TempDir()+":v1", false); err != nil {
		t.Fatalf("first pull: %v\n%s", err, out)
	}
	p.stop()

	dst := t.TempDir()
	if out, err := skopeoCopy(t.Context(), t, s.Addr, img.Ref(), "oci:"+dst+":v1", false, "--preserve-digests"); err != nil {
		t.Fatalf("pull by tag with the upstream down: %v\n%s", err, out)
	}
	if got := ociLayoutDigest(t, dst); got != img.Digest {
		t.Errorf("digest %s, want %s", got, img.Digest)
	}
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		r := do(t, m, s.URL, "/v2/"+img.Repo+"/manifests/"+img.Tag, acceptAll)
		if r.Status != http.StatusOK {
			t.Errorf("%s tag with the upstream down: %d %s", m, r.Status, r.Body)
		}
		if got := r.Header.Get("X-Shoal-Stale"); got != "true" {
			t.Errorf("%s tag with the upstream down: X-Shoal-Stale %q, want true", m, got)
		}
		if got := r.Header.Get("Docker-Content-Digest"); got != img.Digest {
			t.Errorf("%s tag with the upstream down: Docker-Content-Digest %q, want %s", m, got, img.Digest)
		}
	}

	// Never pulled: a clear error, not a hang.
	start := time.Now()
	r := do(t, http.MethodGet, s.URL, "/v2/"+up.Img.Multi.Repo+"/manifests/"+up.Img.Multi.Tag, acceptAll)
	if r.Status < 400 {
		t.Errorf("uncached manifest with the upstream down: status %d, want an error", r.Status)
	} else if _, err := ociErrorCodes(r.Body); err != nil {
		t.Errorf("uncached manifest with the upstream down: %v", err)
	}
	if d := time.Since(start); d > 45*time.Second {
		t.Errorf("uncached manifest with the upstream down took %s", d)
	}
}

// TestCorruptUpstreamBlob: when the upstream sends a layer whose bytes do not match its digest,
// the client's pull fails and nothing is stored: once the upstream is good again, shoal fetches
// the blob anew and serves the right bytes.
func TestCorruptUpstreamBlob(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	img := up.Img.Small
	layer := img.Layers[1]
	blobPath := "/v2/" + img.Repo + "/blobs/" + layer
	p := startUpstreamProxy(t, up.Open.URL)
	p.corruptBlob(layer, true)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + p.URL}})

	if out, err := skopeoCopy(t.Context(), t, s.Addr, img.Ref(), "oci:"+t.TempDir()+":v1", false); err == nil {
		t.Fatalf("skopeo copy of an image with a corrupted layer succeeded:\n%s", out)
	}
	// A direct GET while the upstream is still bad: the client must not get a complete,
	// well-formed response with the wrong bytes.
	r := getBlob(t, s.URL+blobPath)
	t.Logf("direct GET while the upstream is corrupt: status %d, %d bytes, read error %v", r.Status, len(r.Body), r.Err)
	if r.Status == http.StatusOK && r.Err == nil && bytesDigest(r.Body) != layer {
		t.Errorf("shoal served a complete 200 response with bytes of digest %s for blob %s", bytesDigest(r.Body), layer)
	}

	p.corruptBlob(layer, false)
	mark := len(p.requests())
	r = getBlob(t, s.URL+blobPath)
	if r.Status != http.StatusOK || r.Err != nil || bytesDigest(r.Body) != layer {
		t.Fatalf("blob after the upstream recovered: status %d err %v digest %s", r.Status, r.Err, bytesDigest(r.Body))
	}
	if src := r.Header.Get("X-Shoal-Source"); src == "store" {
		t.Errorf("blob after the upstream recovered came from the store: the corrupt copy was kept")
	}
	assertOneGETPerBlob(t, p.since(mark), []string{layer})
	if out, err := skopeoCopy(t.Context(), t, s.Addr, img.Ref(), "oci:"+t.TempDir()+":v1", false, "--preserve-digests"); err != nil {
		t.Fatalf("pull after the upstream recovered: %v\n%s", err, out)
	}
}

// getBlob GETs a URL and reads the body, recording a read error instead of failing.
func getBlob(t *testing.T, url string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return response{Err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b, Err: err}
}

// TestBlobStreamsBeforeUpstreamFinishes: on a miss the client gets the first bytes of a blob while
// the upstream is still sending it (shoal does not wait for the whole blob).
func TestBlobStreamsBeforeUpstreamFinishes(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	img := up.Img.Big
	layer := img.Layers[0]
	p := startUpstreamProxy(t, up.Open.URL)
	h := p.holdBlob(layer, 8<<20) // upstream sends 8 MiB of 110 MiB, then waits
	t.Cleanup(h.Release)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + p.URL}})

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, s.URL+"/v2/"+img.Repo+"/blobs/"+layer, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("GET blob: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob: %s", resp.Status)
	}
	if resp.ContentLength != img.LayerSizes[layer] {
		t.Errorf("Content-Length %d, want %d", resp.ContentLength, img.LayerSizes[layer])
	}
	got := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(resp.Body, make([]byte, 1<<20))
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("reading the first MiB: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no first MiB after 30 s while the upstream had sent 8 MiB: shoal waits for the whole blob")
	}
	h.Release()
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the rest: %v", err)
	}
	if n := int64(len(rest)) + 1<<20; n != img.LayerSizes[layer] {
		t.Errorf("got %d bytes, want %d", n, img.LayerSizes[layer])
	}
}

// TestClientHangupKeepsFill: a client that hangs up in the middle of an uncached blob does not
// abort the cache fill: the blob is then served without another upstream GET.
func TestClientHangupKeepsFill(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	img := up.Img.Conc
	layer := img.Layers[0]
	path := "/v2/" + img.Repo + "/blobs/" + layer
	p := startUpstreamProxy(t, up.Open.URL)
	h := p.holdBlob(layer, 1<<20)
	t.Cleanup(h.Release)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + p.URL}})

	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+path, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("GET blob: %v", err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
		t.Fatalf("reading the first bytes: %v", err)
	}
	cancel() // the client hangs up
	resp.Body.Close()
	h.Release()

	eventually(t, time.Minute, s.proc, "upstream GET of the blob completes", func() error {
		for _, r := range p.requests() {
			if r.Method == http.MethodGet && r.Path == path && r.Done {
				if r.Bytes != img.LayerSizes[layer] {
					t.Fatalf("upstream GET ended after %d of %d bytes: the client's hang-up aborted the fill", r.Bytes, img.LayerSizes[layer])
				}
				return nil
			}
		}
		return fmt.Errorf("upstream GET not done yet")
	})
	r := getBlob(t, s.URL+path)
	if r.Status != http.StatusOK || r.Err != nil || bytesDigest(r.Body) != layer {
		t.Fatalf("blob after the hang-up: status %d err %v digest %s", r.Status, r.Err, bytesDigest(r.Body))
	}
	assertOneGETPerBlob(t, p.requests(), []string{layer})
}
