package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
)

// pushImage sends img's blobs the registry lacks, then its manifest, as the daemon's
// write-through does.
func pushImage(ctx context.Context, c *Client, host, repo, tag string, img v1.Image) error {
	ls, _ := img.Layers()
	var blobs []func() (digest.Digest, []byte)
	for _, l := range ls {
		blobs = append(blobs, func() (digest.Digest, []byte) {
			h, _ := l.Digest()
			rc, _ := l.Compressed()
			b, _ := io.ReadAll(rc)
			return digest.Digest(h.String()), b
		})
	}
	blobs = append(blobs, func() (digest.Digest, []byte) {
		h, _ := img.ConfigName()
		b, _ := img.RawConfigFile()
		return digest.Digest(h.String()), b
	})
	for _, f := range blobs {
		d, b := f()
		has, err := c.HasBlob(ctx, host, repo, d)
		if err != nil {
			return err
		}
		if has {
			continue
		}
		open := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		if err := c.PushBlob(ctx, host, repo, d, int64(len(b)), open); err != nil {
			return err
		}
	}
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	_, err := c.PutManifest(ctx, host, repo, tag, string(mt), raw)
	return err
}

// Write-through with the token flow: shoal asks the token server for pull,push with its
// credentials (OAuth POST), uploads and puts the manifest; the registry then serves the image
// with the same digest. Without credentials, or for a registry without write_through, nothing
// is written.
func TestWriteThroughTokenFlow(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, map[string]string{"ci": "pw"}, true)
	up := newUpstream(t, iss)
	img, _ := random.Image(8192, 2)
	want, _ := img.Digest()

	anon := newTestClient(t, cfgFor(up, RegistryConfig{WriteThrough: true}), nil)
	err := pushImage(t.Context(), anon.Client, up.host, "team/app", "v1", img)
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusUnauthorized {
		t.Fatalf("anonymous push: %v, want the registry's 401", err)
	}

	ro := newTestClient(t, cfgFor(up, RegistryConfig{Username: "ci", Password: "pw"}), nil)
	if err := pushImage(t.Context(), ro.Client, up.host, "team/app", "v1", img); !errors.Is(err, ErrUnknownRegistry) {
		t.Fatalf("push to a registry without write_through: %v", err)
	}

	c := newTestClient(t, cfgFor(up, RegistryConfig{Username: "ci", Password: "pw", WriteThrough: true}), nil)
	if !c.WriteThrough(up.host) || ro.WriteThrough(up.host) {
		t.Fatal("WriteThrough does not follow the configuration")
	}
	if err := pushImage(t.Context(), c.Client, up.host, "team/app", "v1", img); err != nil {
		t.Fatalf("push: %v", err)
	}
	if p := iss.posts.Load(); p == 0 {
		t.Error("no OAuth POST to the token server")
	}
	// The registry demands a token with push for every write: the push above got one.
	if !c.Private(up.host, "team/app") {
		t.Error("a push with credentials is not reported private")
	}
	ref, _ := name.ParseReference(strings.TrimPrefix(up.seed.URL, "http://")+"/team/app:v1", name.Insecure)
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("the registry does not serve the pushed image: %v", err)
	}
	if d, _ := got.Digest(); d != want {
		t.Fatalf("registry holds %s, pushed %s", d, want)
	}
	// Pushed again: every blob is already there, only the manifest goes.
	before := len(up.requests())
	if err := pushImage(t.Context(), c.Client, up.host, "team/app", "v1", img); err != nil {
		t.Fatalf("second push: %v", err)
	}
	for _, r := range up.requests()[before:] {
		if strings.HasPrefix(r, "POST ") {
			t.Errorf("second push uploaded again: %s", r)
		}
	}
}
