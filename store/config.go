package store

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Config configures a Store. The zero values of MaxSize and MinFree mean "default" and "none";
// DefaultConfig fills in the rest.
type Config struct {
	// Dir is the data directory. The store owns Dir/blobs (content files named by digest),
	// Dir/tmp (temporary and to-be-deleted files, emptied at Open), Dir/index (Badger) and
	// Dir/LOCK (one process per directory).
	Dir string
	// MaxSize is the budget in bytes for stored content. 0 means half of the space the store
	// could use when it opens: the filesystem's available bytes plus what the store already
	// holds. That share is stable across restarts (a store holding its full share computes the
	// same share again) and leaves the other half to the workloads beside it.
	MaxSize int64
	// MinFree keeps this much of the filesystem free, as bytes ("10GiB") or a percentage of the
	// filesystem's size ("10%"). "" means no floor. The store evicts to stay above it and refuses
	// a commit it cannot fit above it, so a full disk degrades the mirror to a pass-through.
	MinFree string
	// TTL removes content not read for this long, on the periodic sweep. 0 turns it off.
	TTL time.Duration
	// GCInterval is the period of the background sweep (TTL, budget, min-free, stale tags).
	GCInterval time.Duration
}

// Defaults, exported so that the daemon's documentation can quote them.
const (
	DefaultTTL        = 30 * 24 * time.Hour
	DefaultGCInterval = time.Hour
	// DefaultMinFree stays at the kubelet's default hard-eviction threshold (nodefs.available <
	// 10%); nodes where the kubelet runs with a higher threshold should raise it.
	DefaultMinFree = "10%"
)

// DefaultConfig returns the defaults: MaxSize 0 (half of the usable space, see Config.MaxSize),
// MinFree 10%, TTL 30 days, GC every hour. Dir is left for the caller.
func DefaultConfig() Config {
	return Config{MinFree: DefaultMinFree, TTL: DefaultTTL, GCInterval: DefaultGCInterval}
}

// Validate reports the first invalid setting, naming its configuration key.
func (c Config) Validate() error {
	if c.Dir == "" {
		return errors.New("store.dir: must be set")
	}
	if c.MaxSize < 0 {
		return fmt.Errorf("store.max_size: %d: must not be negative", c.MaxSize)
	}
	if _, _, err := parseMinFree(c.MinFree); err != nil {
		return fmt.Errorf("store.min_free: %w", err)
	}
	if c.TTL < 0 {
		return fmt.Errorf("store.ttl: %v: must not be negative (0 turns it off)", c.TTL)
	}
	if c.GCInterval <= 0 {
		return fmt.Errorf("store.gc_interval: %v: must be positive", c.GCInterval)
	}
	return nil
}

var sizeUnits = map[string]float64{
	"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "ki": 1 << 10, "kib": 1 << 10,
	"m": 1e6, "mb": 1e6, "mi": 1 << 20, "mib": 1 << 20,
	"g": 1e9, "gb": 1e9, "gi": 1 << 30, "gib": 1 << 30,
	"t": 1e12, "tb": 1e12, "ti": 1 << 40, "tib": 1 << 40,
	"p": 1e15, "pb": 1e15, "pi": 1 << 50, "pib": 1 << 50,
}

// ParseSize parses a byte size: a decimal number, optionally with a fraction, and an optional
// unit. K/KB, M/MB, G/GB, T/TB, P/PB are powers of 1000; Ki/KiB, Mi/MiB, Gi/GiB, Ti/TiB, Pi/PiB
// powers of 1024; units are case-insensitive and may follow a space. Examples: "1000",
// "512MiB", "1.5GB", "50GiB".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	if num == "" {
		return 0, fmt.Errorf("size %q: want a number with an optional unit such as 512MiB or 50GiB", s)
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)", s, t[i:])
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: bad number %q", s, num)
	}
	v := math.Round(f * mult)
	if v >= math.MaxInt64 || math.IsInf(v, 0) {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return int64(v), nil
}

// parseMinFree parses Config.MinFree into either bytes or a fraction of the filesystem.
func parseMinFree(s string) (bytes int64, fraction float64, err error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, 0, nil
	}
	if p, ok := strings.CutSuffix(t, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || f < 0 || f >= 100 || math.IsNaN(f) {
			return 0, 0, fmt.Errorf("%q: want a percentage in [0, 100) such as 10%%, or a size such as 10GiB", s)
		}
		return 0, f / 100, nil
	}
	n, err := ParseSize(t)
	if err != nil {
		return 0, 0, fmt.Errorf("want a size such as 10GiB or a percentage such as 10%%: %w", err)
	}
	return n, 0, nil
}
