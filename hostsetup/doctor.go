package hostsetup

import (
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/pelletier/go-toml/v2"
)

// ContainerdDiagnosis is what `shoal doctor` reads from containerd's config.toml: setup's checks
// of the file (the same findings and fixes as `shoal setup containerd`) and the facts behind them.
type ContainerdDiagnosis struct {
	File              string   `json:"file"`
	Exists            bool     `json:"exists"`
	Version           int      `json:"version"`
	ConfigPath        string   `json:"config_path"`
	HasConfigPath     bool     `json:"-"`
	HostsDirs         []string `json:"hosts_dirs,omitempty"` // config_path split into its directories
	Mirrors           []string `json:"mirrors,omitempty"`    // registries under registry.mirrors
	UseLocalImagePull bool     `json:"use_local_image_pull,omitempty"`
	// LazySnapshotters are remote snapshotters named in the file (SOCI, stargz, nydus, overlaybd),
	// which fetch layers with their own registry configuration, not through hosts.toml.
	LazySnapshotters []string  `json:"lazy_snapshotters,omitempty"`
	Findings         []Finding `json:"-"`
}

// DiagnoseContainerd reads containerd's config file and checks it, as setup does, for pulls
// that must read the hosts.toml files in hostsDir. version is containerd's version ("" = ask
// nobody: the file's own version decides).
func DiagnoseContainerd(file, hostsDir, version string) (ContainerdDiagnosis, error) {
	c, err := readContainerdConfig(file)
	if err != nil {
		return ContainerdDiagnosis{File: file}, err
	}
	d := ContainerdDiagnosis{File: file, Exists: c.exists, Version: c.version, ConfigPath: c.configPath, HasConfigPath: c.hasConfigPath,
		HostsDirs: c.hostsPaths(), Mirrors: c.mirrors, UseLocalImagePull: c.useLocalPull}
	if c.exists && c.invalid == nil {
		var doc map[string]any
		if toml.Unmarshal([]byte(strings.Join(c.lines, "\n")), &doc) == nil {
			d.LazySnapshotters = lazySnapshotters(doc)
		}
	}
	d.Findings = sortFindings(c.check(file, hostsDir, "/", version))
	return d, nil
}

var lazyNames = []string{"soci", "stargz", "nydus", "overlaybd"}

// lazySnapshotters finds remote snapshotters in a parsed config: a `snapshotter` key or a
// proxy_plugins entry that names one.
func lazySnapshotters(doc map[string]any) []string {
	var out []string
	add := func(s string) {
		for _, n := range lazyNames {
			if strings.Contains(strings.ToLower(s), n) && !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	var walk func(m map[string]any)
	walk = func(m map[string]any) {
		for k, v := range m {
			switch k {
			case "snapshotter":
				if s, ok := v.(string); ok {
					add(s)
				}
			case "proxy_plugins":
				if pp, ok := v.(map[string]any); ok {
					for name, p := range pp {
						if pm, ok := p.(map[string]any); ok && pm["type"] == "snapshot" {
							add(name)
						}
					}
				}
			}
			if sub, ok := v.(map[string]any); ok {
				walk(sub)
			}
		}
	}
	walk(doc)
	slices.Sort(out)
	return out
}

// ContainerdHosts lists, in order, the hosts containerd tries for registry reg with the hosts
// directory hostsDir, as scheme://host[/path] URLs (the registry itself last, when it is tried).
func ContainerdHosts(hostsDir, reg string) ([]string, error) {
	hs, err := resolveHosts(config.HostDirFromRoot(hostsDir), reg)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(hs))
	for _, h := range hs {
		u := h.scheme + "://" + h.host
		if p := strings.TrimSuffix(h.path, "/v2"); p != "" {
			u += p
		}
		out = append(out, u)
	}
	return out, nil
}

// SameMirror reports whether two mirror URLs name the same host (scheme, host and port).
func SameMirror(a, b string) bool {
	ha, err1 := parseHostID(a)
	hb, err2 := parseHostID(b)
	return err1 == nil && err2 == nil && ha.canon() == hb.canon()
}
