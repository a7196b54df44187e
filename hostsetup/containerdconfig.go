package hostsetup

import (
	"bytes"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// containerdConfig is what the checks need from containerd's config.toml, and where in the file
// it is, so that a fix can name the line to change.
type containerdConfig struct {
	exists  bool
	invalid error    // the file does not parse (containerd would not start either)
	version int      // the file's `version` (1 when absent or 0, as containerd reads it)
	raw     []byte   // the file as read
	lines   []string // the file, line by line (no line ends)

	registryKey     []string // the table that holds config_path for this version
	registrySection string   // registryKey as a TOML header, for messages
	imagesSection   string   // where use_local_image_pull lives (version ≥ 3)
	configPath      string
	hasConfigPath   bool
	mirrors         []string // registries named under registry.mirrors
	useLocalPull    bool
	where           configPathSite
	// wantsSet is set by check when its fix sets config_path (setConfigPath): what
	// --edit-config applies.
	wantsSet bool
}

// configPathSite is where config_path is, or can go, in the file (line numbers from 1; 0 = none).
type configPathSite struct {
	keyLine    int    // the line that sets config_path
	keyText    string // that line up to its "=" ("    config_path ", "  registry.config_path ")
	tableLine  int    // the header of the table in which config_path can be set with relKey
	tableText  string // that header as written
	relKey     string // config_path's key relative to that table ("config_path", "registry.config_path")
	inlineLine int    // the registry table is an inline table on this line (edit by hand)
	// beforeLine: the registry table is defined through dotted keys in the root table, first on
	// this line; config_path can go on a line of its own before it, with relKey.
	beforeLine int
}

// registryKeys are where each config version keeps the CRI registry settings, as TOML keys.
var registryKeys = map[int][]string{
	1: {"plugins", "cri", "registry"},
	2: {"plugins", "io.containerd.grpc.v1.cri", "registry"},
	3: {"plugins", "io.containerd.cri.v1.images", "registry"},
}

// readContainerdConfig reads containerd's config.toml; a missing file is not an error.
func readContainerdConfig(path string) (*containerdConfig, error) {
	b, err := readOptional(path)
	if err != nil {
		return nil, err
	}
	return parseContainerdConfig(b), nil
}

// parseContainerdConfig reads the content of a config.toml; nil is a missing file.
func parseContainerdConfig(b []byte) *containerdConfig {
	c := &containerdConfig{version: 1}
	if b == nil {
		c.setVersion(1)
		return c
	}
	c.exists, c.raw = true, b
	c.lines = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	var doc map[string]any
	if err := toml.Unmarshal(b, &doc); err != nil {
		c.invalid = err
		return c
	}
	if v, ok := doc["version"].(int64); ok && v > 1 {
		c.version = int(v)
	}
	c.setVersion(c.version)
	images := doc // the table above registry: plugins.<CRI plugin>
	for _, k := range c.registryKey[:len(c.registryKey)-1] {
		images, _ = images[k].(map[string]any)
	}
	if c.version >= 3 {
		c.useLocalPull, _ = images["use_local_image_pull"].(bool)
	}
	registry, _ := images["registry"].(map[string]any)
	c.configPath, c.hasConfigPath = registry["config_path"].(string)
	mirrors, _ := registry["mirrors"].(map[string]any)
	for name := range mirrors {
		c.mirrors = append(c.mirrors, name)
	}
	slices.Sort(c.mirrors)
	c.where = locateConfigPath(b, c.registryKey)
	return c
}

// setVersion picks the tables that a config of version v uses.
func (c *containerdConfig) setVersion(v int) {
	c.registryKey = registryKeys[min(max(v, 1), 3)]
	c.registrySection = tomlHeader(c.registryKey)
	if v >= 3 {
		c.imagesSection = tomlHeader(c.registryKey[:2])
	}
}

// locateConfigPath finds, with the TOML parser, the line that sets the key registry+config_path,
// or else the table header under which a config_path line can be added without redefining a
// table (containerd refuses a file that defines a table twice).
func locateConfigPath(b []byte, registry []string) configPathSite {
	var (
		site      configPathSite
		p         unstable.Parser
		table     []string // the current table's key
		tableLine int
		tableText string
	)
	want := append(slices.Clone(registry), "config_path")
	// lineAt is the number and the text of the line that holds offset off.
	lineAt := func(off uint32) (int, string) {
		start := bytes.LastIndexByte(b[:off], '\n') + 1
		text, _, _ := strings.Cut(string(b[start:]), "\n")
		return bytes.Count(b[:off], []byte("\n")) + 1, strings.TrimSuffix(text, "\r")
	}
	p.Reset(b)
	for p.NextExpression() {
		e := p.Expression()
		key, off := keyParts(e)
		if key == nil {
			continue
		}
		line, text := lineAt(off)
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table, tableLine, tableText = key, line, strings.TrimSpace(text)
			if slices.Equal(key, registry) {
				site.tableLine, site.tableText, site.relKey = tableLine, tableText, "config_path"
			}
		case unstable.KeyValue:
			full := append(slices.Clone(table), key...)
			switch {
			case slices.Equal(full, want):
				if k, _, ok := strings.Cut(text, "="); ok {
					site.keyLine, site.keyText = line, k
				}
			case slices.Equal(full, registry):
				site.inlineLine = line
			case len(full) > len(registry) && slices.Equal(full[:len(registry)], registry) && site.tableLine == 0 &&
				len(table) < len(registry) && tableLine > 0:
				// registry is defined through dotted keys (registry.mirrors… = …) in this table
				site.tableLine, site.tableText = tableLine, tableText
				site.relKey = tomlKey(append(slices.Clone(registry[len(table):]), "config_path"))
			case len(full) > len(registry) && slices.Equal(full[:len(registry)], registry) && site.tableLine == 0 &&
				tableLine == 0 && site.beforeLine == 0:
				// registry is defined through dotted keys in the root table (before any header): a
				// key line before that one stays in the root table (an expression starts its line)
				site.beforeLine = line
				site.relKey = tomlKey(append(slices.Clone(registry), "config_path"))
			}
		}
	}
	return site
}

// keyParts returns an expression's key and the offset of its first part.
func keyParts(e *unstable.Node) ([]string, uint32) {
	var parts []string
	var off uint32
	for it := e.Key(); it.Next(); {
		n := it.Node()
		if parts == nil {
			off = n.Raw.Offset
		}
		parts = append(parts, string(n.Data))
	}
	return parts, off
}

var bareKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// tomlKey writes a dotted key, quoting the parts that need it.
func tomlKey(parts []string) string {
	q := make([]string, len(parts))
	for i, p := range parts {
		if bareKey.MatchString(p) {
			q[i] = p
		} else {
			q[i] = "'" + p + "'"
		}
	}
	return strings.Join(q, ".")
}

func tomlHeader(parts []string) string { return "[" + tomlKey(parts) + "]" }

// hostsPaths is config_path split into its directories (it may be a list, "a:b").
func (c *containerdConfig) hostsPaths() []string {
	if c == nil || !c.exists || c.invalid != nil {
		return nil
	}
	var out []string
	for _, p := range filepath.SplitList(c.configPath) {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

var semver = regexp.MustCompile(`\bv?(\d+)\.(\d+)(\.\d+)?`)

// parseVersion returns major and minor of a containerd version ("2.1.4", "v2.1.4", or the
// output of `containerd --version`); ok is false when there is none.
func parseVersion(s string) (major, minor int, ok bool) {
	m := semver.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, false
	}
	major, _ = strconv.Atoi(m[1])
	minor, _ = strconv.Atoi(m[2])
	return major, minor, true
}

// release is a containerd major.minor.
type release struct{ major, minor int }

func (r release) atLeast(o release) bool {
	return r.major > o.major || (r.major == o.major && r.minor >= o.minor)
}

func (r release) String() string { return fmt.Sprintf("%d.%d", r.major, r.minor) }

// Which containerd loads which config version (containerd's RELEASES.md: version 3 from 2.0,
// version 4 from 2.3), and since when Kubernetes pulls go through the transfer service.
var (
	minRelease = map[int]release{1: {1, 0}, 2: {1, 3}, 3: {2, 0}, 4: {2, 3}}
	transferCR = release{2, 1}
)

// judgedRelease is the containerd the file is checked for. The file's own version decides; the
// version of the containerd binary (which may not be the one that reads this file) only counts
// when it can load the file. known is false when neither says more than "some 2.x".
func (c *containerdConfig) judgedRelease(binary string) (r release, known bool, mismatch string) {
	fileMin, ok := minRelease[c.version]
	if !ok {
		fileMin = minRelease[4]
	}
	if major, minor, ok := parseVersion(binary); ok {
		bin := release{major, minor}
		if bin.atLeast(fileMin) {
			return bin, true, ""
		}
		mismatch = fmt.Sprintf("`containerd --version` (the containerd first on PATH) says %s, which cannot load a version-%d config (containerd ≥ %s)",
			bin, c.version, fileMin)
	}
	switch {
	case c.version >= 4:
		return fileMin, true, mismatch // written by a containerd that pulls through the transfer service
	case c.version == 3:
		return fileMin, false, mismatch // 2.0 or any later 2.x
	default:
		return release{1, 7}, true, mismatch // written for containerd 1.x
	}
}

// check lists what in containerd's configuration keeps pulls from reading the hosts.toml files in
// hostsDir, and what to change. Every fix it prints, applied as printed, gives a file containerd
// loads: an existing line is replaced, an existing table gets a line, a new table is appended
// only when the file has none.
func (c *containerdConfig) check(path, hostsDir, hostRoot, version string) []Finding {
	if c == nil {
		return nil
	}
	want := hostPath(hostRoot, hostsDir)
	restart := "then restart containerd"

	switch {
	case !c.exists:
		v := 3
		if major, minor, ok := parseVersion(version); ok {
			switch r := (release{major, minor}); {
			case !r.atLeast(minRelease[3]):
				v = 2
			case r.atLeast(minRelease[4]):
				v = 4
			}
		}
		c.version = v
		c.setVersion(v)
		c.wantsSet = true
		return []Finding{{
			Severity: Warning,
			Message: fmt.Sprintf("no containerd config at %s: containerd runs on built-in defaults, which (containerd 2.x) name the list "+
				"\"/etc/containerd/certs.d:/etc/docker/certs.d\"; the transfer service that pulls for Kubernetes since containerd 2.1 "+
				"reads it as one path that does not exist, and ignores hosts.toml", path),
			Fix: fmt.Sprintf("write %s with:\nversion = %d\n%s\n  config_path = %s\n%s (or pass --containerd-config FILE)",
				path, v, c.registrySection, tomlQuote(want), restart),
		}}
	case c.invalid != nil:
		return []Finding{{Severity: Problem, Message: fmt.Sprintf("%s does not parse as TOML (containerd will not start with it): %v", path, c.invalid),
			Fix: "fix the file, then run setup again"}}
	}

	var out []Finding
	rel, known, mismatch := c.judgedRelease(version)
	if mismatch != "" {
		out = append(out, Finding{
			Severity: Info,
			Message:  fmt.Sprintf("%s: %s is checked as the version-%d config it says it is", mismatch, path, c.version),
			Fix:      "pass --containerd-version with the version of the containerd that runs on this node",
		})
	}
	transfer := c.version >= 3 && !c.useLocalPull && (!known || rel.atLeast(transferCR))
	set := c.setConfigPath(path, want)
	paths := c.hostsPaths()
	mirrors := trimBrackets(c.registrySection) + ".mirrors"
	switch {
	case len(c.mirrors) > 0 && c.configPath != "":
		fix := fmt.Sprintf("delete the [%s.*] tables from %s (shoal's hosts.toml files replace them); %s", mirrors, path, restart)
		if !slices.ContainsFunc(paths, func(p string) bool { return filepath.Clean(p) == filepath.Clean(want) }) || (len(paths) > 1 && transfer) {
			c.wantsSet = true
			fix = fmt.Sprintf("delete the [%s.*] tables from %s (shoal's hosts.toml files replace them), and %s\n%s", mirrors, path, set, restart)
		}
		out = append(out, Finding{
			Severity: Problem,
			Message: fmt.Sprintf("%s sets both config_path and %s (%v): containerd 2.x refuses to load the CRI plugin with both, "+
				"older versions ignore one of them", path, mirrors, c.mirrors),
			Fix: fix,
		})
	case len(c.mirrors) > 0:
		c.wantsSet = true
		out = append(out, Finding{
			Severity: Problem,
			Message:  fmt.Sprintf("%s configures registries with %s (%v), so containerd ignores hosts.toml for Kubernetes pulls", path, mirrors, c.mirrors),
			Fix:      fmt.Sprintf("delete the [%s.*] tables from %s (shoal's hosts.toml files replace them), and %s\n%s", mirrors, path, set, restart),
		})
	case !c.hasConfigPath || c.configPath == "":
		msg := fmt.Sprintf("%s does not set config_path in %s: containerd's CRI plugin does not read the hosts.toml files", path, c.registrySection)
		if c.version >= 3 {
			msg = fmt.Sprintf("%s does not set config_path in %s: the default is the list \"/etc/containerd/certs.d:/etc/docker/certs.d\", "+
				"which the transfer service (Kubernetes pulls since containerd 2.1) reads as one path that does not exist, so hosts.toml is ignored",
				path, c.registrySection)
		}
		c.wantsSet = true
		out = append(out, Finding{Severity: Problem, Message: msg, Fix: set + "\n" + restart})
	case !slices.ContainsFunc(paths, func(p string) bool { return filepath.Clean(p) == filepath.Clean(want) }):
		c.wantsSet = true
		out = append(out, Finding{
			Severity: Problem,
			Message:  fmt.Sprintf("%s has config_path = %q, but shoal wrote its hosts.toml files under %s", path, c.configPath, want),
			Fix:      fmt.Sprintf("run setup with --hosts-dir %s, or %s\n%s", under(hostRoot, firstOr(paths, DefaultHostsDir)), set, restart),
		})
	case len(paths) > 1 && transfer:
		other := ""
		if c.version >= 3 {
			other = fmt.Sprintf(" (use_local_image_pull = true in %s also works: CRI then pulls without the transfer service and reads the list)", c.imagesSection)
		}
		c.wantsSet = true
		out = append(out, Finding{
			Severity: Problem,
			Message: fmt.Sprintf("%s has config_path = %q, a list: containerd ≥ 2.1 pulls through the transfer service, which reads config_path "+
				"as one directory, finds no registry under %q and ignores hosts.toml%s", path, c.configPath, c.configPath, other),
			Fix: set + "\n" + restart,
		})
	}
	if c.version >= 3 {
		out = append(out, Finding{
			Severity: Info,
			Message:  "`ctr image pull` reads no hosts.toml unless told where they are",
			Fix:      fmt.Sprintf("pass `ctr image pull --hosts-dir %s`", want),
		})
	}
	return out
}

// hostPath is p (as this process sees it) as the host names it: without the host root.
func hostPath(hostRoot, p string) string {
	if hostRoot != "" && hostRoot != "/" {
		if rel, err := filepath.Rel(hostRoot, p); err == nil {
			return "/" + rel
		}
	}
	return p
}

// setConfigPath is the instruction that makes the file set config_path = want, written so that
// it can be applied as printed: its first line says where, the next line is the exact text.
func (c *containerdConfig) setConfigPath(path, want string) string {
	w := c.where
	switch {
	case w.keyLine > 0:
		return fmt.Sprintf("set config_path in %s: replace line %d of %s (%s) with:\n%s= %s",
			c.registrySection, w.keyLine, path, strings.TrimSpace(c.lines[w.keyLine-1]), w.keyText, tomlQuote(want))
	case w.inlineLine > 0:
		return fmt.Sprintf("set config_path = %s in the inline table %s on line %d of %s", tomlQuote(want), trimBrackets(c.registrySection), w.inlineLine, path)
	case w.tableLine > 0:
		return fmt.Sprintf("set config_path in the existing %s of %s: insert after line %d of %s:\n%s = %s",
			w.tableText, path, w.tableLine, path, indentOf(c.lines[w.tableLine-1])+"  "+w.relKey, tomlQuote(want))
	case w.beforeLine > 0:
		return fmt.Sprintf("set config_path where %s defines %s through dotted keys: insert before line %d of %s:\n%s%s = %s",
			path, trimBrackets(c.registrySection), w.beforeLine, path, indentOf(c.lines[w.beforeLine-1]), w.relKey, tomlQuote(want))
	default:
		return fmt.Sprintf("add %s with config_path (the file has no such table): append to %s:\n%s\n  config_path = %s",
			c.registrySection, path, c.registrySection, tomlQuote(want))
	}
}

func indentOf(s string) string { return s[:len(s)-len(strings.TrimLeft(s, " \t"))] }

func trimBrackets(s string) string {
	if len(s) >= 2 && s[0] == '[' && s[len(s)-1] == ']' {
		return s[1 : len(s)-1]
	}
	return s
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}
