package hostsetup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

const (
	// DefaultMirror is where shoal listens on every node.
	DefaultMirror = "http://127.0.0.1:5000"
	// DefaultHostsDir is containerd's conventional hosts directory (config_path).
	DefaultHostsDir = "/etc/containerd/certs.d"
	// DefaultContainerdConfig is containerd's configuration file.
	DefaultContainerdConfig = "/etc/containerd/config.toml"
	// DefaultRegistry is the hosts directory entry that applies to every registry without one
	// of its own.
	DefaultRegistry = "_default"
)

// ContainerdOptions say where and how to point containerd at shoal.
type ContainerdOptions struct {
	// HostRoot is where this process sees the host's file system: "/" (or "") on the host,
	// "/host" in a pod that mounts it there. Paths named inside containerd's configuration are
	// taken relative to it; HostsDir and ContainerdConfig are not.
	HostRoot string
	// HostsDir is the hosts directory to edit. "" = the config_path of ContainerdConfig (its
	// first entry), else DefaultHostsDir, under HostRoot.
	HostsDir string
	// Registries are the registries whose pulls go to shoal: host names (docker.io,
	// ghcr.io, registry.local:5000) or "_default". Empty = "_default" plus every registry that
	// already has a hosts.toml in HostsDir (its own file would otherwise bypass _default).
	Registries []string
	// Mirror is shoal's URL as containerd reaches it; "" = DefaultMirror.
	Mirror string
	// ContainerdConfig is containerd's config.toml to check; "" = DefaultContainerdConfig under
	// HostRoot, "-" = skip the checks.
	ContainerdConfig string
	// ContainerdVersion, e.g. "2.1.4", sharpens the checks; "" = unknown.
	ContainerdVersion string
	// EditConfig makes setup apply the config_path fix of the checks to ContainerdConfig
	// itself (as text, with a backup); without it the fix is only printed. Uninstall reverts
	// the edit whenever it finds setup's backup, with or without this option.
	EditConfig bool
}

var registryName = regexp.MustCompile(`^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]{1,5})?$`)

// ValidateMirror checks a mirror URL: http or https, a host, no credentials, query or fragment,
// and nothing that would need escaping in TOML or JSON.
func ValidateMirror(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("mirror %q: %w", s, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("mirror %q: want an http:// or https:// URL", s)
	case u.Host == "":
		return fmt.Errorf("mirror %q: no host", s)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("mirror %q: credentials, query and fragment are not allowed", s)
	case strings.ContainsAny(s, "\"\\' \t\r\n"):
		return fmt.Errorf("mirror %q: quotes, backslashes and spaces are not allowed", s)
	}
	return nil
}

// validateRegistry checks a --registries entry.
func validateRegistry(r string) error {
	if r == DefaultRegistry {
		return nil
	}
	if !registryName.MatchString(r) {
		return fmt.Errorf("registry %q: want a host name such as docker.io or registry.local:5000, or %s", r, DefaultRegistry)
	}
	return nil
}

// resolvedContainerd is ContainerdOptions with the defaults applied.
type resolvedContainerd struct {
	ContainerdOptions
	cfg     *containerdConfig // nil when not read (ContainerdConfig "-")
	cfgEdit *Change           // --edit-config's change of ContainerdConfig, nil when none
}

// resolve applies the defaults and, when check is set, checks ContainerdConfig (and plans
// --edit-config's change of it).
func (o ContainerdOptions) resolve(check bool) (resolvedContainerd, []Finding, error) {
	r := resolvedContainerd{ContainerdOptions: o}
	if r.Mirror == "" {
		r.Mirror = DefaultMirror
	}
	if err := ValidateMirror(r.Mirror); err != nil {
		return r, nil, err
	}
	for _, reg := range r.Registries {
		if err := validateRegistry(reg); err != nil {
			return r, nil, err
		}
	}
	var (
		findings []Finding
		err      error
	)
	if r.ContainerdConfig != "-" {
		if r.ContainerdConfig == "" {
			r.ContainerdConfig = under(r.HostRoot, DefaultContainerdConfig)
		}
		cfg, err := readContainerdConfig(r.ContainerdConfig)
		if err != nil {
			return r, nil, err
		}
		r.cfg = cfg
	}
	if r.HostsDir == "" {
		r.HostsDir = under(r.HostRoot, DefaultHostsDir)
		if r.cfg != nil {
			if paths := r.cfg.hostsPaths(); len(paths) > 0 {
				r.HostsDir = under(r.HostRoot, paths[0])
			}
		}
	}
	if r.HostsDir, err = filepath.Abs(r.HostsDir); err != nil {
		return r, nil, err
	}
	if r.ContainerdConfig != "-" && check {
		findings = append(findings, r.cfg.check(r.ContainerdConfig, r.HostsDir, r.HostRoot, r.ContainerdVersion)...)
		if r.EditConfig {
			r.cfgEdit, findings = r.planConfigEdit(findings)
		}
	}
	return r, findings, nil
}

// planConfigEdit is --edit-config: ContainerdConfig with the config_path fix that the checks
// printed applied to it, and the findings of the edited file in place of the original's. A file
// that also configures registry.mirrors is left to the user (containerd 2.x refuses both).
func (r *resolvedContainerd) planConfigEdit(findings []Finding) (*Change, []Finding) {
	c, path := r.cfg, r.ContainerdConfig
	if c.invalid != nil || !c.wantsSet {
		return nil, findings
	}
	if len(c.mirrors) > 0 {
		return nil, append(findings, Finding{
			Severity: Problem,
			Message: fmt.Sprintf("--edit-config left %s as it is: it configures registries with %s.mirrors (%v), which containerd 2.x refuses "+
				"next to config_path", path, trimBrackets(c.registrySection), c.mirrors),
			Fix: "delete those tables (shoal's hosts.toml files replace them), then run setup --edit-config again",
		})
	}
	if _, _, known := parseVersion(r.ContainerdVersion); !c.exists && !known {
		return nil, append(findings, Finding{
			Severity: Problem,
			Message: fmt.Sprintf("--edit-config did not write %s: containerd's version is unknown, and a new file's own version must be one "+
				"that containerd loads (2 for 1.x, 3 for 2.x)", path),
			Fix: "pass --containerd-version with the version of the containerd that runs on this node",
		})
	}
	want := hostPath(r.HostRoot, r.HostsDir)
	b, err := c.editConfigPath(want)
	if err != nil {
		return nil, append(findings, Finding{Severity: Problem, Message: fmt.Sprintf("--edit-config left %s as it is: %v", path, err),
			Fix: "apply the config_path fix above by hand"})
	}
	ch := &Change{Path: path, New: b, Note: "config_path set in"}
	was := fmt.Sprintf("config_path was %q", c.configPath)
	if c.exists {
		ch.Old, ch.Backup = c.raw, path+BackupSuffix
		if !c.hasConfigPath {
			was = "config_path was not set"
		}
	} else {
		ch.Note, was = "created", "there was no config file"
	}
	edited := parseContainerdConfig(b)
	after := edited.check(path, r.HostsDir, r.HostRoot, r.ContainerdVersion)
	after = append(after, restartFinding(path, was))
	// Directories that config_path named and no longer does: what they configure is lost.
	for _, p := range c.hostsPaths() {
		if filepath.Clean(p) == filepath.Clean(want) {
			continue
		}
		with, certs, err := registryDirs(under(r.HostRoot, p))
		if err != nil || len(with)+len(certs) == 0 {
			continue
		}
		after = append(after, Finding{
			Severity: Warning,
			Message: fmt.Sprintf("%s no longer names %s, so containerd's CRI plugin stops reading its registry directories (%s)",
				path, p, strings.Join(slices.Concat(with, certs), ", ")),
			Fix: fmt.Sprintf("move them to %s, then run setup again", want),
		})
	}
	return ch, after
}

// restartFinding says that a change of config.toml takes effect when containerd restarts.
func restartFinding(path, was string) Finding {
	return Finding{
		Severity: Warning,
		Message:  fmt.Sprintf("containerd reads %s only when it starts: until it restarts, it keeps the old settings (%s)", path, was),
		Fix:      "restart containerd (systemctl restart containerd); the hosts.toml files need no restart",
	}
}

// registryDirs lists the registries that have a directory in the hosts directory, as containerd
// names them ("host_port_" directories are reported as "host:port").
func registryDirs(hostsDir string) (withHostsTOML, certsOnly []string, err error) {
	ents, err := os.ReadDir(hostsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		if !e.IsDir() || e.Name() == DefaultRegistry {
			continue
		}
		name := e.Name()
		if m := portDir.FindStringSubmatch(name); m != nil {
			name = m[1] + ":" + m[2]
		}
		if _, err := os.Stat(filepath.Join(hostsDir, e.Name(), "hosts.toml")); err == nil {
			withHostsTOML = append(withHostsTOML, name)
		} else {
			certsOnly = append(certsOnly, name)
		}
	}
	return withHostsTOML, certsOnly, nil
}

var portDir = regexp.MustCompile(`^(.+)_([0-9]+)_$`)

// registryFile returns where the hosts.toml of reg lives: its existing directory (containerd
// looks for "host_port_" before "host:port"), else "host:port".
func registryFile(hostsDir, reg string) string {
	if h, p, err := net.SplitHostPort(reg); err == nil {
		alt := filepath.Join(hostsDir, h+"_"+p+"_")
		if st, err := os.Stat(alt); err == nil && st.IsDir() {
			return filepath.Join(alt, "hosts.toml")
		}
	}
	return filepath.Join(hostsDir, reg, "hosts.toml")
}

// createdHostsTOML is the file setup writes for a registry that has none.
func createdHostsTOML(reg, mirror string, certs []string) []byte {
	var b strings.Builder
	b.WriteString("# Written by `shoal setup containerd`: containerd tries shoal, the node-local mirror, first\n")
	b.WriteString("# and falls back to the registry itself (server) when shoal cannot answer.\n")
	switch {
	case reg == "docker.io":
		b.WriteString("server = \"https://registry-1.docker.io\"\n")
	case reg == DefaultRegistry || docker.IsLocalhost(reg):
		// No server: containerd falls back to the registry named in the image reference, with
		// its usual scheme rules.
	default:
		b.WriteString("server = " + tomlQuote("https://"+reg) + "\n")
	}
	b.WriteString(strings.Join(certs, ""))
	b.WriteString("\n")
	b.WriteString(mirrorBlock(mirror))
	return []byte(b.String())
}

// dirCerts turns Docker-style certificate files in a registry directory (which containerd reads
// only while there is no hosts.toml) into root keys of a new hosts.toml, so creating the file
// keeps the registry's TLS settings.
func dirCerts(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var cas, clients []string
	for _, e := range ents {
		n := e.Name()
		switch {
		case e.IsDir():
		case strings.HasSuffix(n, ".crt"):
			cas = append(cas, tomlQuote(n))
		case strings.HasSuffix(n, ".cert"):
			key := strings.TrimSuffix(n, ".cert") + ".key"
			if _, err := os.Stat(filepath.Join(dir, key)); err == nil {
				clients = append(clients, "["+tomlQuote(n)+", "+tomlQuote(key)+"]")
			} else {
				clients = append(clients, tomlQuote(n))
			}
		}
	}
	var out []string
	if len(cas) > 0 {
		out = append(out, "ca = ["+strings.Join(cas, ", ")+"]\n")
	}
	if len(clients) > 0 {
		out = append(out, "client = ["+strings.Join(clients, ", ")+"]\n")
	}
	return out, nil
}

// PlanContainerd computes the hosts.toml files that send pulls to shoal first.
func PlanContainerd(o ContainerdOptions) (*Plan, error) {
	r, findings, err := o.resolve(true)
	if err != nil {
		return nil, err
	}
	existing, certsOnly, err := registryDirs(r.HostsDir)
	if err != nil {
		return nil, err
	}
	regs := r.Registries
	if len(regs) == 0 {
		regs = append([]string{DefaultRegistry}, existing...)
	}
	regs = dedupe(regs)
	plan := &Plan{HostsDir: r.HostsDir, Registries: regs}
	for _, reg := range regs {
		c, f, err := planRegistry(r.HostsDir, reg, r.Mirror)
		if err != nil {
			return nil, err
		}
		if f != nil {
			findings = append(findings, *f)
		}
		plan.add(c)
	}
	// config.toml last: it never names a hosts directory before shoal's files are there.
	switch {
	case r.cfgEdit != nil:
		plan.add(*r.cfgEdit)
	case r.EditConfig && r.cfg != nil && r.cfg.exists && r.cfg.invalid == nil && !r.cfg.wantsSet:
		plan.Unchanged = append(plan.Unchanged, r.ContainerdConfig)
	}
	// Registries that keep their own configuration without shoal: _default does not apply to them.
	for _, reg := range append(existing, certsOnly...) {
		if slices.Contains(regs, reg) {
			continue
		}
		findings = append(findings, Finding{
			Severity: Warning,
			Message: fmt.Sprintf("pulls from %s bypass shoal: %s has its own configuration, so containerd does not read %s for it",
				reg, filepath.Dir(registryFile(r.HostsDir, reg)), DefaultRegistry),
			Fix: fmt.Sprintf("add %s to --registries", reg),
		})
	}
	plan.Findings = sortFindings(findings)
	return plan, nil
}

func planRegistry(hostsDir, reg, mirror string) (Change, *Finding, error) {
	path := registryFile(hostsDir, reg)
	old, err := readOptional(path)
	if err != nil {
		return Change{}, nil, err
	}
	c := Change{Path: path, Old: old}
	if old == nil {
		certs, err := dirCerts(filepath.Dir(path))
		if err != nil {
			return Change{}, nil, err
		}
		c.New, c.Note = createdHostsTOML(reg, mirror, certs), "created"
	} else {
		merged, err := mergeHostsTOML(old, mirror)
		if err != nil {
			return Change{}, nil, fmt.Errorf("%s is not a valid hosts.toml (containerd ignores it too): %w; fix or remove it, then run setup again", path, err)
		}
		c.New, c.Note = merged, "merged"
		c.Backup = path + BackupSuffix
	}
	f, err := checkMergedHosts(reg, filepath.Dir(path), old, c.New, mirror)
	if err != nil {
		return Change{}, nil, fmt.Errorf("%s: %w (nothing was written)", path, err)
	}
	return c, f, nil
}

// PlanContainerdUninstall computes how to take shoal out of every hosts.toml in the hosts
// directory: a file still as setup left it gets its backup back (or goes away when setup created
// it); a file edited since keeps the edits and loses only shoal's entry. containerd's config.toml
// is treated the same way when --edit-config changed it (its backup is there, or setup created it).
func PlanContainerdUninstall(o ContainerdOptions) (*Plan, error) {
	r, _, err := o.resolve(false) // nothing to check when leaving
	if err != nil {
		return nil, err
	}
	existing, _, err := registryDirs(r.HostsDir)
	if err != nil {
		return nil, err
	}
	regs := r.Registries
	if len(regs) == 0 {
		regs = append([]string{DefaultRegistry}, existing...)
	}
	plan := &Plan{}
	for _, reg := range dedupe(regs) {
		path := registryFile(r.HostsDir, reg)
		cur, err := readOptional(path)
		if err != nil {
			return nil, err
		}
		backup := path + BackupSuffix
		orig, err := readOptional(backup)
		if err != nil {
			return nil, err
		}
		if cur == nil {
			if orig != nil { // the file went away but the backup is there: give it back
				plan.add(Change{Path: path, New: orig, Backup: backup, RemoveBackup: true, Note: "restored from backup"})
			}
			continue
		}
		if orig != nil {
			if merged, err := mergeHostsTOML(orig, r.Mirror); err == nil && string(merged) == string(cur) {
				plan.add(Change{Path: path, Old: cur, New: orig, Backup: backup, RemoveBackup: true, Note: "restored from backup"})
				continue
			}
		} else if certs, err := dirCerts(filepath.Dir(path)); err == nil && string(createdHostsTOML(reg, r.Mirror, certs)) == string(cur) {
			plan.add(Change{Path: path, Old: cur, New: nil, Note: "removed (setup created it)"})
			continue
		}
		stripped, had, err := stripHostsTOML(cur, r.Mirror)
		if err != nil {
			return nil, fmt.Errorf("%s is not a valid hosts.toml: %w", path, err)
		}
		if !had {
			plan.Unchanged = append(plan.Unchanged, path)
			continue
		}
		note := "shoal's entry removed"
		if orig != nil {
			note += fmt.Sprintf(" (the file changed since setup; %s kept)", filepath.Base(backup))
		}
		plan.add(Change{Path: path, Old: cur, New: stripped, Note: note})
	}
	if r.cfg != nil {
		if err := r.planConfigUninstall(plan); err != nil {
			return nil, err
		}
	}
	return plan, nil
}

// planConfigUninstall reverts --edit-config: config.toml still as setup left it gets its backup
// back (or goes away when setup created it); a file edited since keeps the edits and only gets
// config_path back as it was; a file whose config_path changed since is left alone.
func (r *resolvedContainerd) planConfigUninstall(plan *Plan) error {
	path, cur := r.ContainerdConfig, r.cfg
	backup := path + BackupSuffix
	orig, err := readOptional(backup)
	if err != nil {
		return err
	}
	want := hostPath(r.HostRoot, r.HostsDir)
	if orig == nil {
		if !cur.exists || cur.invalid != nil {
			return nil
		}
		for v := 2; v <= 4; v++ {
			created := parseContainerdConfig(nil)
			created.setVersion(v)
			if string(createdConfig(v, created.registrySection, want)) == string(cur.raw) {
				plan.add(Change{Path: path, Old: cur.raw, New: nil, Note: "removed (setup created it)"})
				plan.Findings = append(plan.Findings, restartFinding(path, "config_path = "+tomlQuote(want)))
				return nil
			}
		}
		return nil // setup did not edit this file
	}
	restart := restartFinding(path, "config_path = "+tomlQuote(want))
	if !cur.exists {
		plan.add(Change{Path: path, New: orig, Backup: backup, RemoveBackup: true, Note: "restored from backup"})
		plan.Findings = append(plan.Findings, restart)
		return nil
	}
	before := parseContainerdConfig(orig)
	if edited, err := before.editConfigPath(want); err == nil && string(edited) == string(cur.raw) {
		plan.add(Change{Path: path, Old: cur.raw, New: orig, Backup: backup, RemoveBackup: true, Note: "restored from backup"})
		plan.Findings = append(plan.Findings, restart)
		return nil
	}
	if cur.invalid != nil || cur.configPath != want {
		plan.Unchanged = append(plan.Unchanged, path)
		plan.Findings = append(plan.Findings, Finding{Severity: Info,
			Message: fmt.Sprintf("%s changed since setup set config_path = %s (it is %q now): left as it is", path, tomlQuote(want), cur.configPath),
			Fix:     fmt.Sprintf("compare it with %s, setup's copy of the file before it changed it, and remove that copy", backup)})
		return nil
	}
	reverted, err := cur.revertConfigPath(before)
	if err != nil {
		return fmt.Errorf("%s changed since setup; %v: compare it with %s by hand", path, err, backup)
	}
	plan.add(Change{Path: path, Old: cur.raw, New: reverted,
		Note: fmt.Sprintf("config_path reverted (the file changed since setup; %s kept) in", backup)})
	plan.Findings = append(plan.Findings, restart)
	return nil
}

// checkMergedHosts reads the old and new file with containerd's own hosts.toml code and insists
// that the new one makes containerd try the mirror first, then exactly the hosts the old one
// named, in order. When containerd cannot use the old file as it is (a certificate it names does
// not load), the order cannot be checked that way; the finding says so.
func checkMergedHosts(reg, dir string, old, merged []byte, mirror string) (*Finding, error) {
	before, err := resolveHostsContent(reg, dir, old)
	var ignored *ignoredError
	if errors.As(err, &ignored) {
		return nil, fmt.Errorf("not a valid hosts.toml (%w); fix or remove it, then run setup again", err)
	}
	if err != nil {
		return &Finding{
			Severity: Warning,
			Message:  fmt.Sprintf("containerd cannot use %s as it is (%v): pulls from %s fail until that is fixed", filepath.Join(dir, "hosts.toml"), err, reg),
			Fix:      "fix the certificate files the hosts.toml names",
		}, nil
	}
	after, err := resolveHostsContent(reg, dir, merged)
	if err != nil {
		return nil, err
	}
	want, _ := parseHostID(mirror)
	if len(after) == 0 || after[0].canon() != want.canon() {
		return nil, fmt.Errorf("containerd would not try shoal first: it reads %s", describeHosts(after))
	}
	var rest []hostID
	for _, h := range before {
		if h.canon() != want.canon() {
			rest = append(rest, h)
		}
	}
	if !slices.Equal(after[1:], rest) {
		return nil, fmt.Errorf("containerd would try %s after shoal, the file had %s", describeHosts(after[1:]), describeHosts(rest))
	}
	return nil, nil
}

// resolveHostsContent is what containerd makes of a hosts.toml with the given content for
// registry reg (nil content = no file), in a scratch copy of the registry directory dir (its
// certificate files linked in, since containerd loads the ca/client files a hosts.toml names).
func resolveHostsContent(reg, dir string, content []byte) ([]hostID, error) {
	tmp, err := os.MkdirTemp("", "shoal-hosts-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "hosts.toml") {
			continue
		}
		if err := os.Symlink(filepath.Join(dir, e.Name()), filepath.Join(tmp, e.Name())); err != nil {
			return nil, err
		}
	}
	if content != nil {
		if err := os.WriteFile(filepath.Join(tmp, "hosts.toml"), content, 0o600); err != nil {
			return nil, err
		}
	}
	return resolveHosts(func(string) (string, error) { return tmp, nil }, reg)
}

// ignoredError is a hosts.toml that containerd reads and then ignores: it logs the error and
// falls back to the registry itself, so a pull silently bypasses every host in the file.
type ignoredError struct{ msg string }

func (e *ignoredError) Error() string { return "containerd ignores it: " + e.msg }

// errorHook collects what containerd logs at error level while it reads a hosts directory.
type errorHook struct{ msgs []string }

func (h *errorHook) Levels() []logrus.Level { return []logrus.Level{logrus.ErrorLevel} }
func (h *errorHook) Fire(e *logrus.Entry) error {
	msg := e.Message
	if err, ok := e.Data[logrus.ErrorKey].(error); ok {
		msg += ": " + err.Error()
	}
	h.msgs = append(h.msgs, msg)
	return nil
}

// resolveHosts asks containerd's hosts.toml code which hosts it would try for reg. containerd
// logs a file it cannot use and goes on without it; that log is turned into an *ignoredError.
func resolveHosts(hostDir func(string) (string, error), reg string) ([]hostID, error) {
	l := logrus.New()
	l.SetOutput(io.Discard)
	hook := &errorHook{}
	l.AddHook(hook)
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(l))
	name := reg
	if reg == DefaultRegistry {
		name = "registry.invalid" // any name: _default applies to every registry without a directory
	}
	hosts, err := config.ConfigureHosts(ctx, config.HostOptions{HostDir: hostDir})(name)
	if err != nil {
		return nil, err
	}
	if len(hook.msgs) > 0 {
		return nil, &ignoredError{msg: strings.Join(hook.msgs, "; ")}
	}
	out := make([]hostID, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, hostID{scheme: h.Scheme, host: strings.ToLower(h.Host), path: h.Path})
	}
	return out, nil
}

// VerifyContainerd reads the hosts directory as containerd does and returns an error naming
// every registry whose pulls would not try mirror first.
func VerifyContainerd(hostsDir string, registries []string, mirror string) error {
	if mirror == "" {
		mirror = DefaultMirror
	}
	want, err := parseHostID(mirror)
	if err != nil {
		return err
	}
	var errs []error
	for _, reg := range registries {
		hosts, err := resolveHosts(config.HostDirFromRoot(hostsDir), reg)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", reg, err))
			continue
		}
		if len(hosts) == 0 || hosts[0].canon() != want.canon() {
			errs = append(errs, fmt.Errorf("%s: containerd would try %s", reg, describeHosts(hosts)))
		}
	}
	return errors.Join(errs...)
}

func describeHosts(hs []hostID) string {
	if len(hs) == 0 {
		return "no host"
	}
	var s []string
	for _, h := range hs {
		s = append(s, h.scheme+"://"+h.host+h.path)
	}
	return strings.Join(s, ", then ")
}

func dedupe(s []string) []string {
	var out []string
	for _, v := range s {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

func sortFindings(f []Finding) []Finding {
	slices.SortStableFunc(f, func(a, b Finding) int { return int(b.Severity) - int(a.Severity) })
	return f
}
