package main

import (
	"slices"
	"strings"
	"testing"
)

func TestHoistFlags(t *testing.T) {
	ops := operatorCommands()
	cases := []struct{ in, want string }{
		{"shoal export a b -o x.tar", "shoal export -o x.tar a b"},
		{"shoal --admin unix:/s export a --platform linux/arm64 -o=x --all-platforms", "shoal --admin unix:/s export --platform linux/arm64 -o=x --all-platforms a"},
		{"shoal cache ls --sort atime --json", "shoal cache ls --sort atime --json"},
		{"shoal cache rm sha256:abc --json", "shoal cache rm --json sha256:abc"},
		{"shoal pull img -- --weird", "shoal pull img -- --weird"},
		{"shoal daemon --listen x extra", "shoal daemon --listen x extra"}, // not an operator command
		{"shoal", "shoal"},
	}
	for _, c := range cases {
		got := strings.Join(hoistFlags(ops, strings.Fields(c.in)), " ")
		if got != c.want {
			t.Errorf("hoistFlags(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// Operator commands print one line and exit 3 when no daemon answers; an unknown command is a
// usage error (2), never 3.
func TestOperatorExitCodesWithoutDaemon(t *testing.T) {
	sock := "unix:" + t.TempDir() + "/admin.sock"
	for _, args := range [][]string{{"status"}, {"peers"}, {"cache", "ls"}, {"cache", "gc"}, {"pull", "x"}, {"explain", "x"}, {"export", "x", "-o", t.TempDir() + "/x.tar"}} {
		out, code := run(t, []string{"SHOAL_ADMIN=" + sock}, args...)
		if code != exitUnreachable || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "cannot reach the shoal daemon") {
			t.Errorf("shoal %v: exit %d, output:\n%s", args, code, out)
		}
	}
	if out, code := run(t, nil, "no-such-command"); code != exitUsage {
		t.Errorf("unknown command: exit %d\n%s", code, out)
	}
	if out, code := run(t, nil, "completion", "fish"); code != exitUsage {
		t.Errorf("completion fish: exit %d\n%s", code, out)
	}
	if out, code := run(t, []string{"SHOAL_ADMIN=" + sock}, "version"); code != 0 || !slices.Contains(strings.Fields(out), "shoal") {
		t.Errorf("version without a daemon: exit %d\n%s", code, out)
	}
}
