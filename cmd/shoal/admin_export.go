package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/shoal-mirror/shoal/adminapi"
)

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write images to a tarball that `docker load` and `ctr image import` accept (an offline bundle)",
		ArgsUsage: "IMAGE...",
		Description: "The tarball is an OCI image layout with a Docker manifest.json beside it. Multi-platform images\n" +
			"keep their index and the content of --platform (default: the daemon's platform), or of every\n" +
			"platform with --all-platforms. Content comes through the daemon's mirror, so exporting also\n" +
			"warms the cache.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write the tarball to `FILE` (\"-\" for standard output); required"},
			&cli.StringFlag{Name: "platform", Usage: "platform of multi-platform images, `OS/ARCH[/VARIANT]`"},
			&cli.BoolFlag{Name: "all-platforms", Usage: "include every platform of multi-platform images"},
		},
		Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
			if err := needArgs(c, 1, "IMAGE"); err != nil {
				return err
			}
			out := c.String("output")
			if out == "" {
				return cli.Exit("export: name the tarball with -o FILE (or -o - for standard output)", exitUsage)
			}
			if out == "-" && isTerminal(os.Stdout) {
				return cli.Exit("export: refusing to write a tarball to a terminal; use -o FILE or a pipe", exitUsage)
			}
			body, err := cl.Export(ctx, adminapi.ExportRequest{Images: posArgs(c), Platform: c.String("platform"), AllPlatforms: c.Bool("all-platforms")})
			if err != nil {
				return err
			}
			defer body.Close()
			var n int64
			if out == "-" {
				n, err = io.Copy(os.Stdout, body)
				if err != nil {
					return fmt.Errorf("export: the tarball was cut short after %d bytes (see the daemon's log): %w", n, err)
				}
			} else if n, err = writeAtomically(out, body); err != nil {
				return err
			}
			res := struct {
				File   string   `json:"file"`
				Bytes  int64    `json:"bytes"`
				Images []string `json:"images"`
			}{out, n, posArgs(c)}
			switch {
			case jsonOut(c):
				return printJSON(os.Stderr, res)
			case out != "-":
				fmt.Printf("wrote %s (%s, %d image(s))\n", out, humanBytes(n), len(res.Images))
			}
			return nil
		}),
	}
}

// writeAtomically writes r to path through a temporary file renamed at the end, so that a
// broken transfer never leaves a plausible-looking tarball behind.
func writeAtomically(path string, r io.Reader) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.partial")
	if err != nil {
		return 0, fmt.Errorf("export: %w", err)
	}
	tmp := f.Name()
	n, err := io.Copy(f, r)
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return n, fmt.Errorf("export: the tarball was cut short after %d bytes (see the daemon's log): %w", n, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return n, fmt.Errorf("export: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return n, fmt.Errorf("export: %w", err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		os.Remove(tmp)
		return n, fmt.Errorf("export: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return n, fmt.Errorf("export: %w", err)
	}
	return n, nil
}
