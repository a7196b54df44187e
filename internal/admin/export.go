package admin

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/oci"
)

// An export is one tarball that both `docker load` and `ctr image import` accept, in the shape
// Docker itself writes since 25.0: an OCI image layout (oci-layout, index.json, blobs/<alg>/<hex>)
// plus a Docker-archive manifest.json whose paths point into the same blobs. Docker 20.10 reads
// manifest.json only (it needs an image config and layer files, compressed or not); containerd
// prefers the OCI layout when oci-layout is present. Every byte comes through the daemon's own
// mirror API, so an export also warms the cache, and is hashed again while written.
//
// For a multi-platform image the OCI part keeps the index (so the image keeps its digest) with
// the content of the selected platform, or of every platform with all_platforms; the Docker
// part names the selected platform's image.

// Annotations containerd reads to name imported images (AnnotationImageName: the name
// `ctr image import` gives the image).
const (
	AnnotationImageName = "io.containerd.image.name"
	annotationRefName   = "org.opencontainers.image.ref.name"
)

// Media types of image configs Docker can load.
var imageConfigTypes = map[string]bool{
	oci.MediaTypeDockerConfig:    true,
	ocispec.MediaTypeImageConfig: true,
}

type exportPlan struct {
	smalls  map[digest.Digest][]byte // manifests and indexes, already fetched
	order   []digest.Digest          // every file, in the order written
	blobs   map[digest.Digest]exportBlob
	index   []ocispec.Descriptor
	dockers []DockerEntry
}

type exportBlob struct {
	ref  imageRef
	desc ocispec.Descriptor
}

// DockerEntry is one image in the export's Docker-archive manifest.json (what `docker load`
// reads): its config and layer files in the tar, and the names it gets.
type DockerEntry struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

func blobPath(d digest.Digest) string {
	return path.Join("blobs", d.Algorithm().String(), d.Encoded())
}

func (p *exportPlan) addSmall(d digest.Digest, data []byte) {
	if _, ok := p.smalls[d]; ok {
		return
	}
	p.smalls[d] = data
	p.order = append(p.order, d)
}

func (p *exportPlan) addBlob(ref imageRef, desc ocispec.Descriptor) {
	if _, ok := p.blobs[desc.Digest]; ok {
		return
	}
	if _, ok := p.smalls[desc.Digest]; ok {
		return
	}
	p.blobs[desc.Digest] = exportBlob{ref: ref, desc: desc}
	p.order = append(p.order, desc.Digest)
}

func (a *admin) planExport(ctx context.Context, refs []imageRef, want ocispec.Platform, all bool) (*exportPlan, error) {
	p := &exportPlan{smalls: map[digest.Digest][]byte{}, blobs: map[digest.Digest]exportBlob{}}
	for _, ref := range refs {
		top, err := a.self.manifest(ctx, ref, ref.ref())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ref, err)
		}
		p.addSmall(top.digest, top.data)
		desc := ocispec.Descriptor{MediaType: top.mediaType, Digest: top.digest, Size: int64(len(top.data)), Annotations: map[string]string{}}
		if ref.tag != "" {
			desc.Annotations[AnnotationImageName] = ref.registry + "/" + ref.repo + ":" + ref.tag
			desc.Annotations[annotationRefName] = ref.tag
		} else {
			desc.Annotations[AnnotationImageName] = ref.registry + "/" + ref.repo + "@" + top.digest.String()
		}
		p.index = append(p.index, desc)

		doc, err := oci.ParseManifest(top.data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ref, err)
		}
		docker := -1 // which of images the Docker part names
		images := []oci.Doc{doc}
		if doc.IsIndex() {
			images = nil
			for _, child := range doc.Manifests() {
				match := oci.MatchPlatform(want, child.Platform)
				if !all && !match {
					continue
				}
				fm, err := a.self.manifest(ctx, ref, child.Digest.String())
				if err != nil {
					return nil, fmt.Errorf("%s: manifest %s (%s): %w", ref, child.Digest, oci.FormatPlatform(child.Platform), err)
				}
				cdoc, err := oci.ParseManifest(fm.data)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", ref, err)
				}
				p.addSmall(fm.digest, fm.data)
				images = append(images, cdoc)
				if match && docker < 0 {
					docker = len(images) - 1
				}
			}
			if len(images) == 0 {
				return nil, notFound("%s has no manifest for platform %s (export with all_platforms, or pick a platform it has)", ref, oci.FormatPlatform(&want))
			}
		}
		if docker < 0 {
			docker = 0
		}
		for _, img := range images {
			if c := img.Config(); c != nil {
				p.addBlob(ref, *c)
			}
			for _, l := range img.Layers() {
				p.addBlob(ref, l)
			}
		}
		if dk := images[docker]; dk.Config() != nil && imageConfigTypes[dk.Config().MediaType] {
			e := DockerEntry{Config: blobPath(dk.Config().Digest), RepoTags: []string{}, Layers: []string{}}
			if ref.tag != "" {
				e.RepoTags = append(e.RepoTags, ref.familiar())
			}
			for _, l := range dk.Layers() {
				e.Layers = append(e.Layers, blobPath(l.Digest))
			}
			p.dockers = append(p.dockers, e)
		}
	}
	return p, nil
}

// export streams the tarball. Errors found while planning (unknown image, no such platform)
// are answered as JSON; once the tar is under way, a failure cuts the connection, so that no
// client takes a short tarball for a whole one.
func (a *admin) export(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		WriteError(w, &apiError{status: http.StatusMethodNotAllowed, code: adminapi.CodeBadRequest, err: errors.New("export: use GET")})
		return
	}
	q := r.URL.Query()
	names := q["image"]
	for _, s := range q["images"] {
		for _, n := range strings.Split(s, ",") {
			if n = strings.TrimSpace(n); n != "" {
				names = append(names, n)
			}
		}
	}
	if len(names) == 0 {
		WriteError(w, badRequest("export: name at least one image (image=NAME, repeatable, or images=A,B)"))
		return
	}
	want := oci.DefaultPlatform()
	if s := q.Get("platform"); s != "" {
		p, err := parsePlatform(s)
		if err != nil {
			WriteError(w, err)
			return
		}
		want = *p
	}
	all := q.Get("all_platforms") == "true" || q.Get("all_platforms") == "1"
	var refs []imageRef
	for _, n := range names {
		ref, err := parseImageRef(n, a.opt.DefaultRegistry)
		if err != nil {
			WriteError(w, err)
			return
		}
		refs = append(refs, ref)
	}
	ctx := r.Context()
	plan, err := a.planExport(ctx, refs, want, all)
	if err != nil {
		WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", `attachment; filename="shoal-export.tar"`)
	w.WriteHeader(http.StatusOK)
	start := time.Now()
	n, err := a.writeExport(ctx, w, plan)
	if err != nil {
		a.log.Warn("export broken off", "images", names, "written", n, "err", err)
		panic(http.ErrAbortHandler)
	}
	a.log.Info("export done", "images", names, "bytes", n, "duration", time.Since(start).Round(time.Millisecond))
}

// countingWriter counts what goes through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (a *admin) writeExport(ctx context.Context, w io.Writer, p *exportPlan) (int64, error) {
	cw := &countingWriter{w: w}
	tw := tar.NewWriter(cw)
	mtime := time.Unix(0, 0)
	file := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return cw.n, err
	}
	dirs := map[string]bool{}
	for _, d := range p.order {
		dir := path.Dir(blobPath(d))
		for _, x := range []string{"blobs", dir} {
			if dirs[x] {
				continue
			}
			dirs[x] = true
			if err := tw.WriteHeader(&tar.Header{Name: x + "/", Mode: 0o755, ModTime: mtime, Typeflag: tar.TypeDir, Format: tar.FormatPAX}); err != nil {
				return cw.n, err
			}
		}
		if data, ok := p.smalls[d]; ok {
			if err := file(blobPath(d), data); err != nil {
				return cw.n, err
			}
			continue
		}
		if err := a.exportBlob(ctx, tw, p.blobs[d], mtime); err != nil {
			return cw.n, err
		}
	}
	idx, err := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: p.index})
	if err != nil {
		return cw.n, err
	}
	if err := file("index.json", idx); err != nil {
		return cw.n, err
	}
	if len(p.dockers) > 0 {
		mf, err := json.Marshal(p.dockers)
		if err != nil {
			return cw.n, err
		}
		if err := file("manifest.json", mf); err != nil {
			return cw.n, err
		}
	}
	if err := tw.Close(); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

// exportBlob copies one blob from the mirror into the tar, checking its size and digest.
func (a *admin) exportBlob(ctx context.Context, tw *tar.Writer, b exportBlob, mtime time.Time) error {
	d := b.desc.Digest
	if err := tw.WriteHeader(&tar.Header{Name: blobPath(d), Mode: 0o644, Size: b.desc.Size, ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return err
	}
	rc, _, err := a.self.blob(ctx, b.ref, d)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	defer rc.Close()
	h := d.Algorithm().Hash()
	n, err := io.CopyBuffer(io.MultiWriter(tw, h), io.LimitReader(rc, b.desc.Size+1), make([]byte, 256<<10))
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	if n != b.desc.Size || digest.NewDigest(d.Algorithm(), h) != d {
		return fmt.Errorf("blob %s: got %d bytes (manifest says %d) or wrong digest", d, n, b.desc.Size)
	}
	return nil
}
