package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/daemon"
)

// Exit codes of the operator commands, for scripts (docs/operations.md).
const (
	exitFailure     = 1 // the operation failed (the message says why)
	exitUsage       = 2 // bad flags, arguments or configuration
	exitUnreachable = 3 // no daemon answers on the admin address
	exitNotFound    = 4 // the image, digest or peer is unknown to the daemon
	exitDamaged     = 5 // cache verify found (and removed) content that did not match its digest
)

// defaultAdminAddr is the daemon's default socket: <data dir>/admin.sock, the data dir found
// the way the daemon finds it: SHOAL_DATA_DIR when set, else /var/lib/shoal, or, for a user
// who cannot write that, the per-user one ($XDG_STATE_HOME/shoal, ~/.local/state/shoal) when a
// daemon of theirs made a socket there.
func defaultAdminAddr() string {
	dir := os.Getenv("SHOAL_DATA_DIR")
	if dir == "" {
		dir = daemon.SystemDataDir
		if user, err := daemon.UserDataDir(); err == nil && !daemon.SystemDataDirWritable() {
			if _, err := os.Stat(filepath.Join(user, adminapi.DefaultSocketName)); err == nil {
				dir = user
			}
		}
	}
	return "unix:" + filepath.Join(dir, adminapi.DefaultSocketName)
}

// clientFlags are on the app and on every operator command, so that both `shoal --json
// status` and `shoal status --json` work.
func clientFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "admin", EnvVars: env("ADMIN"), Usage: "admin API of the daemon: `ADDR` = unix:/path/admin.sock or HOST:PORT (default unix:$SHOAL_DATA_DIR/admin.sock, else unix:/var/lib/shoal/admin.sock, else, for a user who cannot write /var/lib/shoal, the one in $XDG_STATE_HOME/shoal or ~/.local/state/shoal)"},
		&cli.BoolFlag{Name: "json", Usage: "print JSON instead of text"},
	}
}

// withClientFlags adds clientFlags to a command and its subcommands, and turns usage errors
// into exit code 2.
func withClientFlags(cmd *cli.Command) *cli.Command {
	cmd.Flags = append(cmd.Flags, clientFlags()...)
	if cmd.OnUsageError == nil {
		cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return cli.Exit(cmd.Name+": "+err.Error(), exitUsage) }
	}
	for _, sub := range cmd.Subcommands {
		withClientFlags(sub)
	}
	return cmd
}

// lineageString returns the first non-empty value set for a flag from the command up to the
// app (an empty SHOAL_ADMIN counts as unset).
func lineageString(c *cli.Context, name string) string {
	for _, cc := range c.Lineage() {
		if cc.IsSet(name) && cc.String(name) != "" {
			return cc.String(name)
		}
	}
	return ""
}

// posArgs are the positional arguments. urfave/cli stops parsing flags at the first
// argument; --json is common enough at the end of a line ("shoal explain IMG --json") to be
// honoured there too.
func posArgs(c *cli.Context) []string {
	var out []string
	for _, a := range c.Args().Slice() {
		if a != "--json" {
			out = append(out, a)
		}
	}
	return out
}

func firstArg(c *cli.Context) string {
	if a := posArgs(c); len(a) > 0 {
		return a[0]
	}
	return ""
}

func jsonOut(c *cli.Context) bool {
	for _, a := range c.Args().Slice() {
		if a == "--json" {
			return true
		}
	}
	for _, cc := range c.Lineage() {
		if cc.IsSet("json") {
			return cc.Bool("json")
		}
	}
	return false
}

func adminClient(c *cli.Context) (*adminapi.Client, error) {
	addr := lineageString(c, "admin")
	if addr == "" {
		addr = defaultAdminAddr()
	}
	cl, err := adminapi.NewClient(addr)
	if err != nil {
		return nil, cli.Exit(err.Error(), exitUsage)
	}
	return cl, nil
}

// hoistFlags moves the flags of an operator command that follow its arguments in front of
// them: urfave/cli stops parsing flags at the first argument, and `shoal export IMG -o FILE`
// is how people type. Other commands' arguments are left alone.
func hoistFlags(cmds []*cli.Command, args []string) []string {
	if len(args) < 2 {
		return args
	}
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") { // global flags
		if args[i] == "--admin" || args[i] == "-admin" {
			i++
		}
		i++
	}
	var cmd *cli.Command
	for list := cmds; i < len(args); {
		var next *cli.Command
		for _, c := range list {
			if c.HasName(args[i]) {
				next = c
			}
		}
		if next == nil {
			break
		}
		cmd, list = next, next.Subcommands
		i++
	}
	if cmd == nil {
		return args
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	var flags, pos []string
	for j := i; j < len(args); j++ {
		a := args[j]
		switch {
		case a == "--":
			pos = append(pos, args[j:]...)
			j = len(args)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			flags = append(flags, a)
			name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !hasValue && takesValue[name] && j+1 < len(args) {
				j++
				flags = append(flags, args[j])
			}
		default:
			pos = append(pos, a)
		}
	}
	out := append([]string{}, args[:i]...)
	return append(append(out, flags...), pos...)
}

// cmdContext is cancelled by Ctrl-C or SIGTERM.
func cmdContext(c *cli.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
}

// exitFor turns an admin API error into a one-line message and an exit code.
func exitFor(err error) error {
	var ue *adminapi.UnreachableError
	var ae *adminapi.APIError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ue):
		return cli.Exit(fmt.Sprintf("%v (is `shoal daemon` running? point --admin or SHOAL_ADMIN at its admin_listen)", ue), exitUnreachable)
	case errors.As(err, &ae):
		switch ae.Code {
		case adminapi.CodeNotFound:
			return cli.Exit(ae.Message, exitNotFound)
		case adminapi.CodeBadRequest:
			return cli.Exit(ae.Message, exitUsage)
		}
		return cli.Exit(ae.Message, exitFailure)
	case errors.Is(err, context.Canceled):
		return cli.Exit("interrupted", exitFailure)
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return err
	}
	return cli.Exit(err.Error(), exitFailure)
}

// adminAction wraps an operator command: client, context, and error mapping.
func adminAction(fn func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		cl, err := adminClient(c)
		if err != nil {
			return err
		}
		ctx, cancel := cmdContext(c)
		defer cancel()
		return exitFor(fn(c, ctx, cl))
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// needArgs checks the number of positional arguments.
func needArgs(c *cli.Context, min int, what string) error {
	if len(posArgs(c)) < min {
		return cli.Exit(fmt.Sprintf("%s: missing %s (see `shoal %s --help`)", c.Command.FullName(), what, c.Command.FullName()), exitUsage)
	}
	return nil
}

// ---- formatting ----

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func humanDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return humanDuration(time.Since(t)) + " ago"
}

// shortDigest keeps the algorithm and 12 hex digits, like docker does for image IDs.
func shortDigest(d string) string {
	alg, hex, ok := strings.Cut(d, ":")
	if !ok || len(hex) <= 12 {
		return d
	}
	return alg + ":" + hex[:12]
}

// isTerminal reports whether f is a terminal (the TCGETS ioctl succeeds, as
// golang.org/x/term's IsTerminal does on Linux).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// termSize is the terminal's width and height, 80×24 if unknown.
func termSize(f *os.File) (int, int) {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 || ws.Row == 0 {
		return 80, 24
	}
	return int(ws.Col), int(ws.Row)
}
