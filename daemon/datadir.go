package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// SystemDataDir is data_dir's default: where a system service keeps its state.
const SystemDataDir = "/var/lib/shoal"

// UserDataDir is where shoal keeps its state for a user who cannot write SystemDataDir:
// $XDG_STATE_HOME/shoal, else ~/.local/state/shoal (the XDG base directory specification's
// place for state that survives restarts but is not worth backing up, as a cache is).
func UserDataDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) { // the spec: a relative path is ignored
		return filepath.Join(d, "shoal"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, ".local", "state", "shoal"), nil
}

// SystemDataDirWritable says whether this process may keep its state in SystemDataDir: the
// directory is writable, or it does not exist and its parent is.
func SystemDataDirWritable() bool {
	err := unix.Access(SystemDataDir, unix.W_OK|unix.X_OK)
	if errors.Is(err, unix.ENOENT) {
		err = unix.Access(filepath.Dir(SystemDataDir), unix.W_OK|unix.X_OK)
	}
	return err == nil
}

// resolveDataDir moves the state to UserDataDir when data_dir was left at its default and the
// user running shoal cannot write it, so that `shoal daemon` works for anyone; a data_dir
// given in the file, a variable or a flag is used as it is. The reason goes in the start-up line.
func (c *Config) resolveDataDir() error {
	if c.explicit["data_dir"] || c.DataDir != SystemDataDir || SystemDataDirWritable() {
		return nil
	}
	dir, err := UserDataDir()
	if err != nil {
		return &ConfigError{Key: "data_dir", Err: fmt.Errorf("%s is not writable for uid %d and there is no home directory for a per-user one (%v): set --data-dir", SystemDataDir, os.Getuid(), err)}
	}
	c.DataDir = dir
	c.dataDirWhy = fmt.Sprintf("%s is not writable for uid %d", SystemDataDir, os.Getuid())
	return nil
}
