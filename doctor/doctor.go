// Package doctor proves, per container runtime on a node, that pulls go through this shoal: it
// pulls a canary image through the runtime's own path (CRI like the kubelet, containerd's client
// like ctr, dockerd's Engine API), of a name that only shoal answers (from an image built into the
// daemon, never from a registry), asks the daemon's admin API whether it served that pull's
// nonce, removes the canary from the runtime, and says why a runtime bypassed shoal, with the fix.
package doctor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/hostsetup"
)

// Canary names, as the daemon recognises them (internal/mirror/canary.go).
const (
	CanaryRegistry = "shoal-doctor.invalid"
	CanaryRepo     = "shoaldoctor/canary"
)

// Runtime names.
const (
	CRI        = "cri"        // containerd's CRI plugin, as the kubelet pulls
	Containerd = "containerd" // containerd's client, as `ctr image pull --hosts-dir` pulls
	Docker     = "docker"     // dockerd's Engine API, as `docker pull` pulls
)

// Verdicts.
const (
	InPath         = "in-path"         // shoal served the canary and the runtime has it
	InPathFailed   = "in-path-failed"  // shoal served the canary but the runtime's pull failed
	Bypassed       = "bypassed"        // the runtime did not ask shoal
	RuntimeMissing = "runtime-missing" // nothing answers on the runtime's socket
	CheckFailed    = "check-failed"    // the check itself could not run
)

// Reason is why a runtime bypasses shoal (or a fact worth knowing), with what to change.
type Reason struct {
	Severity string `json:"severity"` // problem, warning, note
	Message  string `json:"message"`
	Fix      string `json:"fix,omitempty"`
}

func fromFinding(f hostsetup.Finding) Reason {
	return Reason{Severity: f.Severity.String(), Message: f.Message, Fix: f.Fix}
}

// Result is one runtime's check.
type Result struct {
	Runtime   string               `json:"runtime"`
	Endpoint  string               `json:"endpoint"`
	Version   string               `json:"version,omitempty"`
	Canary    string               `json:"canary"`
	Verdict   string               `json:"verdict"`
	InPath    bool                 `json:"in_path"`
	PullError string               `json:"pull_error,omitempty"`
	Removed   bool                 `json:"canary_removed"`   // the pull succeeded and the canary is gone again
	Served    []adminapi.CanaryHit `json:"served,omitempty"` // what shoal recorded for the nonce
	Reasons   []Reason             `json:"reasons,omitempty"`
	Details   map[string]any       `json:"details,omitempty"`
	Seconds   float64              `json:"seconds"`
}

func (r *Result) add(sev, msg, fix string) {
	r.Reasons = append(r.Reasons, Reason{Severity: sev, Message: msg, Fix: fix})
}

func (r *Result) hasProblem() bool {
	for _, x := range r.Reasons {
		if x.Severity == "problem" {
			return true
		}
	}
	return false
}

// CanaryChecker asks the daemon whether it served a nonce (adminapi.Client).
type CanaryChecker interface {
	Canary(ctx context.Context, nonce string) (adminapi.Canary, error)
}

// Options say where the runtimes and shoal are.
type Options struct {
	Admin  CanaryChecker
	Mirror string // shoal's mirror URL, as the runtimes should reach it
	// Timeout bounds one runtime's canary pull; the whole check of a runtime ends within
	// Timeout plus a second.
	Timeout time.Duration

	CRIEndpoint       string // unix:///run/containerd/containerd.sock
	ContainerdAddress string // /run/containerd/containerd.sock
	Namespace         string // containerd namespace for the ctr-style pull (default "default")
	ContainerdConfig  string // config.toml to explain a bypass with
	HostsDir          string // where shoal's hosts.toml files are (setup's --hosts-dir; "" = config_path's first entry, else the default)
	DockerHost        string // unix:///var/run/docker.sock
	DockerRegistry    string // the registry the Docker canary names (default docker.io)
}

// NewNonce is a fresh canary tag.
func NewNonce() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "n" + hex.EncodeToString(b)
}

// Run checks one runtime.
func Run(ctx context.Context, runtime string, o Options) Result {
	start := time.Now()
	if o.Timeout <= 0 {
		o.Timeout = 4 * time.Second
	}
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	if o.DockerRegistry == "" {
		o.DockerRegistry = "docker.io"
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout+checkSlack)
	defer cancel()
	var r Result
	switch runtime {
	case CRI:
		r = checkCRI(ctx, o)
	case Containerd:
		r = checkContainerd(ctx, o)
	case Docker:
		r = checkDocker(ctx, o)
	default:
		r = Result{Runtime: runtime, Verdict: CheckFailed, PullError: "unknown runtime"}
	}
	r.Seconds = time.Since(start).Seconds()
	return r
}

// checkSlack is what a runtime's check may take on top of the pull's timeout: the runtime's
// version, the daemon's answer, the removal of the canary.
const checkSlack = 900 * time.Millisecond

// judge asks the daemon what it served for nonce and sets the verdict.
func (r *Result) judge(ctx context.Context, o Options, nonce string, pullErr error) error {
	if pullErr != nil {
		r.PullError = pullErr.Error()
	}
	// The daemon is local and answers at once, even when the pull used up the check's time.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	c, err := o.Admin.Canary(actx, nonce)
	if err != nil {
		r.Verdict = CheckFailed
		return err
	}
	r.Served = c.Hits
	switch {
	case c.Seen && pullErr == nil:
		r.Verdict, r.InPath = InPath, true
	case c.Seen:
		r.Verdict, r.InPath = InPathFailed, true
	default:
		r.Verdict = Bypassed
	}
	return nil
}

// listening dials a URL's host; nil when something accepts the connection.
func listening(ctx context.Context, u string) error {
	p, err := url.Parse(u)
	if err != nil {
		return err
	}
	host := p.Host
	if p.Port() == "" {
		port := "443"
		if p.Scheme == "http" {
			port = "80"
		}
		host = net.JoinHostPort(p.Hostname(), port)
	}
	// Its own short budget: the check's may be spent by a pull that timed out.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 300*time.Millisecond)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
	if err != nil {
		return err
	}
	return conn.Close()
}

// MirrorURL turns the daemon's listen address (status "listen") into a URL a runtime on this
// node would use: a wildcard host becomes loopback.
func MirrorURL(listen string, tls bool) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	scheme := "http"
	if tls {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

func short(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

var errTimeout = errors.New("timed out")

func timeoutErr(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w: %v", errTimeout, err)
	}
	return err
}

func hostOf(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	return p.Host
}

func joinQuoted(s []string) string { return strings.Join(s, ", ") }
