package fetch

import (
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestSizeMemo(t *testing.T) {
	t.Parallel()
	m := newSizeMemo(2)
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.FromString("c")
	m.learn([]byte(fmt.Sprintf(`{"config":{"digest":%q,"size":1},"layers":[{"digest":%q,"size":2}]}`, a, b)))
	if n, ok := m.size(a); !ok || n != 1 {
		t.Errorf("config size %d %v", n, ok)
	}
	m.add(b, 3) // another manifest disagrees: the size is forgotten
	if _, ok := m.size(b); ok {
		t.Error("a disputed size is still used")
	}
	m.learn([]byte(fmt.Sprintf(`{"manifests":[{"digest":%q,"size":5}]}`, c)))
	if _, ok := m.size(a); ok {
		t.Error("the oldest entry was not forgotten at the bound")
	}
	if n, ok := m.size(c); !ok || n != 5 || len(m.sizes) != 2 {
		t.Errorf("index entry size %d %v, %d entries", n, ok, len(m.sizes))
	}
}
