package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/shoal-mirror/shoal/adminapi"
)

// hubSearchFixture answers Docker Hub's search API (GET /v1/search?q=TERM&n=N), which cannot
// be reached from here, the way index.docker.io does: 200, application/json, {"num_pages",
// "num_results", "results": [{"star_count", "is_official", "name", "is_automated",
// "description"}], "page_size", "query", "page"} (moby api/types/registry SearchResults and
// registry/search.go, which `docker search` uses).
func hubSearchFixture(t *testing.T, results []map[string]any) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/search" {
			http.NotFound(w, r)
			return
		}
		n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"num_pages": 1, "num_results": len(results), "results": results,
			"page_size": 25, "query": r.URL.Query().Get("q"), "page": 1})
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// `shoal search` asks Docker Hub through the daemon (cached, so the second search costs Docker
// Hub nothing) or a registry's catalog, in a table or as JSON.
func TestSearchCLI(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	hub, queries := hubSearchFixture(t, []map[string]any{
		{"name": "nginx", "description": "Official build of Nginx.", "star_count": 20931, "is_official": true, "is_automated": false},
		{"name": "bitnami/nginx", "description": "Bitnami nginx\x1b[31m in red\nand a second line", "star_count": 193, "is_official": false, "is_automated": false},
	})
	cfg := filepath.Join(t.TempDir(), "console.yaml")
	if err := os.WriteFile(cfg, []byte("console:\n  listen: \"off\"\n  hub_search_url: "+hub.URL+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startOpsShoal(t, shoalOpts{registries: []string{up.Open.Addr + "=" + up.Open.URL}, args: []string{"--config", cfg}})

	r := d.run(t, 0, "search", "nginx")
	lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[1], "nginx") || !strings.Contains(lines[1], "[OK]") || !strings.Contains(lines[1], "20931") {
		t.Errorf("search table:\n%s", r.Stdout)
	}
	if strings.Contains(r.Stdout, "\x1b") || !strings.Contains(lines[2], "bitnami/nginx") {
		t.Errorf("a description from the upstream moved the terminal or broke the table:\n%q", r.Stdout)
	}
	r = d.run(t, 0, "search", "nginx", "--json")
	var res adminapi.SearchResults
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("search --json: %v\n%s", err, r.Stdout)
	}
	if res.Registry != "docker.io" || res.NumResults != 2 || len(res.Results) != 2 || !res.Results[0].IsOfficial || !res.Cached {
		t.Errorf("search --json (second search, from the cache): %+v", res)
	}
	if n := queries.Load(); n != 1 {
		t.Errorf("Docker Hub was asked %d times for one term, want 1 (cached)", n)
	}

	// Another registry: its catalog, filtered by the term.
	repo := strings.SplitN(up.Img.Small.Repo, "/", 2)[0]
	r = d.run(t, 0, "search", "--registry", up.Open.Addr, "--json", repo)
	res = adminapi.SearchResults{}
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("search --registry --json: %v\n%s", err, r.Stdout)
	}
	found := false
	for _, x := range res.Results {
		found = found || x.Name == up.Open.Addr+"/"+up.Img.Small.Repo
	}
	if !found {
		t.Errorf("catalog search for %q on %s: %+v, want %s among them", repo, up.Open.Addr, res, up.Img.Small.Repo)
	}
	r = d.run(t, 2, "search")
	if !strings.Contains(r.Stderr, "TERM") {
		t.Errorf("search without a term: %q", r.Stderr)
	}
}
