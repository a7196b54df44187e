package hostsetup

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"

	"github.com/pelletier/go-toml/v2"
)

// containerdConfig is what the checks need from containerd's config.toml.
type containerdConfig struct {
	exists  bool
	invalid error // the file does not parse (containerd would not start either)
	version int   // the file's `version` (1 when absent)

	registrySection string // where config_path lives for this version, as a TOML header
	imagesSection   string // where use_local_image_pull lives (version 3)
	configPath      string
	hasConfigPath   bool
	mirrors         []string // registries named under registry.mirrors
	useLocalPull    bool
	transferPath    string // [plugins."io.containerd.transfer.v1.local"] config_path
}

const transferSection = `[plugins."io.containerd.transfer.v1.local"]`

// readContainerdConfig reads containerd's config.toml; a missing file is not an error.
func readContainerdConfig(path string) (*containerdConfig, error) {
	b, err := readOptional(path)
	if err != nil {
		return nil, err
	}
	c := &containerdConfig{version: 1}
	if b == nil {
		return c, nil
	}
	c.exists = true
	var doc map[string]any
	if err := toml.Unmarshal(b, &doc); err != nil {
		c.invalid = err
		return c, nil
	}
	if v, ok := doc["version"].(int64); ok {
		c.version = int(v)
	}
	plugins, _ := doc["plugins"].(map[string]any)
	table := func(m map[string]any, key string) map[string]any {
		t, _ := m[key].(map[string]any)
		return t
	}
	var cri, registry map[string]any
	switch c.version {
	case 1:
		cri = table(plugins, "cri")
		c.registrySection = `[plugins.cri.registry]`
	case 2:
		cri = table(plugins, "io.containerd.grpc.v1.cri")
		c.registrySection = `[plugins."io.containerd.grpc.v1.cri".registry]`
	default:
		cri = table(plugins, "io.containerd.cri.v1.images")
		c.registrySection = `[plugins."io.containerd.cri.v1.images".registry]`
		c.imagesSection = `[plugins."io.containerd.cri.v1.images"]`
		c.useLocalPull, _ = cri["use_local_image_pull"].(bool)
		c.transferPath, _ = table(plugins, "io.containerd.transfer.v1.local")["config_path"].(string)
	}
	registry = table(cri, "registry")
	c.configPath, c.hasConfigPath = registry["config_path"].(string)
	for name := range table(registry, "mirrors") {
		c.mirrors = append(c.mirrors, name)
	}
	slices.Sort(c.mirrors)
	return c, nil
}

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

// check lists what in containerd's configuration keeps pulls from reading the hosts.toml files in
// hostsDir, and what to change.
func (c *containerdConfig) check(path, hostsDir, hostRoot, version string) []Finding {
	var out []Finding
	major, minor, known := parseVersion(version)
	want := hostsDir
	if hostRoot != "" && hostRoot != "/" {
		if rel, err := filepath.Rel(hostRoot, hostsDir); err == nil {
			want = "/" + rel // the path as containerd on the host names it
		}
	}
	snippet := func(v int) string {
		switch v {
		case 1:
			return fmt.Sprintf("[plugins.cri.registry]\n  config_path = %q", want)
		case 2:
			return fmt.Sprintf("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = %q", want)
		default:
			return fmt.Sprintf("version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = %q", want)
		}
	}
	restart := "then restart containerd"

	switch {
	case c == nil:
		return nil
	case !c.exists:
		v := 3
		if known && major < 2 {
			v = 2
		}
		return []Finding{{
			Severity: Warning,
			Message: fmt.Sprintf("no containerd config at %s: containerd runs on built-in defaults, which (containerd 2.x) name the list "+
				"\"/etc/containerd/certs.d:/etc/docker/certs.d\"; the transfer service that pulls for Kubernetes since containerd 2.1 "+
				"reads it as one path that does not exist, and ignores hosts.toml", path),
			Fix: fmt.Sprintf("write %s with\n%s\n%s (or pass --containerd-config FILE)", path, snippet(v), restart),
		}}
	case c.invalid != nil:
		return []Finding{{Severity: Problem, Message: fmt.Sprintf("%s does not parse as TOML (containerd will not start with it): %v", path, c.invalid),
			Fix: "fix the file, then run setup again"}}
	}

	transfer := c.version >= 3 && !c.useLocalPull && (!known || major > 2 || (major == 2 && minor >= 1))
	paths := c.hostsPaths()
	switch {
	case len(c.mirrors) > 0 && c.configPath != "":
		out = append(out, Finding{
			Severity: Problem,
			Message: fmt.Sprintf("%s sets both config_path and %s.mirrors (%v): containerd 2.x refuses to load the CRI plugin with both, "+
				"older versions ignore one of them", path, trimBrackets(c.registrySection), c.mirrors),
			Fix: fmt.Sprintf("delete the [%s.mirrors.*] tables (shoal's hosts.toml files replace them) and keep config_path = %q; %s",
				trimBrackets(c.registrySection), want, restart),
		})
	case len(c.mirrors) > 0:
		out = append(out, Finding{
			Severity: Problem,
			Message: fmt.Sprintf("%s configures registries with %s.mirrors (%v), so containerd ignores hosts.toml for Kubernetes pulls",
				path, trimBrackets(c.registrySection), c.mirrors),
			Fix: fmt.Sprintf("replace the [%s.mirrors.*] tables with\n%s\n%s", trimBrackets(c.registrySection), snippet(c.version), restart),
		})
	case !c.hasConfigPath || c.configPath == "":
		msg := fmt.Sprintf("%s does not set config_path in %s: containerd's CRI plugin does not read the hosts.toml files", path, c.registrySection)
		if c.version >= 3 {
			msg = fmt.Sprintf("%s does not set config_path in %s: the default is the list \"/etc/containerd/certs.d:/etc/docker/certs.d\", "+
				"which the transfer service (Kubernetes pulls since containerd 2.1) reads as one path that does not exist, so hosts.toml is ignored",
				path, c.registrySection)
		}
		out = append(out, Finding{Severity: Problem, Message: msg, Fix: fmt.Sprintf("add to %s:\n%s\n%s", path, snippet(c.version), restart)})
	case !slices.ContainsFunc(paths, func(p string) bool { return filepath.Clean(p) == filepath.Clean(want) }):
		out = append(out, Finding{
			Severity: Problem,
			Message:  fmt.Sprintf("%s has config_path = %q, but shoal wrote its hosts.toml files under %s", path, c.configPath, want),
			Fix:      fmt.Sprintf("set config_path = %q in %s and restart containerd, or run setup with --hosts-dir %s", want, c.registrySection, under(hostRoot, firstOr(paths, DefaultHostsDir))),
		})
	case len(paths) > 1 && transfer:
		out = append(out, Finding{
			Severity: Problem,
			Message: fmt.Sprintf("%s has config_path = %q, a list: containerd ≥ 2.1 pulls through the transfer service, which reads config_path "+
				"as one directory, finds no registry under %q and ignores hosts.toml", path, c.configPath, c.configPath),
			Fix: fmt.Sprintf("set config_path = %q in %s, or use_local_image_pull = true in %s; %s", want, c.registrySection, c.imagesSection, restart),
		})
	}
	if c.version >= 3 && c.transferPath == "" {
		out = append(out, Finding{
			Severity: Info,
			Message:  "`ctr image pull` (transfer service) reads no hosts.toml unless told where they are",
			Fix:      fmt.Sprintf("pass `ctr image pull --hosts-dir %s`, or set config_path = %q in %s", want, want, transferSection),
		})
	}
	return out
}

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
