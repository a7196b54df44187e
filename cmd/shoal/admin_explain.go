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

func explainCommand() *cli.Command {
	return &cli.Command{
		Name:      "explain",
		Usage:     "where each blob of an image is (store, which peers provide it, upstream) and why recent pulls went where they went",
		ArgsUsage: "IMAGE|DIGEST",
		Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
			if err := needArgs(c, 1, "IMAGE or DIGEST"); err != nil {
				return err
			}
			e, err := cl.Explain(ctx, firstArg(c))
			if err != nil {
				return err
			}
			if jsonOut(c) {
				return printJSON(os.Stdout, e)
			}
			fmt.Printf("%s\n  digest   %s %s\n  resolved %s\n", e.Target, e.Digest, e.MediaType, e.Resolution)
			if !e.P2P {
				fmt.Println("  P2P disabled: misses go to the upstream")
			}
			fmt.Println()
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "KIND\tDIGEST\tPLATFORM\tSIZE\tNEXT FROM\tWHY\tPROVIDERS\tLAST")
			for _, b := range e.Blobs {
				plat := b.Platform
				if plat == "" {
					plat = "-"
				}
				prov := "-"
				if len(b.Providers) > 0 {
					var short []string
					for _, p := range b.Providers {
						short = append(short, shortPeer(p))
					}
					prov = strings.Join(short, ",")
				}
				last := "-"
				if b.Last != nil {
					last = fmt.Sprintf("%s %s", b.Last.Source, ago(b.Last.Time))
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.Kind, shortDigest(b.Digest), plat, humanBytes(b.Size), b.Next, b.Reason, prov, last)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if len(e.History) > 0 {
				fmt.Println("\nrecent decisions (newest first):")
				w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
				fmt.Fprintln(w, "WHEN\tKIND\tDIGEST\tREPOSITORY\tSOURCE\tWHY")
				for _, d := range e.History {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s/%s\t%s\t%s\n", d.Time.Local().Format("15:04:05"), d.Kind, shortDigest(d.Digest), d.Registry, d.Repo, d.Source, d.Reason)
				}
				return w.Flush()
			}
			return nil
		}),
	}
}

// shortPeer shortens a peer ID for tables: the last 8 characters are what tells peers apart
// (they all share the "12D3KooW" prefix).
func shortPeer(id string) string {
	if len(id) <= 12 {
		return id
	}
	return "…" + id[len(id)-8:]
}
