package console

import (
	"fmt"
	"html/template"
	"strings"
	"time"

	"github.com/shoal-mirror/shoal/adminapi"
)

var funcs = template.FuncMap{
	"size":    size,
	"pct":     pct,
	"short":   short,
	"ago":     ago,
	"dur":     dur,
	"ms":      func(f float64) string { return fmt.Sprintf("%.1f ms", f) },
	"ratio":   func(f float64) string { return fmt.Sprintf("%.1f%%", f*100) },
	"pullRef": pullRef,
	"hubName": func(name string) string { return "docker.io/" + name },
	"imgRef":  func(reg, repo, tag string) string { return reg + "/" + repo + ":" + tag },
	"sources": func(s []string) string { return strings.Join(s, " → ") },
	"rateLeft": func(rl *adminapi.RateLimit) string {
		if rl == nil || rl.Remaining < 0 {
			return "not reported"
		}
		if rl.Limit >= 0 {
			return fmt.Sprintf("%d of %d", rl.Remaining, rl.Limit)
		}
		return fmt.Sprint(rl.Remaining)
	},
	"add": func(a, b int64) int64 { return a + b },
}

// size prints bytes in binary units, as `shoal status` does.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func pct(part, whole int64) string {
	if whole <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f%%", float64(part)*100/float64(whole))
}

// short cuts a digest or peer ID for a table cell (the full value is in the title).
func short(s string) string {
	if i := strings.IndexByte(s, ':'); i >= 0 && len(s) > i+13 {
		return s[:i+13]
	}
	if len(s) > 16 {
		return s[:6] + "…" + s[len(s)-6:]
	}
	return s
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return dur(time.Since(t).Seconds()) + " ago"
}

func dur(sec float64) string {
	d := time.Duration(sec) * time.Second
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// pullRef names a recorded decision's image for explain: registry/repo@digest.
func pullRef(d adminapi.Decision) string {
	return d.Registry + "/" + d.Repo + "@" + d.Digest
}
