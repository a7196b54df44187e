package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// A tombstone outlives the content it is about and a reopen of the store; deleting it undoes it.
func TestTombstoneSurvivesReopenAndContent(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openStore(t, testConfig(dir))
	d := put(t, s, []byte(`{"schemaVersion":2}`))
	name := "shoal.local/team/app@" + d.String()
	if _, err := s.GetTombstone(ctx, name); !errors.Is(err, ErrNotFound) {
		t.Fatalf("before: %v", err)
	}
	seen := time.Now().Truncate(time.Second)
	if err := s.PutTombstone(ctx, name, Tombstone{Seq: 42, Seen: seen}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, testConfig(dir))
	got, err := s.GetTombstone(ctx, name)
	if err != nil || got.Seq != 42 || !got.Seen.Equal(seen) {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
	if err := s.DeleteTombstone(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetTombstone(ctx, name); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.DeleteTombstone(ctx, name); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if err := s.PutTombstone(ctx, "bad\nname", Tombstone{}); err == nil {
		t.Fatal("a name with a newline was accepted")
	}
}

// Referenced sees the references of stored manifests only.
func TestReferenced(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	blob := put(t, s, []byte("a layer"))
	m := put(t, s, []byte(`{"layers":["a layer"]}`))
	if s.Referenced(blob) {
		t.Fatal("referenced before SetRefs")
	}
	if err := s.SetRefs(ctx, m, []digest.Digest{blob}); err != nil {
		t.Fatal(err)
	}
	if !s.Referenced(blob) || s.Referenced(m) {
		t.Fatalf("after SetRefs: blob %v, manifest %v", s.Referenced(blob), s.Referenced(m))
	}
	if err := s.Delete(ctx, m); err != nil {
		t.Fatal(err)
	}
	if s.Referenced(blob) {
		t.Fatal("still referenced after its manifest was deleted")
	}
}
