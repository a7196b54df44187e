package oci

import "testing"

func TestSplitName(t *testing.T) {
	for _, c := range []struct{ in, def, reg, repo string }{
		{"alpine", "docker.io", "docker.io", "library/alpine"},
		{"bitnami/redis", "docker.io", "docker.io", "bitnami/redis"},
		{"index.docker.io/alpine", "ghcr.io", "docker.io", "library/alpine"},
		{"registry-1.docker.io/library/alpine", "ghcr.io", "docker.io", "library/alpine"},
		{"ghcr.io/org/app", "docker.io", "ghcr.io", "org/app"},
		{"localhost/app", "docker.io", "localhost", "app"},
		{"127.0.0.1:5000/app", "docker.io", "127.0.0.1:5000", "app"},
		{"app", "ghcr.io", "ghcr.io", "app"}, // no library/ off Docker Hub
		{"org/app", "quay.io", "quay.io", "org/app"},
		{"bad host/app", "docker.io", "docker.io", "bad host/app"}, // not a host: all of it is the name (ValidateRepo refuses it)
	} {
		if reg, repo := SplitName(c.in, c.def); reg != c.reg || repo != c.repo {
			t.Errorf("SplitName(%q, %q) = %q, %q; want %q, %q", c.in, c.def, reg, repo, c.reg, c.repo)
		}
	}
}
