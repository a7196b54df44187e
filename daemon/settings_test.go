package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const (
	docsTableStart = "<!-- settings table: generated from daemon/config.go"
	docsTableEnd   = "<!-- end of settings table -->"
)

// The reference in docs/configuration.md is the settings table, row for row.
// SHOAL_WRITE_DOCS=1 rewrites it.
func TestDocsTableIsTheSettingsTable(t *testing.T) {
	const path = "../docs/configuration.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, docsTableStart), strings.Index(doc, docsTableEnd)
	if i < 0 || j < i {
		t.Fatalf("%s: no %q … %q section", path, docsTableStart, docsTableEnd)
	}
	i += strings.Index(doc[i:], "\n") + 1
	want := SettingsMarkdown()
	if doc[i:j] == want {
		return
	}
	if os.Getenv("SHOAL_WRITE_DOCS") == "1" {
		if err := os.WriteFile(path, []byte(doc[:i]+want+doc[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote %s", path)
		return
	}
	got := strings.Split(doc[i:j], "\n")
	for n, w := range strings.Split(want, "\n") {
		if n >= len(got) || got[n] != w {
			t.Fatalf("%s differs from the settings table at row %d:\n got %q\nwant %q\n(SHOAL_WRITE_DOCS=1 go test ./daemon -run TestDocsTable rewrites it)", path, n, at(got, n), w)
		}
	}
	t.Fatalf("%s has rows the settings table has not", path)
}

// The Helm chart's values.schema.json holds ConfigSchema as the schema of its `config` value: a
// new setting reaches the chart without a hand edit. SHOAL_WRITE_DOCS=1 rewrites it (the rest of
// the file is the chart's own and stays as it is).
func TestDocsTableInChartSchema(t *testing.T) {
	const path = "../contrib/helm/shoal/values.schema.json"
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	start, end, err := jsonValueSpan(doc, "properties", "config")
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var want bytes.Buffer
	if err := json.Indent(&want, ConfigSchema(), "    ", "  "); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(doc[start:end], want.Bytes()) {
		return
	}
	if os.Getenv("SHOAL_WRITE_DOCS") == "1" {
		out := append(append(append([]byte{}, doc[:start]...), want.Bytes()...), doc[end:]...)
		if !json.Valid(out) {
			t.Fatalf("rewriting %s would make it invalid JSON", path)
		}
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote %s", path)
		return
	}
	got := strings.Split(string(doc[start:end]), "\n")
	for n, w := range strings.Split(want.String(), "\n") {
		if n >= len(got) || got[n] != w {
			t.Fatalf("%s: properties.config differs from the settings table at its line %d:\n got %q\nwant %q\n(SHOAL_WRITE_DOCS=1 go test ./daemon -run TestDocsTable rewrites it)", path, n+1, at(got, n), w)
		}
	}
	t.Fatalf("%s: properties.config has lines the settings table has not", path)
}

// jsonValueSpan finds the value at path (object keys) in the JSON document doc: doc[start:end].
func jsonValueSpan(doc []byte, path ...string) (start, end int, err error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	for depth, key := range path {
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			return 0, 0, fmt.Errorf("%s: not an object (%v, %v)", strings.Join(path[:depth], "."), tok, err)
		}
		for {
			if !dec.More() {
				return 0, 0, fmt.Errorf("no %s", strings.Join(path[:depth+1], "."))
			}
			tok, err := dec.Token()
			if err != nil {
				return 0, 0, err
			}
			if tok == key {
				break
			}
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return 0, 0, err
			}
		}
	}
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return 0, 0, err
	}
	end = int(dec.InputOffset())
	start = end - len(raw)
	if !bytes.Equal(doc[start:end], raw) {
		return 0, 0, errors.New("value not where the decoder says")
	}
	return start, end, nil
}

// Where other docs write a setting's default by hand (a table row "| `key` | `default` |", or
// "`key` (default `value`)"), it is the table's default.
func TestDocsTableDefaultsElsewhere(t *testing.T) {
	files, err := filepath.Glob("../docs/*.md")
	if err != nil || len(files) == 0 {
		t.Fatalf("no docs: %v", err)
	}
	files = append(files, "../README.md")
	said := regexp.MustCompile("^\\| `([a-z0-9_.]+)` \\| `([^`]*)` \\||`([a-z0-9_.]+)` \\(default `([^`]*)`\\)")
	checked := 0
	for _, f := range files {
		if filepath.Base(f) == "configuration.md" {
			continue // generated, TestDocsTableIsTheSettingsTable
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range strings.Split(string(b), "\n") {
			for _, m := range said.FindAllStringSubmatch(line, -1) {
				key, def := m[1]+m[3], m[2]+m[4]
				s, ok := settingByKey(key)
				if !ok {
					continue
				}
				checked++
				if def != s.Default && !(def == "" && s.Default == `""`) {
					t.Errorf("%s:%d: %s's default written as %q, the settings table says %q", f, n+1, key, def, s.Default)
				}
			}
		}
	}
	if checked == 0 {
		t.Error("no default written in the docs found: the pattern no longer matches them")
	}
}

func at(l []string, n int) string {
	if n < len(l) {
		return l[n]
	}
	return "(nothing)"
}

// Every entry reaches its own field: a value other than the default, given in the file, shows
// up in that entry's field and in no other entry's.
func TestEverySettingReachesItsField(t *testing.T) {
	other := map[Kind]string{KindString: "x.example:1", KindBool: "", KindInt: "7", KindFloat: "2.5",
		KindDuration: "7s", KindList: "[10.1.2.0/24]", KindRegistries: "{ghcr.io: {url: https://ghcr.example}}", KindHosts: "{hf.example: http://127.0.0.1:1}"}
	keys := map[string]bool{}
	for _, s := range table.All() {
		if keys[s.Key] {
			t.Errorf("%s declared twice", s.Key)
		}
		keys[s.Key] = true
		t.Run(s.Key, func(t *testing.T) {
			v := other[s.Kind()]
			switch {
			case s.Parse != nil:
				v = "3MiB"
			case s.Kind() == KindBool:
				v = fmt.Sprint(s.Default != "true")
			}
			base := DefaultConfig()
			c := DefaultConfig()
			sec, name, nested := strings.Cut(s.Key, ".")
			doc := fmt.Sprintf("%s: %s\n", s.Key, v)
			if nested {
				doc = fmt.Sprintf("%s:\n  %s: %s\n", sec, name, v)
			}
			if err := c.applyYAML([]byte(doc), "t.yaml"); err != nil {
				t.Fatal(err)
			}
			for _, o := range table.All() {
				changed := !reflect.DeepEqual(o.Value(&base), o.Value(&c))
				if changed != (o.Key == s.Key) {
					t.Errorf("setting %s = %s: %s changed: %v", s.Key, v, o.Key, changed)
				}
			}
		})
	}
}

// The table's defaults decode into the types the table says (a typo in a default would
// otherwise only panic at start).
func TestSettingsDefaultsParse(t *testing.T) {
	var m map[string]any
	if err := yaml.Unmarshal(DefaultsYAML(), &m); err != nil {
		t.Fatalf("shoal config default is not YAML: %v", err)
	}
	c := DefaultConfig()
	if c.TagTTL != 30*time.Second || c.Guard.MaxHeaderBytes != 32<<10 || c.P2P.MaxUploadsPerBlob != 4 || len(c.Guard.AuthExemptCIDR) != 2 {
		t.Fatalf("defaults: %+v", c)
	}
}

// A SIGHUP names exactly the non-reloadable settings that changed.
func TestRestartNeededNamesTheKeys(t *testing.T) {
	a, b := DefaultConfig(), DefaultConfig()
	b.AdminListen = "unix:/tmp/x.sock"
	b.Guard.RateLimit = 5 // reloadable
	b.P2P.StallTimeout = time.Second
	if got := restartNeeded(a, b); !reflect.DeepEqual(got, []string{"admin_listen", "p2p.stall_timeout"}) {
		t.Fatalf("restartNeeded = %v", got)
	}
}
