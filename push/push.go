package push

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/store"
)

// DefaultNamespace is the first path element that names the cluster-local namespace.
const DefaultNamespace = "shoal.local"

// Config is the push side's configuration (the daemon's push.* keys).
type Config struct {
	// Namespace is the registry-like first path element of cluster-local names; "" turns
	// pushes off (every write answers 405 as before).
	Namespace string
	// UploadTimeout drops an upload session (and its temporary data) that saw no request
	// for this long.
	UploadTimeout time.Duration
	// AllowDelete lets clients delete manifests, tags and blobs of the namespace.
	AllowDelete bool
	// TrustedCIDR lists clients that may push without a login (default: loopback).
	TrustedCIDR []string
	// Users are "USER=PATTERN" rules: an htpasswd user may push to the repositories the
	// pattern matches (the repository without the namespace; * matches any run of
	// characters, slashes included, ? one character; "*" is every repository).
	Users []string
	// TagTTL is how long a node answers a tag from its own record before it asks the swarm
	// for a newer one.
	TagTTL time.Duration
	// LocalReplicas is how many nodes hold a pushed image before the push answers (this one
	// included; fewer when the swarm has fewer nodes), and how many the holders restore when
	// one leaves. RepairInterval is how often they check.
	LocalReplicas  int
	RepairInterval time.Duration
	// MaxBlobSize caps one upload (store.max_blob_size; 0 = no cap beyond the store's budget).
	MaxBlobSize int64
}

// DefaultConfig is pushes on for loopback clients, deletes on, abandoned uploads dropped
// after 15 minutes.
func DefaultConfig() Config {
	return Config{Namespace: DefaultNamespace, UploadTimeout: 15 * time.Minute, AllowDelete: true,
		TrustedCIDR: []string{"127.0.0.0/8", "::1/128"}, TagTTL: time.Second,
		LocalReplicas: 2, RepairInterval: 10 * time.Second}
}

// Validate checks the configuration; errors name the key.
func (c Config) Validate() error {
	if c.Namespace != "" {
		if !strings.Contains(c.Namespace, ".") || strings.Contains(c.Namespace, "/") || oci.ValidateRepo(c.Namespace) != nil {
			return fmt.Errorf("push.namespace: %q: want one lower-case path element with a dot (such as shoal.local), so that it can never be read as a Docker Hub repository", c.Namespace)
		}
	}
	if c.UploadTimeout <= 0 {
		return errors.New("push.upload_timeout: must be positive")
	}
	if c.LocalReplicas < 1 {
		return errors.New("push.local_replicas: must be at least 1")
	}
	if c.RepairInterval <= 0 {
		return errors.New("push.repair_interval: must be positive")
	}
	if c.TagTTL < 0 {
		return errors.New("push.tag_ttl: must not be negative")
	}
	if c.MaxBlobSize < 0 {
		return errors.New("push: max blob size must not be negative")
	}
	if _, err := parseNets(c.TrustedCIDR); err != nil {
		return fmt.Errorf("push.trusted_cidr: %w", err)
	}
	if _, err := parseRules(c.Users); err != nil {
		return fmt.Errorf("push.users: %w", err)
	}
	return nil
}

// Client is who sent a request: its address and, when it logged in with a valid htpasswd
// password, its user name (the daemon's guard checks the password).
type Client struct {
	Addr netip.Addr
	User string
}

// Handler serves the local namespace. Its methods are safe for concurrent use.
type Handler struct {
	cfg     Config
	st      *store.Store
	log     *slog.Logger
	trusted []netip.Prefix
	rules   []rule
	cluster Cluster // nil without P2P
	flight  singleflight.Group
	// onCommit is told about content that became visible (the daemon advertises it to peers).
	onCommit func(digest.Digest)
	// fwd and accepted serve write-through pushes (writethrough.go); nil: none.
	fwd         Forwarder
	onForwarded func(ctx context.Context, host, repo string, held []digest.Digest) bool

	mu      sync.Mutex
	uploads map[string]*upload
	// unreferenced holds blobs pushed (and pinned) but not yet referenced by a pushed
	// manifest, with the time they were pushed: after UploadTimeout they are unpinned, so a
	// push that never sent its manifest does not hold disk space forever.
	unreferenced map[digest.Digest]time.Time
	// seqs is the newest tag record sequence seen per tag name (pushed here or looked up).
	seqs map[string]int64

	stop       chan struct{}
	done       chan struct{}
	repairDone chan struct{} // nil unless the repair loop runs
	once       sync.Once
}

// New builds the handler and starts the sweep that drops abandoned uploads; Close stops it.
// onCommit may be nil.
func New(cfg Config, st *store.Store, log *slog.Logger, onCommit func(digest.Digest)) (*Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	trusted, _ := parseNets(cfg.TrustedCIDR)
	rules, _ := parseRules(cfg.Users)
	if onCommit == nil {
		onCommit = func(digest.Digest) {}
	}
	h := &Handler{cfg: cfg, st: st, log: log, trusted: trusted, rules: rules, onCommit: onCommit,
		uploads: map[string]*upload{}, unreferenced: map[digest.Digest]time.Time{}, seqs: map[string]int64{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go h.sweepLoop()
	return h, nil
}

// Close drops every upload in progress and stops the sweep.
func (h *Handler) Close() {
	h.once.Do(func() {
		close(h.stop)
		<-h.done
		if h.repairDone != nil {
			<-h.repairDone
		}
		h.mu.Lock()
		ups := h.uploads
		h.uploads = map[string]*upload{}
		h.mu.Unlock()
		for _, u := range ups {
			u.discard()
		}
	})
}

// Namespace is the local namespace's first path element ("" when pushes are off).
func (h *Handler) Namespace() string { return h.cfg.Namespace }

// Match reports whether a request under /v2/ is for the local namespace: ?ns= names it
// (containerd's hosts.toml), or, without ns, the path's first element does.
func (h *Handler) Match(r *http.Request) bool {
	if h == nil || h.cfg.Namespace == "" {
		return false
	}
	if ns := r.URL.Query().Get("ns"); ns != "" {
		return ns == h.cfg.Namespace
	}
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	return strings.HasPrefix(p, h.cfg.Namespace+"/")
}

// Error is a failure with the OCI error code and HTTP status the client must see. The daemon
// writes it (one place writes OCI errors).
type Error struct {
	Status  int
	Code    string
	Message string
	Err     error
	// Header holds headers the answer needs (WWW-Authenticate on a 401).
	Header http.Header
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(status int, code string, err error, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...), Err: err}
}

// req is a parsed request for the local namespace.
type req struct {
	kind string // "manifest", "blob", "upload", "uploads", "tags", "referrers"
	repo string // repository inside the namespace, e.g. "team/app"
	ref  string // tag or digest, or upload id
	// prefix is the path up to and including the name as the client wrote it
	// ("/v2/shoal.local/team/app"), for Location headers.
	prefix string
	// host is the upstream registry of a write-through push ("" for the local namespace).
	host string
}

func (q req) tagName(ns, tag string) string { return ns + "/" + q.repo + ":" + tag }

var routes = []struct{ kind, sep string }{
	{"uploads", "/blobs/uploads/"},
	{"manifest", "/manifests/"},
	{"blob", "/blobs/"},
	{"referrers", "/referrers/"},
}

func (h *Handler) parse(r *http.Request, space string) (req, error) {
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	var q req
	var name string
	if n, ok := strings.CutSuffix(p, "/tags/list"); ok {
		q.kind, name = "tags", n
	} else {
		for _, rt := range routes {
			if i := strings.LastIndex(p, rt.sep); i > 0 {
				q.kind, name, q.ref = rt.kind, p[:i], p[i+len(rt.sep):]
				break
			}
		}
	}
	if q.kind == "" || name == "" || strings.Contains(q.ref, "/") {
		return q, errorf(http.StatusNotFound, oci.CodeNameUnknown, nil, "no such route")
	}
	q.prefix = "/v2/" + name
	if ns := r.URL.Query().Get("ns"); ns == "" {
		name = strings.TrimPrefix(name, space+"/")
	}
	if err := oci.ValidateRepo(name); err != nil {
		return q, errorf(http.StatusBadRequest, oci.CodeNameInvalid, err, "invalid repository name")
	}
	q.repo = name
	switch q.kind {
	case "uploads":
		if q.ref != "" {
			q.kind = "upload"
		}
	case "blob", "referrers":
		if _, err := oci.ParseDigest(q.ref); err != nil {
			return q, errorf(http.StatusBadRequest, oci.CodeDigestInvalid, err, "invalid digest")
		}
	case "manifest":
		if oci.IsDigestRef(q.ref) {
			if _, err := oci.ParseDigest(q.ref); err != nil {
				return q, errorf(http.StatusBadRequest, oci.CodeDigestInvalid, err, "invalid digest")
			}
		} else if err := oci.ValidateTag(q.ref); err != nil {
			return q, errorf(http.StatusBadRequest, oci.CodeManifestInvalid, err, "invalid tag")
		}
	}
	return q, nil
}

// Serve answers one request for the local namespace; errors are *Error or errors the daemon
// classifies (a client that went away).
func (h *Handler) Serve(w http.ResponseWriter, r *http.Request, c Client) error {
	q, err := h.parse(r, h.cfg.Namespace)
	if err != nil {
		return err
	}
	write := r.Method != http.MethodGet && r.Method != http.MethodHead
	if write {
		if err := h.authorize(c, q.repo); err != nil {
			return err
		}
	}
	if ok, err := h.serveUpload(w, r, q); ok {
		return err
	}
	switch q.kind + " " + r.Method {
	case "blob GET", "blob HEAD":
		return h.getBlob(w, r, q)
	case "blob DELETE":
		return h.deleteBlob(w, r, q)
	case "manifest GET", "manifest HEAD":
		return h.getManifest(w, r, q)
	case "manifest PUT":
		return h.putManifest(w, r, q)
	case "manifest DELETE":
		return h.deleteManifest(w, r, q)
	case "tags GET", "tags HEAD":
		return h.listTags(w, r, q)
	case "referrers GET", "referrers HEAD":
		return h.referrers(w, r, q)
	}
	return errorf(http.StatusMethodNotAllowed, oci.CodeUnsupported, nil, "%s is not supported on this route", r.Method)
}

// authorize decides whether c may write to repo.
func (h *Handler) authorize(c Client, repo string) error {
	for _, n := range h.trusted {
		if c.Addr.IsValid() && n.Contains(c.Addr.Unmap()) {
			return nil
		}
	}
	if c.User == "" {
		e := errorf(http.StatusUnauthorized, oci.CodeUnauthorized, nil,
			"pushing from your address needs a login (security.htpasswd) and a push.users rule for the repository")
		e.Header = http.Header{"Www-Authenticate": {`Basic realm="shoal"`}}
		return e
	}
	for _, rl := range h.rules {
		if rl.user == c.User && rl.re.MatchString(repo) {
			return nil
		}
	}
	return errorf(http.StatusForbidden, oci.CodeDenied, nil, "user %q may not push to %s/%s (push.users)", c.User, h.cfg.Namespace, repo)
}

type rule struct {
	user string
	re   *regexp.Regexp
}

func parseRules(ss []string) ([]rule, error) {
	var out []rule
	for _, s := range ss {
		user, pat, ok := strings.Cut(strings.TrimSpace(s), "=")
		if !ok || user == "" || pat == "" || strings.ContainsAny(s, " \t") {
			return nil, fmt.Errorf("%q: want USER=PATTERN, e.g. ci=team/*", s)
		}
		var b strings.Builder
		b.WriteString("^")
		for _, part := range strings.SplitAfter(regexp.QuoteMeta(pat), `\*`) {
			part = strings.ReplaceAll(part, `\?`, ".")
			if strings.HasSuffix(part, `\*`) {
				part = strings.TrimSuffix(part, `\*`) + ".*"
			}
			b.WriteString(part)
		}
		b.WriteString("$")
		re, err := regexp.Compile(b.String())
		if err != nil {
			return nil, fmt.Errorf("%q: %v", s, err)
		}
		out = append(out, rule{user: user, re: re})
	}
	return out, nil
}

func parseNets(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor an address", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// storeErr turns a store failure into what the client must see.
func storeErr(err error, what string) error {
	switch {
	case errors.Is(err, store.ErrDigestMismatch):
		return errorf(http.StatusBadRequest, oci.CodeDigestInvalid, err, "%s does not match its digest; nothing was stored", what)
	case errors.Is(err, store.ErrNoSpace):
		return errorf(http.StatusInsufficientStorage, oci.CodeDenied, err, "no space left in this node's store for %s", what)
	case errors.Is(err, context.Canceled):
		return err
	}
	return fmt.Errorf("%s: %w", what, err)
}

func location(prefix, kind, ref string) string { return path.Join(prefix, kind, ref) }

// serveUpload answers the upload session requests (start, append, finish, status, cancel), the
// same for the local namespace and write-through; ok is false for any other request.
func (h *Handler) serveUpload(w http.ResponseWriter, r *http.Request, q req) (ok bool, err error) {
	switch q.kind + " " + r.Method {
	case "uploads POST":
		return true, h.startUpload(w, r, q)
	case "upload PATCH":
		return true, h.patchUpload(w, r, q)
	case "upload PUT":
		return true, h.finishUpload(w, r, q)
	case "upload GET":
		return true, h.uploadStatus(w, r, q)
	case "upload DELETE":
		return true, h.cancelUpload(w, r, q)
	}
	return false, nil
}
