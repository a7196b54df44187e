package mirror

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/internal/ocierr"
)

// route is a parsed mirror API request.
type route struct {
	kind     string // "manifest", "blob", "tags", "referrers"
	registry string // upstream registry host as clients name it, e.g. "docker.io"
	repo     string // repository on that registry, normalised ("library/alpine")
	ref      string // tag or digest (manifests), digest (blobs, referrers)
	// clientName is the name as the client wrote it in the path, for rewriting Link headers.
	clientName string
}

var routeSuffixes = []struct{ kind, sep string }{
	{"manifest", "/manifests/"},
	{"blob", "/blobs/"},
	{"referrers", "/referrers/"},
}

// parseRoute splits /v2/<name>/<kind>/<ref> and decides the upstream registry: the `ns` query
// parameter (containerd hosts.toml) first, then a host-looking first path element
// (/v2/ghcr.io/owner/img/...), then the default registry.
func parseRoute(r *http.Request, defaultRegistry string) (route, error) {
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	var rt route
	switch {
	case strings.HasSuffix(p, "/tags/list"):
		rt.kind, rt.clientName = "tags", strings.TrimSuffix(p, "/tags/list")
	default:
		for _, s := range routeSuffixes {
			if i := strings.LastIndex(p, s.sep); i > 0 {
				rt.kind, rt.clientName, rt.ref = s.kind, p[:i], p[i+len(s.sep):]
				break
			}
		}
	}
	if rt.kind == "" || rt.clientName == "" || strings.Contains(rt.ref, "/") {
		return rt, ocierr.ErrNoRoute
	}
	name := rt.clientName
	switch ns := r.URL.Query().Get("ns"); {
	case ns != "":
		if !oci.ValidHost(ns) {
			return rt, fmt.Errorf("%w: ns=%q is not a registry host", oci.ErrNameInvalid, ns)
		}
		rt.registry = oci.CanonicalRegistry(ns)
		name = oci.OfficialRepo(rt.registry, name)
	default:
		rt.registry, name = oci.SplitName(name, defaultRegistry)
	}
	if err := oci.ValidateRepo(name); err != nil {
		return rt, err
	}
	rt.repo = name
	switch rt.kind {
	case "blob", "referrers":
		if _, err := oci.ParseDigest(rt.ref); err != nil {
			return rt, err
		}
	case "manifest":
		if oci.IsDigestRef(rt.ref) {
			if _, err := oci.ParseDigest(rt.ref); err != nil {
				return rt, err
			}
		} else if err := oci.ValidateTag(rt.ref); err != nil {
			return rt, err
		}
	}
	return rt, nil
}

// Name is the registry and repository a mirror API request names, as the mirror routes it
// (the guard's repository patterns match these: guard.Options.Route); ok is false for a
// request that is not a valid mirror API route.
func Name(r *http.Request, defaultRegistry string) (registry, repo string, ok bool) {
	rt, err := parseRoute(r, oci.CanonicalRegistry(defaultRegistry))
	return rt.registry, rt.repo, err == nil
}
