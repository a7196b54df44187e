package console

import (
	"fmt"
	"html/template"
	"strings"

	"github.com/shoal-mirror/shoal/adminapi"
)

// sourceOrder is the stacking order of the chart, nearest source first.
var sourceOrder = []string{"store", "inflight", "peer", "designated", "upstream", "passthrough"}

// chart draws the last hour as stacked bars, one per minute, by source: answers or bytes. It
// is SVG made on the server: no script, no library, and the same in every browser.
func chart(tl adminapi.Timeline, bytes bool) template.HTML {
	const w, h, top, bottom, left = 600.0, 160.0, 8.0, 18.0, 44.0
	pick := func(m adminapi.TimelineMinute) map[string]int64 {
		if bytes {
			return m.Bytes
		}
		return m.Requests
	}
	var max int64
	for _, m := range tl.Minutes {
		var sum int64
		for _, v := range pick(m) {
			sum += v
		}
		max = max2(max, sum)
	}
	label := func(v int64) string {
		if bytes {
			return size(v)
		}
		return fmt.Sprint(v)
	}
	what := "answers"
	if bytes {
		what = "bytes"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" viewBox="0 0 %.0f %.0f" data-max="%d" data-kind="%s"><title>%s per minute by source, last hour</title>`, w, h, max, what, what)
	plotH := h - top - bottom
	fmt.Fprintf(&b, `<line class="axis" x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f"/>`, left, h-bottom, w, h-bottom)
	fmt.Fprintf(&b, `<text class="tick" x="%.0f" y="%.1f" text-anchor="end">%s</text>`, left-4, top+8, template.HTMLEscapeString(label(max)))
	fmt.Fprintf(&b, `<text class="tick" x="%.0f" y="%.1f" text-anchor="end">0</text>`, left-4, h-bottom)
	fmt.Fprintf(&b, `<text class="tick" x="%.0f" y="%.1f">−60 min</text><text class="tick" x="%.0f" y="%.1f" text-anchor="end">now</text>`, left, h-4, w, h-4)
	n := len(tl.Minutes)
	if n > 0 && max > 0 {
		bw := (w - left) / float64(n)
		for i, m := range tl.Minutes {
			vals := pick(m)
			y := h - bottom
			for _, s := range sourceOrder {
				v := vals[s]
				if v == 0 {
					continue
				}
				bh := plotH * float64(v) / float64(max)
				y -= bh
				fmt.Fprintf(&b, `<rect class="bar src-%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s %s: %s</title></rect>`,
					s, left+float64(i)*bw+0.5, y, bw-1, bh, m.Start.Local().Format("15:04"), s, template.HTMLEscapeString(label(v)))
			}
		}
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func max2(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}
