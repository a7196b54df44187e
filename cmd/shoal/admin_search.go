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

func searchCommand() *cli.Command {
	return &cli.Command{
		Name:      "search",
		Usage:     "search Docker Hub (or a registry's catalog) through the daemon: cached, rate-limited per client",
		ArgsUsage: "TERM",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "registry", Usage: "search this `REGISTRY`'s catalog instead of Docker Hub"},
			&cli.IntFlag{Name: "limit", Value: 25, Usage: "at most `N` results (1-100)"},
		},
		Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
			if err := needArgs(c, 1, "TERM"); err != nil {
				return err
			}
			res, err := cl.Search(ctx, strings.Join(posArgs(c), " "), c.String("registry"), c.Int("limit"))
			if err != nil {
				return err
			}
			if jsonOut(c) {
				return printJSON(os.Stdout, res)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tDESCRIPTION\tSTARS\tOFFICIAL")
			for _, r := range res.Results {
				off := ""
				if r.IsOfficial {
					off = "[OK]"
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", oneLine(r.Name, 60), oneLine(r.Description, 45), r.StarCount, off)
			}
			return w.Flush()
		}),
	}
}

// oneLine keeps a field from an upstream on one line of the table, cut to n runes (control
// characters, which could move the terminal's cursor, become spaces).
func oneLine(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
