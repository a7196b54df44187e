package hostsetup

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/pmezard/go-difflib/difflib"
)

// BackupSuffix is appended to a file's name for the copy of the user's original that setup
// keeps before it first changes the file.
const BackupSuffix = ".shoal-backup"

// Change is one file that setup writes, restores or removes.
type Change struct {
	Path string
	// Old is the current content; nil when the file does not exist.
	Old []byte
	// New is the content to write; nil removes the file.
	New []byte
	// Backup, when not empty, is where Old is copied before the file changes. An existing
	// backup holds the user's original and is never overwritten.
	Backup string
	// RemoveBackup deletes Backup once the change is done (uninstall restored it).
	RemoveBackup bool
	// Note says in a few words what happens: "merged", "created", "restored from backup", ….
	Note string
}

// Severity ranks a Finding.
type Severity int

const (
	// Info is worth knowing; nothing is wrong.
	Info Severity = iota
	// Warning means some pulls may bypass shoal.
	Warning
	// Problem means the runtime will not use shoal until the user changes something.
	Problem
)

func (s Severity) String() string {
	switch s {
	case Info:
		return "note"
	case Warning:
		return "warning"
	default:
		return "problem"
	}
}

// Finding is a misconfiguration (or a fact) found while planning, with what to change.
type Finding struct {
	Severity Severity
	Message  string
	Fix      string
}

func (f Finding) String() string {
	if f.Fix == "" {
		return fmt.Sprintf("%s: %s", f.Severity, f.Message)
	}
	return fmt.Sprintf("%s: %s\n  fix: %s", f.Severity, f.Message, strings.ReplaceAll(f.Fix, "\n", "\n       "))
}

// Plan is what a setup or uninstall would do.
type Plan struct {
	// Changes are the files that would change, in a stable order.
	Changes []Change
	// Unchanged are files that are already as wanted.
	Unchanged []string
	// Findings are checks of the runtime's configuration, worst first.
	Findings []Finding
	// HostsDir and Registries are what a containerd plan resolved its options to (for
	// VerifyContainerd once the plan is applied).
	HostsDir   string
	Registries []string
}

// Worst returns the highest severity among the findings (Info when there are none).
func (p *Plan) Worst() Severity {
	w := Info
	for _, f := range p.Findings {
		w = max(w, f.Severity)
	}
	return w
}

// Diff returns a unified diff of every change ("" when nothing would change).
func (p *Plan) Diff() string {
	var b strings.Builder
	for _, c := range p.Changes {
		b.WriteString(c.Diff())
	}
	return b.String()
}

// Diff returns the unified diff of one change.
func (c Change) Diff() string {
	from, to := c.Path, c.Path
	if c.Old == nil {
		from = "/dev/null"
	}
	if c.New == nil {
		to = "/dev/null"
	}
	d := difflib.UnifiedDiff{
		A: splitLines(c.Old), B: splitLines(c.New),
		FromFile: from, ToFile: to, Context: 3,
	}
	s, err := difflib.GetUnifiedDiffString(d)
	if err != nil { // only a failing writer can fail; a strings.Builder does not
		return fmt.Sprintf("--- %s\n+++ %s\n(diff: %v)\n", from, to, err)
	}
	return s
}

// splitLines splits b into lines that each end in "\n" (difflib's own SplitLines adds an empty
// last line to every file that ends in a newline).
func splitLines(b []byte) []string {
	lines := strings.SplitAfter(string(b), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	} else {
		lines[len(lines)-1] += "\n"
	}
	return lines
}

// Apply carries out the plan: backups first, then each file is written to a temporary file in
// its directory and renamed over the old one, so a crash leaves either version, never half.
func (p *Plan) Apply() error {
	for _, c := range p.Changes {
		if err := c.apply(); err != nil {
			return fmt.Errorf("%s: %w", c.Path, err)
		}
	}
	return nil
}

func (c Change) apply() error {
	mode := fs.FileMode(0o644)
	if st, err := os.Stat(c.Path); err == nil {
		mode = st.Mode().Perm()
	}
	if c.Backup != "" && c.Old != nil && !c.RemoveBackup {
		if err := writeNew(c.Backup, c.Old, mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("backup: %w", err)
		}
	}
	if c.New == nil {
		if err := os.Remove(c.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		// The registry directory goes too when it held nothing else (setup created it).
		_ = os.Remove(filepath.Dir(c.Path))
	} else if err := writeAtomic(c.Path, c.New, mode); err != nil {
		return err
	}
	if c.RemoveBackup && c.Backup != "" {
		if err := os.Remove(c.Backup); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the backup: %w", err)
		}
	}
	return nil
}

// writeNew creates path with b; it fails with fs.ErrExist when path exists.
func writeNew(path string, b []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func writeAtomic(path string, b []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".shoal-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// readOptional reads a file; a missing file is (nil, nil).
func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if b == nil {
		b = []byte{} // exists but empty: not the same as missing
	}
	return b, nil
}

// add records a wanted content for path: a Change when it differs, else an Unchanged entry.
func (p *Plan) add(c Change) {
	if c.Old != nil && c.New != nil && bytes.Equal(c.Old, c.New) && !c.RemoveBackup {
		p.Unchanged = append(p.Unchanged, c.Path)
		return
	}
	if c.Old == nil && c.New == nil {
		return
	}
	p.Changes = append(p.Changes, c)
}

// under joins a host path (as the runtime sees it) onto root (where this process sees the host's
// file system, "/" or a mount such as /host in a pod).
func under(root, p string) string {
	if root == "" || root == "/" {
		return filepath.Clean(p)
	}
	return filepath.Join(root, p)
}
