package oci

import (
	"net"
	"strings"
)

// DockerHub is the registry name shoal files Docker Hub's content under, whichever of its
// names a client used.
const DockerHub = "docker.io"

// CanonicalRegistry maps Docker Hub's many names to one, so that the cache and credentials
// are shared whichever name a client used.
func CanonicalRegistry(h string) string {
	switch h {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return DockerHub
	}
	return h
}

// LooksLikeHost follows Docker's rule for the first element of a reference: it names a
// registry when it has a dot or a port, or is localhost.
func LooksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

// ValidHost accepts HOST or HOST:PORT with a DNS name or an IP (IPv6 in brackets).
func ValidHost(s string) bool {
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

// OfficialRepo adds Docker Hub's "library/" to a one-component repository of Docker Hub
// ("alpine" is "library/alpine"); other registries' names stay as they are.
func OfficialRepo(registry, repo string) string {
	if registry == DockerHub && !strings.Contains(repo, "/") {
		return "library/" + repo
	}
	return repo
}

// SplitName splits a name as a client writes it (without tag or digest) into registry and
// repository, the way Docker does: a first component that looks like a host is the registry,
// else defaultRegistry; Docker Hub's names become one, and its official images get
// "library/". The repository is not validated (ValidateRepo).
func SplitName(name, defaultRegistry string) (registry, repo string) {
	registry, repo = defaultRegistry, name
	if first, rest, ok := strings.Cut(name, "/"); ok && LooksLikeHost(first) && ValidHost(first) {
		registry, repo = first, rest
	}
	registry = CanonicalRegistry(registry)
	return registry, OfficialRepo(registry, repo)
}
