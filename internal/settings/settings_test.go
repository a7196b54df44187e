package settings

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/upstream"
)

// A small configuration of every kind, to test the machinery apart from daemon's table
// (daemon's own tests check its table: TestDocsTable, TestEverySettingReachesItsField).
type testConfig struct {
	Name    string
	On      bool
	N       int
	Rate    float64
	Wait    time.Duration
	CIDRs   []string
	Regs    map[string]upstream.RegistryConfig
	Hosts   map[string]string
	MaxSize int64
	given   []string
}

func testTable() *Table[testConfig] {
	return NewTable([]Setting[testConfig]{
		{Key: "name", Default: "a", Ptr: func(c *testConfig) any { return &c.Name }},
		{Key: "sec.on", Default: "true", Reload: true, Ptr: func(c *testConfig) any { return &c.On }},
		{Key: "sec.max_n", Default: "3", Ptr: func(c *testConfig) any { return &c.N }},
		{Key: "rate", Default: "1.5", Ptr: func(c *testConfig) any { return &c.Rate }},
		{Key: "wait", Default: "2s", Ptr: func(c *testConfig) any { return &c.Wait }},
		{Key: "cidrs", Default: "[]", Ptr: func(c *testConfig) any { return &c.CIDRs }},
		{Key: "registries", Default: "{}", Flag: "registry", Ptr: func(c *testConfig) any { return &c.Regs }},
		{Key: "hosts", Default: "{}", Flag: "host", Ptr: func(c *testConfig) any { return &c.Hosts }},
		{Key: "max_size", Default: `""`, Ptr: func(c *testConfig) any { return &c.MaxSize },
			Parse: func(s string) (int64, error) { return int64(len(s)), nil }},
	}, "sec.", func(c *testConfig, key string) { c.given = append(c.given, key) })
}

func TestTableFlagsKindsAndEnv(t *testing.T) {
	want := map[string]struct {
		flag, env string
		kind      Kind
	}{
		"name": {"name", "SHOAL_NAME", KindString}, "sec.on": {"on", "SHOAL_ON", KindBool},
		"sec.max_n": {"max-n", "SHOAL_MAX_N", KindInt}, "rate": {"rate", "SHOAL_RATE", KindFloat},
		"wait": {"wait", "SHOAL_WAIT", KindDuration}, "cidrs": {"cidrs", "SHOAL_CIDRS", KindList},
		"registries": {"registry", "SHOAL_REGISTRY", KindRegistries}, "hosts": {"host", "SHOAL_HOST", KindHosts},
		"max_size": {"max-size", "SHOAL_MAX_SIZE", KindString},
	}
	for _, s := range testTable().All() {
		w := want[s.Key]
		if s.Flag != w.flag || s.Env() != w.env || s.Kind() != w.kind {
			t.Errorf("%s: flag %q env %q kind %v; want %q %q %v", s.Key, s.Flag, s.Env(), s.Kind(), w.flag, w.env, w.kind)
		}
	}
}

func TestTableApplyYAML(t *testing.T) {
	tb := testTable()
	var c testConfig
	if err := tb.ApplyYAML(&c, tb.DefaultsYAML(), "defaults"); err != nil {
		t.Fatalf("the table's own defaults: %v", err)
	}
	if c.Name != "a" || !c.On || c.N != 3 || c.Rate != 1.5 || c.Wait != 2*time.Second {
		t.Fatalf("defaults decoded as %+v", c)
	}
	c.given = nil
	doc := "sec:\n  max_n: 9\nregistries:\n  ghcr.io: {url: https://ghcr.example}\nhosts: {hf.example: http://127.0.0.1:1}\nmax_size: 10GiB\n"
	if err := tb.ApplyYAML(&c, []byte(doc), "t.yaml"); err != nil {
		t.Fatal(err)
	}
	if c.N != 9 || c.Regs["ghcr.io"].URL != "https://ghcr.example" || c.Hosts["hf.example"] != "http://127.0.0.1:1" || c.MaxSize != 5 {
		t.Fatalf("file decoded as %+v", c)
	}
	if !reflect.DeepEqual(c.given, []string{"sec.max_n", "registries", "hosts", "max_size"}) {
		t.Errorf("given keys %v", c.given)
	}
	for doc, want := range map[string]string{
		"sec:\n  max_m: 1\n": `config: t.yaml: line 2: sec: unknown key "max_m"`,
		"nope: 1\n":          `config: t.yaml: line 1: unknown key "nope"`,
		"wait: soon\n":       "config: t.yaml: line 1: wait: cannot unmarshal !!str `soon` into time.Duration",
		"registries:\n  x.io: {pasword_file: /f}\n": `config: t.yaml: line 2: registries."x.io": unknown key "pasword_file"`,
	} {
		before := c.Wait
		err := tb.ApplyYAML(&c, []byte(doc), "t.yaml")
		var ce *ConfigError
		if !errors.As(err, &ce) || err.Error() != want {
			t.Errorf("%q: error %v, want %s", doc, err, want)
		}
		if c.Wait != before {
			t.Errorf("%q: a refused value changed wait to %s", doc, c.Wait)
		}
	}
}

func TestSettingSetAndRestartNeeded(t *testing.T) {
	tb := testTable()
	var a, b testConfig
	_ = tb.ApplyYAML(&a, tb.DefaultsYAML(), "defaults")
	_ = tb.ApplyYAML(&b, tb.DefaultsYAML(), "defaults")
	on, _ := tb.Lookup("sec.on")
	n, _ := tb.Lookup("sec.max_n")
	regs, _ := tb.Lookup("registries")
	if err := on.Set(&b, false); err != nil {
		t.Fatal(err)
	}
	if err := n.Set(&b, 4); err != nil {
		t.Fatal(err)
	}
	if err := n.Set(&b, "4"); err == nil || !strings.HasPrefix(err.Error(), "config: --max-n: want int") {
		t.Errorf("a string for an int flag: %v", err)
	}
	if err := regs.Set(&b, []string{"docker.io"}); err == nil || !strings.Contains(err.Error(), "want HOST=URL") {
		t.Errorf("--registry without a URL: %v", err)
	}
	if got := tb.RestartNeeded(&a, &b); !reflect.DeepEqual(got, []string{"sec.max_n"}) {
		t.Errorf("RestartNeeded = %v, want [sec.max_n] (sec.on is reloadable)", got)
	}
}
