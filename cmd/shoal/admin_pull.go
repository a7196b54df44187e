package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/shoal-mirror/shoal/adminapi"
)

func pullCommand() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "warm this node's cache (and so its peers') with images or files, through the daemon's own mirror",
		ArgsUsage: "IMAGE[:TAG|@DIGEST]|hf://ORG/NAME[@REV]|https://github.com/OWNER/REPO/releases/download/TAG/FILE...",
		Description: "Every platform of a multi-platform image is pulled unless --platform names one. On a terminal\n" +
			"each layer gets a progress bar; otherwise one line per manifest and layer is printed\n" +
			"(--json: the daemon's progress events, one JSON object per line).\n\n" +
			"--cluster warms every node of the swarm instead (or --nodes N of them, or --fraction F): this\n" +
			"node resolves the images, then the ask travels over P2P; each node pulls through the swarm,\n" +
			"so the upstream is paid about once. Progress is nodes done/selected and bytes fetched; Ctrl-C\n" +
			"cancels it on every node. See docs/preheat.md.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "platform", Usage: "only this platform of an index, `OS/ARCH[/VARIANT]`"},
			&cli.BoolFlag{Name: "cluster", Usage: "warm every node of the swarm, not only this one"},
			&cli.IntFlag{Name: "nodes", Usage: "with --cluster: only `N` nodes (chosen at random after counting the swarm)"},
			&cli.Float64Flag{Name: "fraction", Usage: "with --cluster: about this share `F` of the nodes, 0 < F ≤ 1"},
			&cli.StringSliceFlag{Name: "include", Usage: "hf:// only: files whose path or name matches `PATTERN` (repeatable; default all)"},
		},
		Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
			if err := needArgs(c, 1, "IMAGE"); err != nil {
				return err
			}
			req := adminapi.PullRequest{Images: posArgs(c), Platform: c.String("platform"), Include: c.StringSlice("include"), Cluster: c.Bool("cluster"),
				Nodes: c.Int("nodes"), Fraction: c.Float64("fraction")}
			if !req.Cluster && (c.IsSet("nodes") || c.IsSet("fraction")) {
				return cli.Exit("pull: --nodes and --fraction go with --cluster", exitUsage)
			}
			if c.IsSet("nodes") && req.Nodes < 1 || c.IsSet("fraction") && (req.Fraction <= 0 || req.Fraction > 1) {
				return cli.Exit("pull: --nodes must be at least 1 and --fraction in (0, 1]", exitUsage)
			}
			var r pullRenderer
			switch {
			case jsonOut(c):
				r = &jsonRenderer{enc: json.NewEncoder(os.Stdout)}
			case isTerminal(os.Stdout) && os.Getenv("TERM") != "dumb":
				w, h := termSize(os.Stdout)
				r = newBarRenderer(os.Stdout, w, h)
			default:
				r = &lineRenderer{w: os.Stdout}
			}
			done, err := cl.Pull(ctx, req, r.event)
			r.close()
			if err != nil {
				return err
			}
			if done.Errors > 0 {
				if cp := done.Cluster; cp != nil {
					for _, e := range cp.Errors {
						fmt.Fprintln(os.Stderr, "pull --cluster:", e)
					}
				}
				return cli.Exit(fmt.Sprintf("pull: %d error(s)", done.Errors), exitFailure)
			}
			return nil
		}),
	}
}

// pullRenderer shows a pull's progress events.
type pullRenderer interface {
	event(adminapi.PullEvent)
	close()
}

type jsonRenderer struct{ enc *json.Encoder }

func (r *jsonRenderer) event(ev adminapi.PullEvent) { _ = r.enc.Encode(ev) }
func (r *jsonRenderer) close()                      {}

// lineRenderer prints one line per finished step, for logs and pipes.
type lineRenderer struct {
	w       io.Writer
	cluster string // last cluster line printed (without bytes)
	bytes   int64
	printed time.Time
}

func (r *lineRenderer) event(ev adminapi.PullEvent) {
	switch {
	case ev.Type == adminapi.EventImage && ev.State == adminapi.StateError:
		fmt.Fprintf(r.w, "%s: error: %s\n", ev.Image, ev.Error)
	case ev.Type == adminapi.EventImage:
		fmt.Fprintf(r.w, "%s: resolved to %s (%s)\n", ev.Image, ev.Digest, ev.Source)
	case ev.Type == adminapi.EventManifest:
		fmt.Fprintf(r.w, "%s: manifest %s for %s (%s)\n", ev.Image, ev.Digest, ev.Platform, ev.Source)
	case ev.Type == adminapi.EventBlob && ev.State == adminapi.StateDone:
		fmt.Fprintf(r.w, "%s: %s %s %s from %s\n", ev.Image, ev.Kind, ev.Digest, humanBytes(ev.Size), ev.Source)
	case ev.Type == adminapi.EventBlob && ev.State == adminapi.StateError:
		fmt.Fprintf(r.w, "%s: %s %s failed: %s\n", ev.Image, ev.Kind, ev.Digest, ev.Error)
	case ev.Type == adminapi.EventCluster && ev.Cluster != nil:
		// A line each time a node finishes (or more nodes are reached), and while only bytes
		// move (a long first download) one every clusterLineEvery.
		line := clusterLine(ev.Cluster, false)
		if line != r.cluster || ev.Cluster.Bytes != r.bytes && time.Since(r.printed) >= clusterLineEvery {
			r.cluster, r.bytes, r.printed = line, ev.Cluster.Bytes, time.Now()
			fmt.Fprintln(r.w, clusterLine(ev.Cluster, true))
		}
	case ev.Type == adminapi.EventDone:
		fmt.Fprintln(r.w, doneLine(ev))
	}
}

// clusterLineEvery spaces out the plain output's cluster lines when only bytes move.
const clusterLineEvery = 5 * time.Second

// clusterLine says how far a cluster pull is: "cluster: 7/10 nodes done, 1.4 GiB fetched".
func clusterLine(c *adminapi.ClusterProgress, withBytes bool) string {
	s := fmt.Sprintf("cluster: %d/%d nodes done", c.Done, c.Selected)
	if c.Selected != c.Reached || c.Total > 0 {
		total := c.Reached
		if c.Total > 0 {
			total = c.Total
		}
		s += fmt.Sprintf(" (%d of %d nodes selected)", c.Selected, total)
	}
	if c.Failed > 0 {
		s += fmt.Sprintf(", %d failed", c.Failed)
	}
	if c.Unreached > 0 {
		s += fmt.Sprintf(", %d part(s) of the swarm unreached", c.Unreached)
	}
	if withBytes {
		s += ", " + humanBytes(c.Bytes) + " fetched"
	}
	return s
}

func (r *lineRenderer) close() {}

func doneLine(ev adminapi.PullEvent) string {
	s := fmt.Sprintf("pulled %d image(s): %d blobs, %s fetched", ev.Images, ev.Blobs, humanBytes(ev.Bytes))
	if c := ev.Cluster; c != nil {
		s = fmt.Sprintf("pulled %d image(s) on %d/%d nodes: %s fetched", ev.Images, c.Done, c.Selected, humanBytes(c.Bytes))
	}
	if ev.Errors > 0 {
		s += fmt.Sprintf(", %d error(s)", ev.Errors)
	}
	return s
}

// barRenderer redraws a block of lines on a terminal: one per image and manifest, and a
// progress bar per blob. Lines never wrap (they are cut to the terminal's width), so moving
// the cursor up by the number of lines drawn always returns to the block's start. When the
// block would not fit the screen, finished lines at its top are printed for good and leave it.
type barRenderer struct {
	w             io.Writer
	width, height int

	mu      sync.Mutex
	rows    []*barRow
	byKey   map[string]*barRow
	drawn   int // lines drawn last time
	last    time.Time
	footer  string
	cluster *barRow // a cluster pull's progress line
}

type barRow struct {
	text  string // static rows
	blob  bool
	kind  string
	dgst  string
	size  int64
	done  int64
	state string
	src   string
	err   string
}

func newBarRenderer(w io.Writer, width, height int) *barRenderer {
	return &barRenderer{w: w, width: width, height: height, byKey: map[string]*barRow{}}
}

func (row *barRow) finished() bool {
	return !row.blob || row.state == adminapi.StateDone || row.state == adminapi.StateError
}

func (r *barRenderer) event(ev adminapi.PullEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch ev.Type {
	case adminapi.EventImage:
		if ev.State == adminapi.StateError {
			r.rows = append(r.rows, &barRow{text: fmt.Sprintf("%s: error: %s", ev.Image, ev.Error)})
		} else {
			r.rows = append(r.rows, &barRow{text: fmt.Sprintf("%s: %s (%s)", ev.Image, shortDigest(ev.Digest), ev.Source)})
		}
	case adminapi.EventManifest:
		r.rows = append(r.rows, &barRow{text: fmt.Sprintf("  manifest %s %s (%s)", shortDigest(ev.Digest), ev.Platform, ev.Source)})
	case adminapi.EventBlob:
		key := ev.Image + " " + ev.Digest
		row := r.byKey[key]
		if row == nil {
			row = &barRow{blob: true, kind: ev.Kind, dgst: ev.Digest}
			r.byKey[key] = row
			r.rows = append(r.rows, row)
		}
		row.state, row.err = ev.State, ev.Error
		if ev.Size > 0 {
			row.size = ev.Size
		}
		if ev.Done > row.done {
			row.done = ev.Done
		}
		if ev.Source != "" {
			row.src = ev.Source
		}
	case adminapi.EventCluster:
		if ev.Cluster == nil {
			return
		}
		if r.cluster == nil {
			r.cluster = &barRow{}
			r.rows = append(r.rows, r.cluster)
		}
		r.cluster.text = clusterLine(ev.Cluster, true)
		if time.Since(r.last) < 100*time.Millisecond {
			return
		}
	case adminapi.EventDone:
		r.footer = doneLine(ev)
		r.drawLocked()
		return
	}
	// Redraw at most every 100 ms, but always when something finished.
	if ev.State == adminapi.StateProgress && time.Since(r.last) < 100*time.Millisecond {
		return
	}
	r.drawLocked()
}

func (r *barRenderer) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drawLocked()
}

func (r *barRenderer) drawLocked() {
	r.last = time.Now()
	var b strings.Builder
	if r.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", r.drawn)
	}
	lines := 0
	put := func(s string) {
		if rs := []rune(s); len(rs) > r.width-1 {
			s = string(rs[:r.width-1])
		}
		b.WriteString("\r\x1b[2K" + s + "\n")
		lines++
	}
	text := func(row *barRow) string {
		if !row.blob {
			return row.text
		}
		return row.render()
	}
	for len(r.rows) > max(r.height-2, 1) && r.rows[0].finished() {
		put(text(r.rows[0]))
		r.rows = r.rows[1:]
	}
	lines = 0 // what scrolled out above is not redrawn
	for _, row := range r.rows {
		put(text(row))
	}
	if r.footer != "" {
		put(r.footer)
	}
	r.drawn = lines
	_, _ = io.WriteString(r.w, b.String())
}

const barWidth = 30

func (row *barRow) render() string {
	frac := 0.0
	switch {
	case row.state == adminapi.StateDone:
		frac = 1
	case row.size > 0:
		frac = float64(row.done) / float64(row.size)
	}
	frac = min(max(frac, 0), 1)
	full := int(frac * barWidth)
	bar := strings.Repeat("=", full)
	if full < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-full-1)
	}
	status := ""
	switch row.state {
	case adminapi.StateDone:
		status = "done, from " + row.src
	case adminapi.StateError:
		status = "error: " + row.err
	case adminapi.StateStart:
		status = "waiting"
	default:
		status = row.src
	}
	done := row.done
	if row.state == adminapi.StateDone {
		done = row.size
	}
	return fmt.Sprintf("  %-6s %s [%s] %3.0f%% %10s / %-10s %s", row.kind, shortDigest(row.dgst), bar, 100*frac, humanBytes(done), humanBytes(row.size), status)
}
