package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// Manifest is a manifest's bytes, verified, and where they came from.
type Manifest struct {
	Data      []byte
	MediaType string
	Source    Kind // Store, Peer or Upstream
}

// Manifest returns manifest d by the manifests' order (manifestAttempts): the store, else once
// for all concurrent callers from a provider peer or the upstream, verified, then stored and
// advertised.
func (f *Fetcher) Manifest(ctx context.Context, ref Ref, d digest.Digest) (Manifest, error) {
	if rc, info, err := f.store.Reader(ctx, d); err == nil {
		defer rc.Close()
		data, err := io.ReadAll(io.LimitReader(rc, oci.MaxManifestSize+1))
		if err != nil {
			return Manifest{}, err
		}
		f.spool.sizes.learn(data)
		return Manifest{Data: data, MediaType: info.MediaType, Source: Store}, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return Manifest{}, err
	}
	v, err, _ := f.manifests.Do(d.String(), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		source, private := Peer, false
		data, ok := f.src.manifestFromPeers(ctx, d)
		desc := upstream.Descriptor{Digest: d, MediaType: oci.SniffMediaType(data), Size: int64(len(data))}
		if !ok {
			var err error
			source = Upstream
			data, desc, err = f.src.up.GetManifest(ctx, ref.Registry, ref.Repo, d.String())
			if err != nil {
				return nil, err
			}
			if desc.Digest != d { // GetManifest verifies; this guards the contract
				return nil, fmt.Errorf("%w: manifest %s hashed to %s", upstream.ErrDigestMismatch, d, desc.Digest)
			}
			private = f.src.up.Private(ref.Registry, ref.Repo)
		}
		f.spool.sizes.learn(data) // bounds the downloads of the blobs it references
		f.hist.add(decision{Registry: ref.Registry, Repo: ref.Repo, Digest: d, Kind: "manifest", Source: source, Bytes: int64(len(data))})
		if private {
			f.src.private.add(ctx, d)
		}
		if err := f.store.PutSmall(ctx, d, desc.MediaType, data); err != nil {
			// Verified bytes can still be served; the next request tries to store them again.
			f.log.Warn("could not store manifest", "digest", d, "err", err)
		} else {
			if refs := oci.ManifestRefs(data); len(refs) > 0 {
				if err := f.store.SetRefs(ctx, d, refs); err != nil {
					f.log.Warn("could not record manifest references", "digest", d, "err", err)
				}
			}
			f.src.advertise(ctx, d)
		}
		return Manifest{Data: data, MediaType: desc.MediaType, Source: source}, nil
	})
	if err != nil {
		return Manifest{}, err
	}
	return v.(Manifest), nil
}
