package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/doctor"
)

// DoctorConfig is the daemon's own `shoal doctor` (config key doctor): given containerd's CRI
// socket, it pulls the canary through CRI every Interval and exports shoal_doctor_in_path. Off
// by default: the CRI socket is root-equivalent, and shoal needs no runtime socket otherwise.
type DoctorConfig struct {
	CRIEndpoint      string        // "" = off; unix:///run/containerd/containerd.sock
	Interval         time.Duration // between checks
	ContainerdConfig string        // containerd's config.toml, to explain a bypass in the log ("" = none)
}

func (c DoctorConfig) validate() error {
	if c.CRIEndpoint != "" && c.Interval < time.Second {
		return &ConfigError{Key: "doctor.interval", Err: fmt.Errorf("%s: want at least 1s", c.Interval)}
	}
	if c.CRIEndpoint != "" && !strings.HasPrefix(c.CRIEndpoint, "unix://") && !strings.HasPrefix(c.CRIEndpoint, "/") {
		return &ConfigError{Key: "doctor.cri_endpoint", Err: fmt.Errorf("%q: want unix:///path/to/containerd.sock", c.CRIEndpoint)}
	}
	return nil
}

// localCanary answers doctor's question from the mirror's own record (mirror.Mirror.Canary).
type localCanary func(nonce string) (adminapi.Canary, error)

func (c localCanary) Canary(_ context.Context, nonce string) (adminapi.Canary, error) {
	return c(nonce)
}

// startDoctor runs the periodic CRI check until ctx ends; stop waits for it.
func (d *Daemon) startDoctor(ctx context.Context, canary localCanary) (stop func()) {
	cfg := d.cfg.Doctor
	if cfg.CRIEndpoint == "" {
		return func() {}
	}
	gauge := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "shoal_doctor_in_path",
		Help: "1 when the last canary pull through the runtime (cri) went through this shoal, 0 when it bypassed shoal or failed (doctor.cri_endpoint).",
	}, []string{"runtime"})
	checks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "shoal_doctor_checks_total",
		Help: "Canary pulls made by the daemon's periodic doctor check, by runtime and verdict (in-path, in-path-failed, bypassed, runtime-missing, check-failed).",
	}, []string{"runtime", "verdict"})
	if d.metrics != nil {
		d.metrics.MustRegister(gauge, checks)
	}
	scheme := "http"
	if d.cfg.Guard.TLSCert != "" {
		scheme = "https"
	}
	o := doctor.Options{
		Admin: canary, Mirror: doctor.MirrorURL(d.Addr(), scheme == "https"), Timeout: 4 * time.Second,
		CRIEndpoint: cfg.CRIEndpoint, ContainerdConfig: orDash(cfg.ContainerdConfig),
	}
	log := d.log.With("component", "doctor", "runtime", doctor.CRI)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := ""
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		for {
			r := doctor.Run(ctx, doctor.CRI, o)
			if ctx.Err() != nil {
				return
			}
			checks.WithLabelValues(doctor.CRI, r.Verdict).Inc()
			v := 0.0
			if r.Verdict == doctor.InPath {
				v = 1
			}
			gauge.WithLabelValues(doctor.CRI).Set(v)
			if r.Verdict != last {
				attrs := []any{"verdict", r.Verdict, "canary", r.Canary, "seconds", r.Seconds}
				if r.PullError != "" {
					attrs = append(attrs, "pull_error", r.PullError)
				}
				for i, x := range r.Reasons {
					attrs = append(attrs, fmt.Sprintf("%s_%d", x.Severity, i), x.Message+fixSuffix(x.Fix))
				}
				if r.Verdict == doctor.InPath {
					log.Info("CRI pulls go through shoal", attrs...)
				} else {
					log.Warn("CRI pulls do not go through shoal", attrs...)
				}
				last = r.Verdict
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

func fixSuffix(fix string) string {
	if fix == "" {
		return ""
	}
	return " (fix: " + strings.ReplaceAll(fix, "\n", " / ") + ")"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
