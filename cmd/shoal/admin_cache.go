package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/shoal-mirror/shoal/adminapi"
)

func cacheCommand() *cli.Command {
	return &cli.Command{
		Name:  "cache",
		Usage: "inspect and manage the node's store",
		Subcommands: []*cli.Command{
			{
				Name:  "ls",
				Usage: "list stored content",
				Flags: []cli.Flag{&cli.StringFlag{Name: "sort", Value: "size", Usage: "`size` (largest first) or atime (most recently read first)"}},
				Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
					l, err := cl.CacheList(ctx, c.String("sort"))
					if err != nil {
						return err
					}
					if jsonOut(c) {
						return printJSON(os.Stdout, l)
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
					fmt.Fprintln(w, "DIGEST\tKIND\tSIZE\tREAD\tPINNED")
					for _, e := range l.Entries {
						pinned := ""
						if e.Pinned {
							pinned = "pinned"
						}
						if e.Local {
							pinned = strings.TrimPrefix(pinned+",local", ",")
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", e.Digest, e.Kind, humanBytes(e.Size), ago(e.Accessed), pinned)
					}
					fmt.Fprintf(w, "%d items, %s of %s\n", len(l.Entries), humanBytes(l.BytesUsed), humanBytes(l.MaxSize))
					return w.Flush()
				}),
			},
			{
				Name:      "rm",
				Usage:     "remove a digest, or an image with the content no other cached image uses",
				ArgsUsage: "DIGEST|IMAGE...",
				Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
					if err := needArgs(c, 1, "DIGEST or IMAGE"); err != nil {
						return err
					}
					var all []adminapi.RemoveResult
					for _, t := range posArgs(c) {
						r, err := cl.CacheRemove(ctx, t)
						if err != nil {
							return err
						}
						all = append(all, r)
						if !jsonOut(c) {
							fmt.Printf("removed %s: %d items, %s", t, len(r.Removed), humanBytes(r.Bytes))
							if len(r.Shared) > 0 {
								fmt.Printf(" (%d kept: used by other cached images)", len(r.Shared))
							}
							fmt.Println()
						}
					}
					if jsonOut(c) {
						return printJSON(os.Stdout, all)
					}
					return nil
				}),
			},
			{
				Name:  "gc",
				Usage: "run the store's sweep now (TTL, budget, free space, dangling tags)",
				Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
					r, err := cl.CacheGC(ctx)
					if err != nil {
						return err
					}
					if jsonOut(c) {
						return printJSON(os.Stdout, r)
					}
					var why []string
					for _, k := range sortedKeys(r.ByReason) {
						why = append(why, fmt.Sprintf("%s %d", k, r.ByReason[k]))
					}
					fmt.Printf("evicted %d items (%s)", r.Evicted, humanBytes(r.Bytes))
					if len(why) > 0 {
						fmt.Printf(": %s", strings.Join(why, ", "))
					}
					fmt.Printf("; %d dangling tags dropped\n", r.TagsDropped)
					return nil
				}),
			},
			{
				Name:  "verify",
				Usage: fmt.Sprintf("re-hash all content; what does not match its digest is removed (exit code %d if any)", exitDamaged),
				Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
					r, err := cl.CacheVerify(ctx)
					if err != nil {
						return err
					}
					if jsonOut(c) {
						if err := printJSON(os.Stdout, r); err != nil {
							return err
						}
					} else {
						fmt.Printf("checked %d items (%s): %d corrupt, %d missing\n", r.Checked, humanBytes(r.Bytes), len(r.Corrupt), len(r.Missing))
						for _, d := range r.Corrupt {
							fmt.Printf("corrupt, removed: %s\n", d)
						}
						for _, d := range r.Missing {
							fmt.Printf("missing, removed: %s\n", d)
						}
					}
					if n := len(r.Corrupt) + len(r.Missing); n > 0 {
						return cli.Exit("", exitDamaged)
					}
					return nil
				}),
			},
			pinCommand("pin", true),
			pinCommand("unpin", false),
		},
	}
}

func pinCommand(name string, pin bool) *cli.Command {
	usage := "protect a cached image (and everything it references) from eviction"
	if !pin {
		usage = "make a pinned image evictable again"
	}
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "IMAGE|DIGEST...",
		Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
			if err := needArgs(c, 1, "IMAGE"); err != nil {
				return err
			}
			var all []adminapi.PinResult
			for _, img := range posArgs(c) {
				r, err := cl.CachePin(ctx, img, pin)
				if err != nil {
					return err
				}
				all = append(all, r)
				if !jsonOut(c) {
					fmt.Printf("%sned %s (%s)\n", name, r.Image, r.Digest)
				}
			}
			if jsonOut(c) {
				return printJSON(os.Stdout, all)
			}
			return nil
		}),
	}
}
