package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// fakeNode is the P2P side as the resolver sees it (PeerNode), kept in memory: which peers
// provide what, which peer the swarm designates, which peers are gone. The registry behind it
// stays real: a peer asked to fetch for the swarm fetches from it.
type fakeNode struct {
	mu        sync.Mutex
	up        *upstream.Client
	providers map[digest.Digest][]string          // digest → peers that advertise it
	holds     map[string]map[digest.Digest][]byte // peer → what it serves
	designate string                              // the designated peer ("": this node)
	gone      map[string]bool                     // peers that no longer answer
	breaks    map[string]bool                     // peers whose stream breaks halfway (then gone)
	granting  map[string]bool                     // peers that grant a fetch (protocol 1.1)
	provided  []digest.Digest                     // what this node advertised
	asked     []string                            // "fetch:ID" and "via:ID", in order
	banned    []string
}

var _ PeerNode = (*fakeNode)(nil)

func (n *fakeNode) Provide(ctx context.Context, d digest.Digest) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.provided = append(n.provided, d)
	return nil
}

func (n *fakeNode) Withdraw(d digest.Digest) {}

func (n *fakeNode) FindProviders(ctx context.Context, d digest.Digest, max int) ([]p2p.Peer, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []p2p.Peer
	for _, id := range n.providers[d] {
		out = append(out, p2p.Peer{ID: id})
	}
	return out, nil
}

func (n *fakeNode) Fetch(ctx context.Context, p p2p.Peer, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.asked = append(n.asked, "fetch:"+p.ID)
	data, ok := n.holds[p.ID][d]
	if !ok || n.gone[p.ID] {
		return nil, 0, p2p.ErrNotFound
	}
	return io.NopCloser(bytes.NewReader(data[offset:])), int64(len(data)), nil
}

func (n *fakeNode) FetchVia(ctx context.Context, p p2p.Peer, d digest.Digest, offset int64, registry, repo string) (io.ReadCloser, int64, error) {
	n.mu.Lock()
	n.asked = append(n.asked, "via:"+p.ID)
	gone, grants := n.gone[p.ID], n.granting[p.ID]
	n.mu.Unlock()
	if gone {
		return nil, 0, fmt.Errorf("dial %s: connection refused", p.ID)
	}
	if grants {
		return nil, 0, fmt.Errorf("p2p: fetch %s via %s: %w", d, p.ID, p2p.ErrGranted)
	}
	rc, size, err := n.up.GetBlob(ctx, registry, repo, d, offset) // it fetches for the swarm
	if err == nil && n.breaks[p.ID] {
		n.mu.Lock()
		n.gone[p.ID] = true // killed mid-stream
		n.mu.Unlock()
		rc = &breakingReader{rc: rc, left: (size - offset) / 2}
	}
	return rc, size, err
}

func (n *fakeNode) FetchViaWithin(ctx context.Context, answer time.Duration, p p2p.Peer, d digest.Digest, offset int64, registry, repo string) (io.ReadCloser, int64, error) {
	return n.FetchVia(ctx, p, d, offset, registry, repo)
}

func (n *fakeNode) Designate(ctx context.Context, d digest.Digest) (p2p.Designation, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.designate == "" {
		return p2p.Designation{Self: true}, nil
	}
	return p2p.Designation{Peer: p2p.Peer{ID: n.designate}}, nil
}

// DesignatedAmongConnected names the next peer after the designated one ("next"), or this
// node when that is gone too.
func (n *fakeNode) DesignatedAmongConnected(ctx context.Context, d digest.Digest, except ...string) (p2p.Peer, bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, id := range []string{n.designate, "next"} {
		if id != "" && !n.gone[id] && !strings.Contains(strings.Join(except, " "), id) {
			return p2p.Peer{ID: id}, false, nil
		}
	}
	return p2p.Peer{}, true, nil
}

func (n *fakeNode) Ban(peerID, reason string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.banned = append(n.banned, peerID)
}

func (n *fakeNode) SpeaksGrant(peerID string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.granting[peerID]
}

func (n *fakeNode) Connected(peerID string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.gone[peerID]
}

// testRegistry is go-containerregistry's registry, in process, with one random layer pushed
// to repo; creds (user:password) makes it ask for Basic credentials.
func testRegistry(t *testing.T, repo, creds string) (host string, up *upstream.Client, d digest.Digest, data []byte) {
	t.Helper()
	return testRegistryWith(t, repo, creds, nil)
}

// testRegistryWith is testRegistry with front, when not nil, in front of the registry: it
// answers a request itself or passes it on to next (the real registry).
func testRegistryWith(t *testing.T, repo, creds string, front func(w http.ResponseWriter, r *http.Request, next http.Handler)) (host string, up *upstream.Client, d digest.Digest, data []byte) {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); creds != "" && r.URL.Path != "/v2/" && (!ok || u+":"+p != creds) {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "auth", http.StatusUnauthorized)
			return
		}
		if front != nil {
			front(w, r, reg)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	host = strings.TrimPrefix(srv.URL, "http://")
	img, err := random.Image(64<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/"+repo+":latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remote.Option{}
	if creds != "" {
		u, p, _ := strings.Cut(creds, ":")
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: u, Password: p}))
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	h, _ := ls[0].Digest()
	rc, _ := ls[0].Compressed()
	data, _ = io.ReadAll(rc)
	rc.Close()
	cfg := upstream.DefaultConfig()
	rcfg := upstream.RegistryConfig{URL: srv.URL}
	if creds != "" {
		rcfg.Username, rcfg.Password, _ = strings.Cut(creds, ":")
	}
	cfg.Registries = map[string]upstream.RegistryConfig{host: rcfg}
	cfg.OnlyConfigured, cfg.Retries = true, 0
	up, err = upstream.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return host, up, digest.Digest(h.String()), data
}

// setup is one case's world: the fetcher under test, its fake P2P side, the blob.
type setup struct {
	f    *Fetcher
	node *fakeNode
	ref  Ref
	d    digest.Digest
	data []byte
}

// TestResolverOrder: for each case of the resolution order, the resolver asked to predict
// names the source that a fetch then uses, the fetch's bytes are the blob's, and the history
// records that source.
func TestResolverOrder(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		p2pOff  bool
		creds   string
		prepare func(t *testing.T, s *setup) (cleanup func())
		want    Source // what both predict and fetch give
		check   func(t *testing.T, s *setup)
	}{
		{name: "stored", want: Source{Kind: Store}, prepare: func(t *testing.T, s *setup) func() {
			if err := s.f.store.PutSmall(t.Context(), s.d, "", s.data); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{name: "in flight", want: Source{Kind: InFlight}, prepare: func(t *testing.T, s *setup) func() {
			release := make(chan struct{})
			held := func(ctx context.Context, off int64) (io.ReadCloser, int64, Source, error) {
				<-release
				return io.NopCloser(bytes.NewReader(s.data[off:])), int64(len(s.data)), Source{Kind: Upstream}, nil
			}
			b, err := s.f.Blob(t.Context(), s.ref, s.d, held)
			if err != nil || b.Fill == nil || !b.Started {
				t.Fatalf("starting the held download: %+v, %v", b, err)
			}
			var once sync.Once
			return func() { once.Do(func() { close(release); b.Fill.Release() }) }
		}},
		{name: "provider peer", want: Source{Kind: Peer, Peer: "holder"}, prepare: func(t *testing.T, s *setup) func() {
			s.node.providers[s.d] = []string{"holder"}
			s.node.holds["holder"] = map[digest.Digest][]byte{s.d: s.data}
			return nil
		}},
		{name: "designated peer", want: Source{Kind: Designated, Peer: "fetcher"}, prepare: func(t *testing.T, s *setup) func() {
			s.node.designate = "fetcher"
			return nil
		}},
		{name: "designated peer grants the fetch", want: Source{Kind: Upstream}, prepare: func(t *testing.T, s *setup) func() {
			s.node.designate, s.node.granting = "fetcher", map[string]bool{"fetcher": true}
			return nil
		}, check: func(t *testing.T, s *setup) {
			if r := s.f.Recent(s.d, 1); len(r) != 1 || !strings.Contains(r[0].Reason, "granted by designated peer fetcher") {
				t.Errorf("decision %+v, want upstream, granted by designated peer fetcher", r)
			}
		}},
		{name: "designated gone, the next one", want: Source{Kind: Designated, Peer: "next"}, prepare: func(t *testing.T, s *setup) func() {
			s.node.designate, s.node.gone["fetcher"] = "fetcher", true
			return nil
		}},
		{name: "upstream, this node designated", want: Source{Kind: Upstream}},
		{name: "P2P off", p2pOff: true, want: Source{Kind: Upstream}, check: func(t *testing.T, s *setup) {
			if r := s.f.Recent(s.d, 1); len(r) != 1 || r[0].Reason != "P2P disabled" {
				t.Errorf("decision %+v, want upstream because P2P disabled", r)
			}
		}},
		{name: "private content not shared", creds: "alice:secret", want: Source{Kind: Upstream}, check: func(t *testing.T, s *setup) {
			pc := s.f.PeerContent(slog.New(slog.DiscardHandler))
			if _, _, err := pc.OpenForPeer(t.Context(), s.d, 0); !errors.Is(err, p2p.ErrNotFound) {
				t.Errorf("a peer asked for a private blob: %v, want not found", err)
			}
			if l, err := pc.ShareList(t.Context()); err != nil || len(l) != 0 {
				t.Errorf("share list %v (%v), want nothing private", l, err)
			}
			s.node.mu.Lock()
			defer s.node.mu.Unlock()
			if len(s.node.provided) != 0 {
				t.Errorf("advertised %v, want nothing private", s.node.provided)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			host, up, d, data := testRegistry(t, "test/app", tc.creds)
			st, err := store.Open(t.Context(), storeConfig(t.TempDir()), nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			f := New(Options{Store: st, Upstream: up, Log: slog.New(slog.DiscardHandler)})
			node := &fakeNode{up: up, providers: map[digest.Digest][]string{}, holds: map[string]map[digest.Digest][]byte{}, gone: map[string]bool{}}
			if !tc.p2pOff {
				f.SetNode(node)
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				f.Shutdown(ctx)
			})
			s := &setup{f: f, node: node, ref: Ref{Registry: host, Repo: "test/app"}, d: d, data: data}
			release := func() {}
			if tc.prepare != nil {
				if r := tc.prepare(t, s); r != nil {
					release = r
					defer r()
				}
			}
			pred, why := f.Predict(t.Context(), s.ref, d, false)
			if pred != tc.want {
				t.Errorf("predict: %v (%s), want %v", pred, why, tc.want)
			}
			got, err := fetchOnce(t.Context(), s, release)
			if err != nil {
				t.Fatalf("fetch: %v", err)
			}
			if got != tc.want {
				t.Errorf("fetch came from %v, predicted %v, want %v", got, pred, tc.want)
			}
			if tc.want.Kind != Store && tc.want.Kind != InFlight {
				if r := f.Recent(d, 1); len(r) != 1 || r[0].Source != tc.want.Kind.String() {
					t.Errorf("history %+v, want one decision from %s", r, tc.want.Kind)
				}
			}
			if tc.check != nil {
				tc.check(t, s)
			}
		})
	}
}

// fetchOnce resolves s.d as the mirror does and reads it whole, checking it against its digest;
// it returns the source the response would name. joined runs once the request has its answer.
func fetchOnce(ctx context.Context, s *setup, joined func()) (Source, error) {
	b, err := s.f.Blob(ctx, s.ref, s.d, s.f.Opener(s.ref, s.d))
	if err != nil {
		return Source{}, err
	}
	joined()
	var r io.Reader
	src := Source{Kind: Store}
	if b.Stored != nil {
		defer b.Stored.Close()
		r = b.Stored
	} else {
		defer b.Fill.Release()
		size, err := b.Fill.WaitStarted(ctx)
		if err != nil {
			return Source{}, err
		}
		src = Source{Kind: b.Fill.SourceFor(b.Started)}
		if srcs := b.Fill.Sources(); b.Started && len(srcs) > 0 {
			src = srcs[0]
		}
		r = b.Fill.ClientReader(ctx, 0, size, true, 0)
	}
	got, err := io.ReadAll(r)
	if err != nil {
		return src, err
	}
	if digest.FromBytes(got) != s.d {
		return src, fmt.Errorf("read %d bytes hashing to %s, want %s", len(got), digest.FromBytes(got), s.d)
	}
	return src, nil
}

func storeConfig(dir string) store.Config {
	c := store.DefaultConfig()
	c.Dir, c.MaxSize, c.MinFree = dir, 1<<30, "0"
	return c
}

// breakingReader ends with a broken stream after left bytes.
type breakingReader struct {
	rc   io.ReadCloser
	left int64
}

func (b *breakingReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *breakingReader) Close() error { return b.rc.Close() }

// TestResumeAsksTheNextDesignatedPeer: the designated fetcher dies mid-stream; the resume asks
// the peer the swarm designates next (not the upstream, not a provider first), from where the
// stream broke, and the blob verifies.
func TestResumeAsksTheNextDesignatedPeer(t *testing.T) {
	t.Parallel()
	host, up, d, _ := testRegistry(t, "test/app", "")
	st, err := store.Open(t.Context(), storeConfig(t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := New(Options{Store: st, Upstream: up, Log: slog.New(slog.DiscardHandler)})
	node := &fakeNode{up: up, providers: map[digest.Digest][]string{}, holds: map[string]map[digest.Digest][]byte{},
		gone: map[string]bool{}, breaks: map[string]bool{"fetcher": true}, designate: "fetcher"}
	f.SetNode(node)
	t.Cleanup(func() { f.Shutdown(context.Background()) })
	s := &setup{f: f, node: node, ref: Ref{Registry: host, Repo: "test/app"}, d: d}
	if _, err := fetchOnce(t.Context(), s, func() {}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitStored(t.Context(), d, nil); err != nil {
		t.Fatalf("the blob is not stored: %v", err)
	}
	var srcs []string
	for _, r := range f.Recent(d, 0) {
		srcs = append(srcs, r.Source+": "+r.Reason)
	}
	node.mu.Lock()
	asked := strings.Join(node.asked, " ")
	node.mu.Unlock()
	if asked != "via:fetcher via:next" {
		t.Errorf("asked %q, want the designated fetcher, then the next designated peer", asked)
	}
	if len(srcs) != 2 || !strings.HasPrefix(srcs[0], "designated: the stream broke; the swarm designated peer next") {
		t.Errorf("decisions %q, want the resume from the next designated peer", srcs)
	}
}

// TestUpstreamBreakResumesFromTheUpstream: this node downloads a blob from the upstream (no
// peer had it, it is the designated fetcher); a follower starts providing it meanwhile; the
// upstream's stream breaks halfway. The resume asks the upstream for the rest (a Range from
// where it broke), not the provider: that would be a follower of this very download.
func TestUpstreamBreakResumesFromTheUpstream(t *testing.T) {
	t.Parallel()
	var (
		armed atomic.Bool
		mu    sync.Mutex
		gets  []string // the Range header of each blob GET
		node  *fakeNode
		blob  digest.Digest
	)
	front := func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") || !armed.Load() {
			next.ServeHTTP(w, r)
			return
		}
		mu.Lock()
		gets = append(gets, r.Header.Get("Range"))
		first := len(gets) == 1
		mu.Unlock()
		if !first {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		// The download answered: a follower (here one that would even hold the whole blob)
		// now provides it.
		node.mu.Lock()
		node.providers[blob] = []string{"follower"}
		node.holds["follower"] = map[digest.Digest][]byte{blob: rec.Body.Bytes()}
		node.mu.Unlock()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes()[:rec.Body.Len()/2])
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // the connection breaks
	}
	host, up, d, _ := testRegistryWith(t, "test/app", "", front)
	st, err := store.Open(t.Context(), storeConfig(t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := New(Options{Store: st, Upstream: up, Log: slog.New(slog.DiscardHandler)})
	node = &fakeNode{up: up, providers: map[digest.Digest][]string{}, holds: map[string]map[digest.Digest][]byte{}, gone: map[string]bool{}}
	blob = d
	f.SetNode(node)
	t.Cleanup(func() { f.Shutdown(context.Background()) })
	armed.Store(true)
	s := &setup{f: f, node: node, ref: Ref{Registry: host, Repo: "test/app"}, d: d}
	if _, err := fetchOnce(t.Context(), s, func() {}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitStored(t.Context(), d, nil); err != nil {
		t.Fatalf("the blob is not stored: %v", err)
	}
	node.mu.Lock()
	asked := strings.Join(node.asked, " ")
	node.mu.Unlock()
	if asked != "" {
		t.Errorf("asked peers %q, want none: the resume goes back to the upstream", asked)
	}
	mu.Lock()
	defer mu.Unlock()
	// go-containerregistry's registry refuses a Range (416): the client then asks for the
	// whole blob once more and skips what it has (upstream.Client.GetBlob).
	if len(gets) < 2 || len(gets) > 3 || gets[0] != "" || !strings.HasPrefix(gets[1], "bytes=") {
		t.Errorf("blob GETs with Range %q, want the whole blob, then a Range for the rest", gets)
	}
	var srcs []string
	for _, r := range f.Recent(d, 0) {
		srcs = append(srcs, r.Source+": "+r.Reason)
	}
	if len(srcs) != 2 || srcs[0] != "upstream: the upstream's stream broke; resuming from it" {
		t.Errorf("decisions %q, want the resume from the upstream", srcs)
	}
}
