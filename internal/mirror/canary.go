package mirror

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/internal/ocierr"
)

// `shoal doctor`'s canary: a tiny image that only shoal serves, never asked of an upstream, so
// that a runtime that got it provably pulled through this shoal. Its names:
//   - any repository on the reserved registry CanaryRegistry (containerd, via hosts.toml's
//     _default and ?ns=),
//   - the repository CanaryRepo on any registry (Docker sends only docker.io names to its
//     mirrors, without ?ns=: docker.io/shoaldoctor/canary).
//
// The tag is the doctor's nonce; the mirror records every manifest request by tag, and the
// admin API answers whether a nonce was asked for.
const (
	CanaryRegistry = "shoal-doctor.invalid"
	CanaryRepo     = "shoaldoctor/canary"
)

// canaryImage is the built-in image: one layer with one small file, for this node's platform.
type canaryImage struct {
	manifest, config, layer []byte
	manifestDigest          digest.Digest
	blobs                   map[digest.Digest][]byte
}

var (
	canaryOnce sync.Once
	canaryImg  *canaryImage
)

func builtinCanary() *canaryImage {
	canaryOnce.Do(func() { canaryImg = buildCanary() })
	return canaryImg
}

func buildCanary() *canaryImage {
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	body := []byte("shoal doctor canary: served by shoal itself, never by a registry\n")
	_ = tw.WriteHeader(&tar.Header{Name: "shoal-doctor-canary", Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg, Format: tar.FormatPAX})
	_, _ = tw.Write(body)
	_ = tw.Close()
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	_, _ = zw.Write(tarBuf.Bytes())
	_ = zw.Close()
	created := time.Unix(0, 0).UTC()
	cfg := ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config:   ocispec.ImageConfig{Labels: map[string]string{"org.opencontainers.image.title": "shoal doctor canary"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tarBuf.Bytes())}},
	}
	cfgBytes, _ := json.Marshal(cfg)
	img := &canaryImage{config: cfgBytes, layer: gz.Bytes()}
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfgBytes), Size: int64(len(cfgBytes))},
		Layers:    []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(img.layer), Size: int64(len(img.layer))}},
	}
	m.SchemaVersion = 2
	img.manifest, _ = json.Marshal(m)
	img.manifestDigest = digest.FromBytes(img.manifest)
	img.blobs = map[digest.Digest][]byte{m.Config.Digest: cfgBytes, m.Layers[0].Digest: img.layer}
	return img
}

// CanaryManifest is the canary image's manifest and its digest, as the mirror serves them.
func CanaryManifest() ([]byte, digest.Digest) {
	img := builtinCanary()
	return img.manifest, img.manifestDigest
}

// Canary answers the admin API's /v1/doctor/canary and the daemon's own doctor: what the
// mirror recorded of a nonce.
func (m *Mirror) Canary(nonce string) (adminapi.Canary, error) {
	if !canaryNonce.MatchString(nonce) {
		return adminapi.Canary{}, fmt.Errorf("nonce %q: not a tag", nonce)
	}
	if m.canary == nil {
		return adminapi.Canary{Nonce: nonce}, nil
	}
	return m.canary.lookup(nonce), nil
}

// isCanary reports whether a route names the canary.
func isCanary(rt route) bool {
	return rt.registry == CanaryRegistry || rt.repo == CanaryRepo
}

// canaryLog remembers the recent nonces the mirror was asked for.
type canaryLog struct {
	mu    sync.Mutex
	hits  map[string][]adminapi.CanaryHit
	order []string // nonces, oldest first
	blobs atomic.Int64
}

const (
	canaryMaxNonces = 512
	canaryMaxHits   = 16
)

var canaryNonce = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

func newCanaryLog() *canaryLog { return &canaryLog{hits: map[string][]adminapi.CanaryHit{}} }

func (l *canaryLog) record(nonce string, h adminapi.CanaryHit) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.hits[nonce]; !ok {
		if len(l.order) >= canaryMaxNonces {
			delete(l.hits, l.order[0])
			l.order = l.order[1:]
		}
		l.order = append(l.order, nonce)
	}
	if len(l.hits[nonce]) < canaryMaxHits {
		l.hits[nonce] = append(l.hits[nonce], h)
	}
}

func (l *canaryLog) lookup(nonce string) adminapi.Canary {
	l.mu.Lock()
	defer l.mu.Unlock()
	hits := append([]adminapi.CanaryHit(nil), l.hits[nonce]...)
	return adminapi.Canary{Nonce: nonce, Seen: len(hits) > 0, Hits: hits, Blobs: l.blobs.Load()}
}

// serveCanary answers a canary route from the built-in image, never from an upstream.
func (m *Mirror) serveCanary(w http.ResponseWriter, r *http.Request, rt route) error {
	img := builtinCanary()
	var body []byte
	var ctype string
	var d digest.Digest
	switch rt.kind {
	case "manifest":
		if rt.ref != img.manifestDigest.String() {
			if _, err := digest.Parse(rt.ref); err == nil {
				return &ocierr.Error{Status: http.StatusNotFound, Code: oci.CodeManifestUnknown, Message: "not shoal doctor's canary manifest"}
			}
			if !canaryNonce.MatchString(rt.ref) {
				return &ocierr.Error{Status: http.StatusBadRequest, Code: oci.CodeTagInvalid, Message: "bad canary tag"}
			}
			if m.canary != nil {
				m.canary.record(rt.ref, adminapi.CanaryHit{
					Time: time.Now().UTC(), Method: r.Method, Path: r.URL.Path, Registry: rt.registry,
					NS: r.URL.Query().Get("ns"), UserAgent: r.UserAgent(), Remote: r.RemoteAddr,
				})
			}
			m.log.Info("shoal doctor canary requested", "nonce", rt.ref, "registry", rt.registry, "user_agent", r.UserAgent())
		}
		body, ctype, d = img.manifest, ocispec.MediaTypeImageManifest, img.manifestDigest
	case "blob":
		dg := digest.Digest(rt.ref)
		b, ok := img.blobs[dg]
		if !ok {
			return &ocierr.Error{Status: http.StatusNotFound, Code: oci.CodeBlobUnknown, Message: "not a blob of shoal doctor's canary"}
		}
		if m.canary != nil && r.Method == http.MethodGet {
			m.canary.blobs.Add(1)
		}
		body, ctype, d = b, "application/octet-stream", dg
	default:
		return &ocierr.Error{Status: http.StatusNotFound, Code: oci.CodeNameUnknown, Message: fmt.Sprintf("shoal doctor's canary has no %s", rt.kind)}
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set(HeaderSource, "canary")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
	return nil
}
