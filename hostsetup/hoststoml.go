package hostsetup

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// A hosts.toml file is edited as text, so that the user's comments, formatting and the order of
// their [host."…"] tables stay exactly as written. The file is cut into a preamble (the root
// keys: server, capabilities, ca, …) and one section per table header; a section starts at the
// comment lines directly above its header and ends where the next section starts.

// tomlSection is one table of a TOML file.
type tomlSection struct {
	start int      // offset of the section's first byte (its leading comment lines included)
	key   []string // the table's key parts: ["host", "http://…"] or ["host", "http://…", "header"]
}

// splitSections finds the table sections of b with the TOML parser (a line-based scan would be
// fooled by multi-line arrays and strings). It also decodes b completely, as containerd does, so
// an invalid file is reported here rather than silently ignored by containerd.
func splitSections(b []byte) ([]tomlSection, error) {
	var anyDoc map[string]any
	if err := toml.Unmarshal(b, &anyDoc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return nil, fmt.Errorf("line %d, column %d: %s", row, col, de.Error())
		}
		return nil, err
	}
	var p unstable.Parser
	p.Reset(b)
	var out []tomlSection
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.Table && e.Kind != unstable.ArrayTable {
			continue
		}
		var parts []string
		offset := -1
		for it := e.Key(); it.Next(); {
			n := it.Node()
			if offset < 0 {
				offset = int(n.Raw.Offset)
			}
			parts = append(parts, string(n.Data))
		}
		if offset < 0 {
			continue
		}
		out = append(out, tomlSection{start: sectionStart(b, offset), key: parts})
	}
	if err := p.Error(); err != nil {
		return nil, err
	}
	return out, nil
}

// sectionStart moves from a table header's key back to the start of its line, then over the
// comment lines right above it (a blank line ends the walk): those comments describe the table.
func sectionStart(b []byte, offset int) int {
	start := bytes.LastIndexByte(b[:offset], '\n') + 1
	for start > 0 {
		prev := bytes.LastIndexByte(b[:start-1], '\n') + 1
		line := bytes.TrimSpace(b[prev : start-1])
		if len(line) == 0 || line[0] != '#' {
			break
		}
		start = prev
	}
	return start
}

// hostID is how containerd identifies a [host."…"] entry: scheme, host and API path.
type hostID struct{ scheme, host, path string }

// canon folds repeated leading slashes: containerd turns "http://h:5000/" into the path "//v2",
// which is the same server as "/v2" for a user who meant shoal.
func (h hostID) canon() hostID {
	h.path = "/" + strings.TrimLeft(h.path, "/")
	return h
}

// parseHostID reads a host key the way containerd's parseHostConfig does (a missing scheme
// means https, the path gets /v2 appended); override_path is not considered.
func parseHostID(s string) (hostID, error) {
	if !strings.HasPrefix(s, "http") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return hostID{}, err
	}
	p := "/v2"
	if u.Path != "" {
		p = path.Clean(u.Path)
		if !strings.HasSuffix(p, "/v2") {
			p += "/v2"
		}
	}
	return hostID{scheme: u.Scheme, host: strings.ToLower(u.Host), path: p}, nil
}

// mirrorBlock is the section setup writes for shoal. Its comment line is part of the section,
// so removing and re-inserting it is a fixed point (setup is idempotent).
func mirrorBlock(mirror string) string {
	return "# shoal, the node-local mirror, is tried first (`shoal setup containerd --uninstall` removes it).\n" +
		fmt.Sprintf("[host.%s]\n", tomlQuote(mirror)) +
		"  capabilities = [\"pull\", \"resolve\"]\n"
}

// tomlQuote writes s as a TOML basic string. Mirror URLs are validated to printable ASCII
// without quotes or backslashes, so no escaping is needed beyond the quotes.
func tomlQuote(s string) string { return `"` + s + `"` }

// isMirrorSection reports whether a section belongs to the [host."<mirror>"] entry (its
// sub-tables such as .header included).
func isMirrorSection(s tomlSection, mirror hostID) bool {
	if len(s.key) < 2 || s.key[0] != "host" {
		return false
	}
	id, err := parseHostID(s.key[1])
	return err == nil && id.canon() == mirror.canon()
}

// withoutMirror removes every section of the mirror's host entry from b.
func withoutMirror(b []byte, secs []tomlSection, mirror hostID) []byte {
	var out []byte
	prev := 0
	for i, s := range secs {
		if !isMirrorSection(s, mirror) {
			continue
		}
		end := len(b)
		if i+1 < len(secs) {
			end = secs[i+1].start
		}
		out = append(out, b[prev:s.start]...)
		prev = end
	}
	return append(out, b[prev:]...)
}

// mergeHostsTOML returns b with shoal's host entry first among the [host] tables and every other
// byte of b kept. b must be a valid hosts.toml.
func mergeHostsTOML(b []byte, mirror string) ([]byte, error) {
	id, err := parseHostID(mirror)
	if err != nil {
		return nil, err
	}
	secs, err := splitSections(b)
	if err != nil {
		return nil, err
	}
	rest := withoutMirror(b, secs, id)
	if secs, err = splitSections(rest); err != nil {
		return nil, fmt.Errorf("after removing the old shoal entry: %w", err)
	}
	block := mirrorBlock(mirror)
	for _, s := range secs {
		if len(s.key) >= 2 && s.key[0] == "host" {
			out := append([]byte{}, rest[:s.start]...)
			out = append(out, block+"\n"...)
			return append(out, rest[s.start:]...), nil
		}
	}
	// No other host: the entry goes last, after one blank line.
	out := bytes.TrimRight(rest, " \t\r\n")
	if len(out) > 0 {
		out = append(out, "\n\n"...)
	}
	return append(out, block...), nil
}

// stripHostsTOML returns b without shoal's host entry, and whether there was one.
func stripHostsTOML(b []byte, mirror string) ([]byte, bool, error) {
	id, err := parseHostID(mirror)
	if err != nil {
		return nil, false, err
	}
	secs, err := splitSections(b)
	if err != nil {
		return nil, false, err
	}
	out := withoutMirror(b, secs, id)
	return out, len(out) != len(b), nil
}
