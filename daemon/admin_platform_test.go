package daemon

import (
	"archive/tar"
	"encoding/json"
	"io"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/admin"
)

// pushPlatforms pushes an index with one random image per platform, in the given order, and
// returns the images by platform as the index names it.
func pushPlatforms(t *testing.T, up *upstreamLog, repo string, plats ...v1.Platform) map[string]v1.Image {
	t.Helper()
	var idx v1.ImageIndex = empty.Index
	imgs := map[string]v1.Image{}
	for _, p := range plats {
		img, err := random.Image(8<<10, 1)
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
		imgs[p.String()] = img
	}
	ref, err := name.ParseReference(up.host()+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	return imgs
}

// exportDockerConfig exports image with platform and returns the config the tarball's
// Docker manifest.json names (the image `docker load` gets).
func exportDockerConfig(t *testing.T, cl *adminapi.Client, image, platform string) (string, error) {
	t.Helper()
	rc, err := cl.Export(t.Context(), adminapi.ExportRequest{Images: []string{image}, Platform: platform})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var dm []admin.DockerEntry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		if h.Name == "manifest.json" {
			if err := json.NewDecoder(tr).Decode(&dm); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(dm) != 1 {
		t.Fatalf("manifest.json: %+v", dm)
	}
	return dm[0].Config, nil
}

func configPath(t *testing.T, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return "blobs/sha256/" + h.Hex
}

// An operator's --platform picks an index's child the way containerd does (containerd's
// platforms package): arm64 and arm64/v8 are one platform, so are arm and arm/v7, while
// arm/v6 is another; aliases such as aarch64 are understood. The hand-written matcher this
// replaced found no linux/arm64/v8 in an index that names arm64 without its variant (ko and
// crane write it so), not even for the export's default platform on an arm64 host, and
// exported (and pulled) arm/v6 for linux/arm.
func TestAdminPlatformMatchesLikeContainerd(t *testing.T) {
	up := newUpstream(t)
	imgs := pushPlatforms(t, up, "test/plat",
		v1.Platform{OS: "linux", Architecture: "amd64"},
		v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"},
		v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"},
		v1.Platform{OS: "linux", Architecture: "arm64"})
	d := startDaemon(t, up, withOps)
	cl := adminFor(t, d)

	for _, c := range []struct{ platform, want string }{
		{"linux/arm64/v8", "linux/arm64"},
		{"linux/aarch64", "linux/arm64"},
		{"linux/arm", "linux/arm/v7"},
		{"linux/arm/v6", "linux/arm/v6"},
		{"linux/x86_64", "linux/amd64"},
	} {
		got, err := exportDockerConfig(t, cl, "test/plat", c.platform)
		if err != nil {
			t.Errorf("export --platform %s: %v", c.platform, err)
			continue
		}
		if want := configPath(t, imgs[c.want]); got != want {
			t.Errorf("export --platform %s: docker load gets the image with config %s, want %s's (%s)", c.platform, got, c.want, want)
		}
	}

	_, done := pull(t, cl, adminapi.PullRequest{Images: []string{"test/plat"}, Platform: "linux/arm64/v8"})
	if done.Errors != 0 || done.Blobs != 2 {
		t.Errorf("pull --platform linux/arm64/v8: %+v, want the arm64 image's config and layer", done)
	}
	evs, done := pull(t, cl, adminapi.PullRequest{Images: []string{"test/plat"}, Platform: "linux/arm"})
	var plats []string
	for _, e := range evs {
		if e.Type == adminapi.EventManifest {
			plats = append(plats, e.Platform)
		}
	}
	if done.Errors != 0 || !slices.Equal(plats, []string{"linux/arm/v7"}) {
		t.Errorf("pull --platform linux/arm: manifests %v (%+v), want linux/arm/v7 only", plats, done)
	}

	for _, bad := range []string{"linux", "linux/amd 64"} {
		_, err := cl.Export(t.Context(), adminapi.ExportRequest{Images: []string{"test/plat"}, Platform: bad})
		if !isAPICode(err, adminapi.CodeBadRequest) {
			t.Errorf("export --platform %q: %v, want bad_request", bad, err)
		}
	}
	_, err := cl.Export(t.Context(), adminapi.ExportRequest{Images: []string{"test/plat"}, Platform: "linux/s390x"})
	if !isAPICode(err, adminapi.CodeNotFound) {
		t.Errorf("export --platform linux/s390x: %v, want not_found", err)
	}
}
