package p2p

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/pnet"
)

// identityFile is where the host key lives, relative to the data dir. Its peer ID is the
// node's name in the swarm, so it must survive restarts.
const identityFile = "p2p/identity.key"

// loadIdentity reads the Ed25519 host key from dataDir, creating it (0600) on first start.
func loadIdentity(dataDir string, log *slog.Logger) (crypto.PrivKey, error) {
	path := filepath.Join(dataDir, identityFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("p2p: identity key %s is corrupt (delete it to get a new peer ID): %w", path, err)
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			log.Warn("identity key readable by others; restricting to 0600", "path", path)
			if err := os.Chmod(path, 0o600); err != nil {
				return nil, fmt.Errorf("p2p: chmod identity key: %w", err)
			}
		}
		return k, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("p2p: read identity key: %w", err)
	}

	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("p2p: generate identity key: %w", err)
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("p2p: marshal identity key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("p2p: create key dir: %w", err)
	}
	if err := writeFileAtomic(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("p2p: write identity key: %w", err)
	}
	log.Info("created new identity key", "path", path)
	return k, nil
}

// writeFileAtomic writes via a temp file and rename, so a crash never leaves a truncated key.
func writeFileAtomic(path string, b []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// loadSwarmKey reads a PSK file in the go-libp2p/IPFS swarm.key format.
func loadSwarmKey(path string) (pnet.PSK, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("p2p.swarm_key_file: %w", err)
	}
	defer f.Close()
	psk, err := pnet.DecodeV1PSK(f)
	if err != nil {
		return nil, fmt.Errorf("p2p.swarm_key_file: %s: %w (expected /key/swarm/psk/1.0.0/, /base16/, 64 hex digits)", path, err)
	}
	return psk, nil
}

// swarmKeyFingerprint names a swarm key without revealing it: nodes that show the same
// fingerprint (shoal status) hold the same key. Domain-separated so it is no general hash of
// the key.
func swarmKeyFingerprint(psk pnet.PSK) string {
	h := sha256.New()
	h.Write([]byte("shoal swarm key fingerprint\n"))
	h.Write(psk)
	return hex.EncodeToString(h.Sum(nil)[:6])
}

// GenerateSwarmKey returns the contents of a new random swarm key file. Every node of a
// cluster needs the same file; see the package documentation.
func GenerateSwarmKey() ([]byte, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("/key/swarm/psk/1.0.0/\n/base16/\n")
	b.WriteString(hex.EncodeToString(k[:]))
	b.WriteString("\n")
	return []byte(b.String()), nil
}
