package daemon

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/shoal-mirror/shoal/internal/mirror"
)

// TestDoctorCanary: the canary is served from the built-in image (valid: digests and diff IDs
// check out) under both of its names, even with only configured registries allowed, never asked
// of an upstream; the admin API says which nonces were asked for, and by whom.
func TestDoctorCanary(t *testing.T) {
	up := newUpstream(t)
	d := startDaemon(t, up, withOps) // only_configured: shoal-doctor.invalid is not a configured registry
	img, err := pullThrough(t, d, mirror.CanaryRepo+":ndocker1")
	if err != nil {
		t.Fatalf("pull of the Docker-style canary: %v", err)
	}
	if cf, err := img.ConfigFile(); err != nil || cf.OS != "linux" || len(cf.RootFS.DiffIDs) != 1 {
		t.Errorf("canary config %+v (%v)", cf, err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+d.Addr()+"/v2/canary/manifests/nctr2?ns="+mirror.CanaryRegistry, nil)
	req.Header.Set("User-Agent", "containerd/test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	canaryManifest, canaryDigest := mirror.CanaryManifest()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != canaryDigest.String() || string(body) != string(canaryManifest) {
		t.Errorf("GET canary manifest with ?ns=: %s %q", resp.Status, resp.Header.Get("Docker-Content-Digest"))
	}
	if n := up.count(http.MethodGet, "/") + up.count(http.MethodHead, "/"); n != 0 {
		t.Errorf("the canary went upstream: %d requests", n)
	}

	cl := adminFor(t, d)
	for nonce, want := range map[string]string{"ndocker1": up.host(), "nctr2": mirror.CanaryRegistry} {
		c, err := cl.Canary(context.Background(), nonce)
		if err != nil || !c.Seen || c.Hits[0].Registry != want {
			t.Errorf("canary %s: %+v (%v), want seen for registry %s", nonce, c, err, want)
		}
	}
	if c, err := cl.Canary(context.Background(), "nnever"); err != nil || c.Seen {
		t.Errorf("a nonce never asked for: %+v (%v)", c, err)
	}
	if c, _ := cl.Canary(context.Background(), "nctr2"); c.Hits[0].UserAgent != "containerd/test" || c.Hits[0].NS != mirror.CanaryRegistry {
		t.Errorf("hit %+v: want the user agent and ns recorded", c.Hits[0])
	}
	if _, err := cl.Canary(context.Background(), "../x"); err == nil {
		t.Errorf("a bad nonce was accepted")
	}
}
