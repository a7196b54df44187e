package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// prefixTombstone keys what a delete decided: "ns/repo@digest" -> Tombstone (JSON).
const prefixTombstone = "x/"

// Tombstone records that a name was deleted (the push namespace: a manifest deleted by digest
// from a repository). Unlike a tag it does not name stored content, so it outlives the content
// it was about: a node that restarts still answers the name as deleted.
type Tombstone struct {
	// Seq is the sequence of the record that decided the delete (the swarm's tag record);
	// only a newer live record undoes it.
	Seq int64 `json:"seq"`
	// Seen is when this node learned of the delete.
	Seen time.Time `json:"seen"`
}

// PutTombstone records that name was deleted.
func (s *Store) PutTombstone(ctx context.Context, name string, t Tombstone) error {
	if name == "" || strings.ContainsAny(name, "\n\x00") || len(name) > 1024 {
		return fmt.Errorf("store: tombstone name %q: must be 1..1024 bytes without newlines", name)
	}
	b, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("store: tombstone %s: %w", name, err)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.isClosed() {
		return ErrClosed
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(prefixTombstone+name), b) }); err != nil {
		return s.dbErr("tombstone "+name, err)
	}
	return nil
}

// GetTombstone returns the tombstone of name, or ErrNotFound when name is not deleted.
func (s *Store) GetTombstone(ctx context.Context, name string) (Tombstone, error) {
	var t Tombstone
	if s.isClosed() {
		return t, ErrClosed
	}
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(prefixTombstone + name))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return json.Unmarshal(v, &t) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return t, fmt.Errorf("%w: tombstone %s", ErrNotFound, name)
	}
	if err != nil {
		return t, s.dbErr("tombstone "+name, err)
	}
	return t, nil
}

// DeleteTombstone forgets that name was deleted (it was pushed again); no error when it was
// not.
func (s *Store) DeleteTombstone(ctx context.Context, name string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.isClosed() {
		return ErrClosed
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(prefixTombstone + name)) }); err != nil {
		return s.dbErr("delete tombstone "+name, err)
	}
	return nil
}

// Referenced reports whether a stored manifest lists d among its references (SetRefs).
func (s *Store) Referenced(d digest.Digest) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for m, refs := range s.refs {
		if s.idx[m] != nil && slices.Contains(refs, d) {
			return true
		}
	}
	return false
}
