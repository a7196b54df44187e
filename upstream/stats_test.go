package upstream

import (
	"context"
	"net/http"
	"testing"
)

// Stats counts responses by status and token fetches per registry, tells health from the last
// answer, and feeds a request's StatusNote.
func TestStatsAndStatusNote(t *testing.T) {
	iss := newIssuer(t, nil, true)
	u := newUpstream(t, iss)
	u.image("team/app", "v1")
	tc := newTestClient(t, cfgFor(u, RegistryConfig{}), nil)

	var note StatusNote
	ctx := WithStatusNote(context.Background(), &note)
	if _, _, err := tc.GetManifest(ctx, u.host, "team/app", "v1"); err != nil {
		t.Fatal(err)
	}
	if note.Status() != http.StatusOK {
		t.Errorf("StatusNote after a GET: %d, want 200", note.Status())
	}
	if _, _, err := tc.GetManifest(ctx, u.host, "team/app", "nope"); err == nil {
		t.Fatal("manifest of an unknown tag: no error")
	}
	if note.Status() != http.StatusNotFound {
		t.Errorf("StatusNote after a 404: %d", note.Status())
	}
	u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	if _, err := tc.HeadManifest(ctx, u.host, "team/app", "v1"); err == nil {
		t.Fatal("HEAD against a failing upstream: no error")
	}
	st := tc.Stats()
	if len(st) != 1 || st[0].Registry != u.host {
		t.Fatalf("Stats: %+v", st)
	}
	s := st[0]
	// One 401 challenge, then 200 with the token; a 404; 503 on the first try and each retry.
	if s.Responses[401] != 1 || s.Responses[200] != 1 || s.Responses[404] != 1 || s.Responses[503] != 4 {
		t.Errorf("responses %v, want 401:1 200:1 404:1 503:4", s.Responses)
	}
	if s.TokensFetched != 1 || s.TokenErrors != 0 {
		t.Errorf("tokens fetched %d, errors %d; want 1, 0", s.TokensFetched, s.TokenErrors)
	}
	if s.LastError.IsZero() || !s.LastError.After(s.LastOK) && !s.LastError.Equal(s.LastOK) || s.LastErrorText == "" {
		t.Errorf("health: last ok %v, last error %v %q; want the 503 as the last word", s.LastOK, s.LastError, s.LastErrorText)
	}
}
