package hostsetup

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// --edit-config changes containerd's config.toml as text, exactly as the printed config_path fix
// says (check, setConfigPath), so that the user's comments, layout and order stay; the decoded
// result is compared with the original to prove that config_path is the only thing that changed.

// createdConfig is the config.toml that setup writes when there is none (the "write FILE with:"
// fix): containerd merges it with its built-in defaults.
func createdConfig(version int, section, want string) []byte {
	return []byte(fmt.Sprintf("version = %d\n%s\n  config_path = %s\n", version, section, tomlQuote(want)))
}

// editConfigPath returns the file with config_path = want, changed as setConfigPath prints the
// fix: the config_path line replaced, one line inserted under the existing table, or the table
// appended; every other byte is kept. An inline registry table is left to the user, as the
// printed fix does. The result must parse, set config_path to want and decode to the same
// configuration otherwise.
func (c *containerdConfig) editConfigPath(want string) ([]byte, error) {
	if c.invalid != nil {
		return nil, fmt.Errorf("the file does not parse: %w", c.invalid)
	}
	if !c.exists {
		return createdConfig(c.version, c.registrySection, want), nil
	}
	lines := strings.Split(string(c.raw), "\n") // the last element is "" when the file ends in a newline
	// eol keeps a CRLF file's line ends.
	eol := func(n int) string {
		if strings.HasSuffix(lines[n-1], "\r") {
			return "\r"
		}
		return ""
	}
	w := c.where
	var out string
	switch {
	case w.keyLine > 0:
		lines[w.keyLine-1] = w.keyText + "= " + tomlQuote(want) + eol(w.keyLine)
		out = strings.Join(lines, "\n")
	case w.inlineLine > 0:
		return nil, fmt.Errorf("%s is an inline table (line %d): set config_path = %s in it by hand",
			trimBrackets(c.registrySection), w.inlineLine, tomlQuote(want))
	case w.tableLine > 0:
		line := indentOf(lines[w.tableLine-1]) + "  " + w.relKey + " = " + tomlQuote(want) + eol(w.tableLine)
		out = strings.Join(slices.Insert(lines, w.tableLine, line), "\n")
	case w.beforeLine > 0:
		line := indentOf(lines[w.beforeLine-1]) + w.relKey + " = " + tomlQuote(want) + eol(w.beforeLine)
		out = strings.Join(slices.Insert(lines, w.beforeLine-1, line), "\n")
	default:
		out = string(c.raw)
		if out != "" && !strings.HasSuffix(out, "\n") {
			out += "\n"
		}
		out += "\n" + c.registrySection + "\n  config_path = " + tomlQuote(want) + "\n"
	}
	edited := parseContainerdConfig([]byte(out))
	switch {
	case edited.invalid != nil:
		return nil, fmt.Errorf("the edited file would not parse (%v): set config_path by hand", edited.invalid)
	case edited.configPath != want:
		return nil, fmt.Errorf("the edited file would set config_path = %q, not %q: set it by hand", edited.configPath, want)
	}
	if same, err := sameButConfigPath(c.raw, []byte(out), c.registryKey); err != nil || !same {
		return nil, fmt.Errorf("the edit would change more than config_path (%v): set it by hand", err)
	}
	return []byte(out), nil
}

// revertConfigPath returns the file (which sets config_path, as setup left it) with config_path
// as orig, the file before setup, had it: orig's line back in place of setup's, or setup's line
// removed, with the table setup appended when nothing was added to it since. The rest of the
// file, and any later edit of it, stays.
func (c *containerdConfig) revertConfigPath(orig *containerdConfig) ([]byte, error) {
	w := c.where
	if c.invalid != nil || w.keyLine == 0 {
		return nil, errors.New("config_path is not on a line of its own")
	}
	lines := strings.Split(string(c.raw), "\n")
	if orig.where.keyLine > 0 {
		lines[w.keyLine-1] = orig.lines[orig.where.keyLine-1]
	} else {
		lines = slices.Delete(lines, w.keyLine-1, w.keyLine)
		h := w.keyLine - 2 // the line above the removed one
		appended := orig.where.tableLine == 0 && orig.where.inlineLine == 0 && orig.where.beforeLine == 0
		if appended && h >= 0 && strings.TrimSpace(lines[h]) == c.registrySection && strings.TrimSpace(strings.Join(lines[h+1:], "")) == "" {
			if h > 0 && strings.TrimSpace(lines[h-1]) == "" {
				h-- // the blank line setup put before the table
			}
			lines = append(lines[:h], "")
		}
	}
	out := []byte(strings.Join(lines, "\n"))
	reverted := parseContainerdConfig(out)
	if reverted.invalid != nil || reverted.configPath != orig.configPath || reverted.hasConfigPath != orig.hasConfigPath {
		return nil, fmt.Errorf("reverting config_path would give config_path = %q (%v)", reverted.configPath, reverted.invalid)
	}
	if same, err := sameButConfigPath(c.raw, out, c.registryKey); err != nil || !same {
		return nil, fmt.Errorf("reverting would change more than config_path (%v)", err)
	}
	return out, nil
}

// sameButConfigPath reports whether two config files decode to the same configuration once the
// registry table's config_path and empty tables are left out.
func sameButConfigPath(a, b []byte, registry []string) (bool, error) {
	var da, db map[string]any
	if err := toml.Unmarshal(a, &da); err != nil {
		return false, err
	}
	if err := toml.Unmarshal(b, &db); err != nil {
		return false, err
	}
	dropConfigPath(da, registry)
	dropConfigPath(db, registry)
	return reflect.DeepEqual(da, db), nil
}

// dropConfigPath deletes registry.config_path from doc, then every empty table (an empty table
// configures nothing, and the edit may have added the tables on the way to config_path).
func dropConfigPath(doc map[string]any, registry []string) {
	t := doc
	for _, k := range registry {
		next, ok := t[k].(map[string]any)
		if !ok {
			t = nil
			break
		}
		t = next
	}
	if t != nil {
		delete(t, "config_path")
	}
	pruneEmpty(doc)
}

// pruneEmpty deletes the tables of m that hold nothing but empty tables.
func pruneEmpty(m map[string]any) {
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			pruneEmpty(sub)
			if len(sub) == 0 {
				delete(m, k)
			}
		}
	}
}
