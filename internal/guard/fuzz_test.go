package guard

import (
	"slices"
	"strings"
	"testing"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// Fuzz targets for what an operator's files put in front of the guard. Seed corpora live in
// testdata/fuzz/<target>/; daemon's TestFuzzTargetsBriefly runs them with every other target
// of the module.

// FuzzHtpasswd: the htpasswd parser never panics and never quotes a hash in its errors.
func FuzzHtpasswd(f *testing.F) {
	for _, s := range []string{
		"alice:$2y$05$4KQz5bXrGbGqnWVYyEnBUOv3i0yrC1hn3A8F9m4d0vJ0v3Kb5Bq7u\n",
		"# c\n\nbob:$apr1$x$y\n", "a:b:c\n", ":$2y$\n", strings.Repeat("x", 5000) + "\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		users, err := ParseHtpasswd(b)
		if err != nil {
			// The hash's text may also be in the user name or the message itself; it is quoted
			// only if it leaves the error when the hash alone is replaced.
			lines := strings.Split(string(b), "\n")
			for i, line := range lines {
				user, hash, ok := strings.Cut(strings.TrimSpace(line), ":")
				if !ok || len(hash) < 8 || !strings.Contains(err.Error(), hash) {
					continue
				}
				other := slices.Clone(lines)
				other[i] = user + ":" + strings.Repeat("#", len(hash))
				if _, err2 := ParseHtpasswd([]byte(strings.Join(other, "\n"))); err2 == nil || !strings.Contains(err2.Error(), hash) {
					t.Fatalf("error quotes a hash: %v", err)
				}
			}
			return
		}
		for u, h := range users {
			if u == "" || !strings.HasPrefix(string(h), "$2") {
				t.Fatalf("accepted user %q with hash %q", u, h)
			}
		}
	})
}

// FuzzRepoPattern: any pattern compiles or is refused, matching never panics, and a pattern
// without wildcards matches only its own name.
func FuzzRepoPattern(f *testing.F) {
	f.Add("docker.io/library/*", "docker.io", "library/alpine")
	f.Add("ghcr.io/myorg/*", "ghcr.io", "myorg/x/y")
	f.Add("quay.io/a.b/c?d", "quay.io", "a.b/cxd")
	f.Add("x/(((", "x", "(((")
	f.Fuzz(func(t *testing.T, pattern, registry, repo string) {
		res, err := compileRepoPatterns("k", []string{pattern})
		if err != nil { // refused (blank, malformed, not printable ASCII)
			return
		}
		p := &policy{allowRepo: res}
		got := p.repoAllowed(registry, repo)
		if !strings.ContainsAny(pattern, "*?") && got {
			reg, rest, _ := strings.Cut(strings.TrimSpace(pattern), "/")
			if oci.CanonicalRegistry(strings.ToLower(reg)) != registry || (rest != repo && "library/"+rest != repo) {
				t.Fatalf("literal pattern %q matched %s/%s", pattern, registry, repo)
			}
		}
	})
}
