package daemon

import (
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/shoal-mirror/shoal/internal/oci"
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
		return rt, errNotFound
	}
	name := rt.clientName
	switch ns := r.URL.Query().Get("ns"); {
	case ns != "":
		if !validHost(ns) {
			return rt, fmt.Errorf("%w: ns=%q is not a registry host", oci.ErrNameInvalid, ns)
		}
		rt.registry = ns
	default:
		if first, rest, ok := strings.Cut(name, "/"); ok && looksLikeHost(first) && validHost(first) {
			rt.registry, name = first, rest
		} else {
			rt.registry = defaultRegistry
		}
	}
	rt.registry = canonicalRegistry(rt.registry)
	if rt.registry == "docker.io" && !strings.Contains(name, "/") {
		name = "library/" + name
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

// canonicalRegistry maps Docker Hub's many names to one, so that the cache and credentials are
// shared whichever name a client used.
func canonicalRegistry(h string) string {
	switch h {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return "docker.io"
	}
	return h
}

// looksLikeHost follows Docker's rule for the first element of a reference: it names a
// registry when it has a dot or a port, or is localhost.
func looksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

// validHost accepts HOST or HOST:PORT with a DNS name or an IP (IPv6 in brackets).
func validHost(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	host := s
	if h, port, err := net.SplitHostPort(s); err == nil {
		if port == "" || strings.Trim(port, "0123456789") != "" || len(port) > 5 {
			return false
		}
		host = h
	} else if strings.Contains(s, ":") {
		return false
	}
	if net.ParseIP(host) != nil {
		return true
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i, c := range label {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(label)-1 || c == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}
