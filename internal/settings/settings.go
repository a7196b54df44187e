package settings

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/shoal-mirror/shoal/upstream"
)

// Setting is one configuration key of the configuration struct C: where it lives in the YAML
// file, on the command line and in the environment, its default and what it means.
type Setting[C any] struct {
	Key     string // YAML path, "p2p.lookup_timeout"
	Default string // YAML text of the default, `""` for an empty string
	Help    string // one sentence or a few; `code` in backticks
	Flag    string // CLI flag without "--"; "" derives it from Key
	Arg     string // the flag's argument in help, "FILE"; "" = by type
	Reload  bool   // SIGHUP applies it; otherwise a change waits for a restart
	// Ptr points at the setting's field in a C: *string, *bool, *int, *int64 (with Parse),
	// *float64, *time.Duration, *[]string, *map[string]string (hosts) or
	// *map[string]upstream.RegistryConfig (registries).
	Ptr func(*C) any
	// Parse reads the text form of a size held as a number (Ptr is then an *int64).
	Parse func(string) (int64, error)
	given func(*C, string) // Table's: records that a file, variable or flag set Key
}

// Table is a configuration's settings, in the order its documentation lists them.
type Table[C any] struct {
	list []Setting[C]
}

// NewTable completes the table's entries (the flag derived from the key where Flag is empty:
// "." and "_" become "-", and the prefix trimmed from the flag dropped) and remembers given,
// which is told every key a file, variable or flag sets (nil: nobody needs to know).
func NewTable[C any](list []Setting[C], trimmed string, given func(c *C, key string)) *Table[C] {
	list = slices.Clone(list)
	for i := range list {
		s := &list[i]
		if s.Flag == "" {
			s.Flag = strings.NewReplacer(".", "-", "_", "-").Replace(strings.TrimPrefix(s.Key, trimmed))
		}
		s.given = given
	}
	return &Table[C]{list: list}
}

// All returns the table's settings.
func (t *Table[C]) All() []Setting[C] { return slices.Clone(t.list) }

// Kind names the type of a setting's value, as the CLI needs it to build a flag.
type Kind int

// The kinds of settings.
const (
	KindString Kind = iota
	KindBool
	KindInt
	KindFloat
	KindDuration
	KindList       // []string: repeatable flag, comma-separated variable
	KindRegistries // registries: the flag takes HOST=URL
	KindHosts      // a HOST → URL map (files.hosts): the flag takes HOST=URL, `-` removes HOST
)

// Env is the setting's variable, SHOAL_ and the flag in capitals.
func (s Setting[C]) Env() string {
	return "SHOAL_" + strings.ToUpper(strings.ReplaceAll(s.Flag, "-", "_"))
}

// Kind is the type of the setting's value as the CLI takes it (a size is a string).
func (s Setting[C]) Kind() Kind {
	if s.Parse != nil {
		return KindString
	}
	switch s.Ptr(new(C)).(type) {
	case *bool:
		return KindBool
	case *int:
		return KindInt
	case *float64:
		return KindFloat
	case *time.Duration:
		return KindDuration
	case *[]string:
		return KindList
	case *map[string]upstream.RegistryConfig:
		return KindRegistries
	case *map[string]string:
		return KindHosts
	}
	return KindString
}

// Set gives the setting the value v from a flag or variable: a string, bool, int, float64,
// time.Duration or []string as Kind says. The error names the flag.
func (s Setting[C]) Set(c *C, v any) error {
	err := s.set(c, v)
	if err != nil {
		return &ConfigError{Key: "--" + s.Flag, Err: err}
	}
	return nil
}

func (s Setting[C]) set(c *C, v any) error {
	s.note(c)
	if s.Parse != nil {
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("want a size, got %T", v)
		}
		n, err := s.Parse(str)
		if err != nil {
			return err
		}
		reflect.ValueOf(s.Ptr(c)).Elem().SetInt(n)
		return nil
	}
	if regs, ok := s.Ptr(c).(*map[string]upstream.RegistryConfig); ok {
		list, _ := v.([]string)
		for _, hv := range list {
			host, u, ok := strings.Cut(hv, "=")
			if !ok || host == "" || u == "" {
				return fmt.Errorf("%q: want HOST=URL, e.g. docker.io=https://registry-1.docker.io", hv)
			}
			MergeRegistry(regs, host, upstream.RegistryConfig{URL: u})
		}
		return nil
	}
	if hosts, ok := s.Ptr(c).(*map[string]string); ok {
		list, _ := v.([]string)
		for _, hv := range list {
			host, u, ok := strings.Cut(hv, "=")
			if !ok || host == "" || u == "" {
				return fmt.Errorf("%q: want HOST=URL (or HOST=- to remove a host)", hv)
			}
			SetHost(hosts, host, u)
		}
		return nil
	}
	dst := reflect.ValueOf(s.Ptr(c)).Elem()
	val := reflect.ValueOf(v)
	if !val.Type().AssignableTo(dst.Type()) {
		return fmt.Errorf("want %s, got %T", dst.Type(), v)
	}
	dst.Set(val)
	return nil
}

// decode sets the setting from its YAML node. A null node (`key:` with nothing) keeps the
// value as it was.
func (s Setting[C]) decode(c *C, n *yaml.Node) error {
	if n.Tag == "!!null" {
		return nil
	}
	s.note(c)
	if s.Parse != nil {
		if n.Kind != yaml.ScalarNode {
			return fmt.Errorf("line %d: %s: want a size such as 10GiB", n.Line, s.Key)
		}
		v, err := s.Parse(n.Value)
		if err != nil {
			return &ConfigError{Key: s.Key, Err: err}
		}
		reflect.ValueOf(s.Ptr(c)).Elem().SetInt(v)
		return nil
	}
	if regs, ok := s.Ptr(c).(*map[string]upstream.RegistryConfig); ok {
		if err := knownKeys(n, s.Key, reflect.TypeFor[upstream.RegistryConfig]()); err != nil {
			return err
		}
		var m map[string]upstream.RegistryConfig
		if err := n.Decode(&m); err != nil {
			return yamlError(s.Key, err)
		}
		for host, rc := range m {
			MergeRegistry(regs, host, rc)
		}
		return nil
	}
	if hosts, ok := s.Ptr(c).(*map[string]string); ok {
		var m map[string]string
		if err := n.Decode(&m); err != nil {
			return yamlError(s.Key, err)
		}
		for host, u := range m {
			SetHost(hosts, host, u)
		}
		return nil
	}
	// Decode into a fresh value so that a type error leaves the old one.
	dst := reflect.ValueOf(s.Ptr(c)).Elem()
	fresh := reflect.New(dst.Type())
	if err := n.Decode(fresh.Interface()); err != nil {
		return yamlError(s.Key, err)
	}
	dst.Set(fresh.Elem())
	return nil
}

// knownKeys refuses a key under each entry of the mapping n that t has no yaml tag for
// (Node.Decode, unlike a Decoder, has no KnownFields): a misspelt password_file must not
// pass as "no credentials".
func knownKeys(n *yaml.Node, key string, t reflect.Type) error {
	if n.Kind != yaml.MappingNode {
		return nil // Decode names the type error
	}
	known := map[string]bool{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		known[name] = true
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		entry, v := n.Content[i].Value, n.Content[i+1]
		if v.Kind != yaml.MappingNode {
			continue
		}
		for j := 0; j+1 < len(v.Content); j += 2 {
			if k := v.Content[j]; !known[k.Value] {
				return fmt.Errorf("line %d: %s.%q: unknown key %q", k.Line, key, entry, k.Value)
			}
		}
	}
	return nil
}

// yamlError turns a yaml.v3 error about one value into one line naming its key:
// "line 4: tag_ttl: cannot unmarshal !!str `soon` into time.Duration".
func yamlError(key string, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("%s: %s", key, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var out []string
	for _, e := range te.Errors {
		if m := yamlAtLine.FindStringSubmatch(e); m != nil {
			out = append(out, fmt.Sprintf("line %s: %s: %s", m[1], key, m[2]))
			continue
		}
		out = append(out, key+": "+e)
	}
	return errors.New(strings.Join(out, "; "))
}

// note tells the table's given func that a file, variable or flag set the setting.
func (s Setting[C]) note(c *C) {
	if s.given != nil {
		s.given(c, s.Key)
	}
}

// Value is the setting's current value in c, for comparing two configurations.
func (s Setting[C]) Value(c *C) any { return reflect.ValueOf(s.Ptr(c)).Elem().Interface() }

// ApplyYAML overlays the YAML document b (named name in errors) on c. Unknown keys are errors
// naming their line.
func (t *Table[C]) ApplyYAML(c *C, b []byte, name string) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return &ConfigError{Key: name, Err: errors.New(strings.ReplaceAll(strings.TrimPrefix(err.Error(), "yaml: "), "\n", "; "))}
	}
	if len(doc.Content) == 0 {
		return nil
	}
	if err := t.applyNode(c, doc.Content[0], ""); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			return err
		}
		return &ConfigError{Key: name, Err: err}
	}
	return nil
}

func (t *Table[C]) applyNode(c *C, n *yaml.Node, prefix string) error {
	if n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		where := prefix
		if where == "" {
			where = "the file"
		}
		return fmt.Errorf("line %d: %s: want a mapping of keys", n.Line, where)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		if prefix != "" {
			key = prefix + "." + k.Value
		}
		if s, ok := t.Lookup(key); ok {
			if err := s.decode(c, v); err != nil {
				return err
			}
			continue
		}
		if t.isSection(key) {
			if err := t.applyNode(c, v, key); err != nil {
				return err
			}
			continue
		}
		if prefix != "" {
			return fmt.Errorf("line %d: %s: unknown key %q", k.Line, prefix, k.Value)
		}
		return fmt.Errorf("line %d: unknown key %q", k.Line, k.Value)
	}
	return nil
}

// Lookup finds the setting of a YAML key.
func (t *Table[C]) Lookup(key string) (Setting[C], bool) {
	for _, s := range t.list {
		if s.Key == key {
			return s, true
		}
	}
	return Setting[C]{}, false
}

func (t *Table[C]) isSection(key string) bool {
	for _, s := range t.list {
		if strings.HasPrefix(s.Key, key+".") {
			return true
		}
	}
	return false
}

// DefaultsYAML writes the table's defaults as the YAML file `shoal config default` prints,
// each key under its section.
func (t *Table[C]) DefaultsYAML() []byte {
	var b strings.Builder
	b.WriteString("# shoal's built-in configuration. `shoal config default` prints it; a --config file uses the\n")
	b.WriteString("# same keys and overrides these; SHOAL_* environment variables override the file; flags override all.\n")
	b.WriteString("# Every key: docs/configuration.md.\n")
	section := ""
	for _, s := range t.list {
		sec, name, nested := strings.Cut(s.Key, ".")
		if !nested {
			sec, name = "", s.Key
		}
		if sec != section {
			section = sec
			if sec != "" {
				fmt.Fprintf(&b, "%s:\n", sec)
			}
		}
		indent := ""
		if sec != "" {
			indent = "  "
		}
		fmt.Fprintf(&b, "%s%s: %s\n", indent, name, s.Default)
	}
	return []byte(b.String())
}

// Markdown is the reference table of docs/configuration.md.
func (t *Table[C]) Markdown() string {
	var b strings.Builder
	b.WriteString("| YAML key | flag | env | default | reload | meaning |\n|---|---|---|---|---|---|\n")
	for _, s := range t.list {
		arg := s.Arg
		if arg == "" {
			arg = argByKind(s.Kind())
		}
		flag := "`--" + s.Flag
		if arg != "" {
			flag += " " + arg
		}
		flag += "`"
		if s.Kind() == KindList || s.Kind() == KindRegistries {
			flag += " (repeatable)"
		}
		reload := "restart"
		if s.Reload {
			reload = "SIGHUP"
		}
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | `%s` | %s | %s |\n", s.Key, strings.ReplaceAll(flag, "|", `\|`), s.Env(),
			strings.ReplaceAll(s.Default, "|", `\|`), reload, strings.ReplaceAll(s.Help, "|", `\|`))
	}
	return b.String()
}

// Schema is the JSON schema (draft-07) of the configuration file, made from the table:
// every key with its type, default and help, no other key. The Helm chart's values.schema.json
// holds it as the schema of its `config` value, so that `helm install` refuses a misspelt key or
// a value the daemon would refuse to decode (TestDocsTable rewrites it there).
func (t *Table[C]) Schema() []byte {
	props := jsonObject{}
	sections := map[string]int{} // section → its index in props
	for _, s := range t.list {
		sec, name, nested := strings.Cut(s.Key, ".")
		if !nested {
			props = append(props, jsonMember{s.Key, s.schema()})
			continue
		}
		i, ok := sections[sec]
		if !ok {
			i = len(props)
			sections[sec] = i
			props = append(props, jsonMember{sec, jsonObject{{"type", "object"}, {"additionalProperties", false}, {"properties", jsonObject{}}}})
		}
		obj := props[i].v.(jsonObject)
		obj[2].v = append(obj[2].v.(jsonObject), jsonMember{name, s.schema()})
	}
	b, err := jsonText(jsonObject{{"type", "object"}, {"additionalProperties", false}, {"properties", props}})
	if err != nil {
		panic("settings table: " + err.Error()) // defaults are YAML scalars, lists and maps: the tests catch it
	}
	var out bytes.Buffer
	_ = json.Indent(&out, b, "", "  ")
	return out.Bytes()
}

// schema is the setting's JSON schema: its type as the YAML decoding takes it, its default and
// its help.
func (s Setting[C]) schema() jsonObject {
	var o jsonObject
	switch k := s.Kind(); {
	case s.Parse != nil: // a size: 10GiB, or a number of bytes
		o = jsonObject{{"type", []string{"string", "integer"}}}
	case k == KindBool:
		o = jsonObject{{"type", "boolean"}}
	case k == KindInt:
		o = jsonObject{{"type", "integer"}}
	case k == KindFloat:
		o = jsonObject{{"type", "number"}}
	case k == KindDuration: // yaml.v3 refuses a number for a time.Duration
		o = jsonObject{{"type", "string"}}
	case k == KindList:
		o = jsonObject{{"type", "array"}, {"items", jsonObject{{"type", "string"}}}}
	case k == KindHosts:
		o = jsonObject{{"type", "object"}, {"additionalProperties", jsonObject{{"type", "string"}}}}
	case k == KindRegistries:
		o = jsonObject{{"type", "object"}, {"additionalProperties", structSchema(reflect.TypeFor[upstream.RegistryConfig]())}}
	default: // yaml.v3 decodes any scalar into a string
		o = jsonObject{{"type", []string{"string", "integer", "number"}}}
	}
	var def any
	if err := yaml.Unmarshal([]byte(s.Default), &def); err == nil {
		o = append(o, jsonMember{"default", def})
	}
	return append(o, jsonMember{"description", s.Help})
}

// structSchema is the schema of one entry of a map of structs (registries.HOST): the fields
// the struct has a yaml tag for, nothing else (knownKeys refuses the rest); null is an entry
// with every field empty (`ghcr.io:`).
func structSchema(t reflect.Type) jsonObject {
	props := jsonObject{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		var typ jsonObject
		switch f.Type.Kind() {
		case reflect.Bool:
			typ = jsonObject{{"type", "boolean"}}
		case reflect.Int, reflect.Int64:
			typ = jsonObject{{"type", "integer"}}
		case reflect.Slice:
			typ = jsonObject{{"type", "array"}, {"items", jsonObject{{"type", "string"}}}}
		default:
			typ = jsonObject{{"type", "string"}}
		}
		props = append(props, jsonMember{name, typ})
	}
	return jsonObject{{"type", []string{"object", "null"}}, {"additionalProperties", false}, {"properties", props}}
}

// jsonObject is a JSON object that keeps its members' order (the table's), which a Go map
// would sort.
type jsonObject []jsonMember

type jsonMember struct {
	k string
	v any
}

// MarshalJSON writes the members in order.
func (o jsonObject) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := jsonText(m.k)
		if err != nil {
			return nil, err
		}
		v, err := jsonText(m.v)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// jsonText is v in JSON with <, > and & as they are (help texts hold `<data_dir>`).
func jsonText(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func argByKind(k Kind) string {
	switch k {
	case KindDuration:
		return "DURATION"
	case KindInt, KindFloat:
		return "N"
	}
	return ""
}

// RestartNeeded lists the settings that differ between the running and the new
// configuration but cannot change while running.
func (t *Table[C]) RestartNeeded(old, cur *C) []string {
	var keys []string
	for _, s := range t.list {
		if !s.Reload && !reflect.DeepEqual(s.Value(old), s.Value(cur)) {
			keys = append(keys, s.Key)
		}
	}
	return keys
}

// SetHost adds host → u to a host map that starts from built-in hosts; u "-" removes host.
func SetHost(hosts *map[string]string, host, u string) {
	if u == "-" {
		delete(*hosts, host)
		return
	}
	if *hosts == nil {
		*hosts = map[string]string{}
	}
	(*hosts)[host] = u
}

// MergeRegistry merges rc into the configuration for host: fields given in rc win, the rest
// stay.
func MergeRegistry(regs *map[string]upstream.RegistryConfig, host string, rc upstream.RegistryConfig) {
	if *regs == nil {
		*regs = map[string]upstream.RegistryConfig{}
	}
	cur := (*regs)[host]
	if rc.URL != "" {
		cur.URL = rc.URL
	}
	if rc.Username != "" {
		cur.Username = rc.Username
	}
	if rc.Password != "" {
		cur.Password = rc.Password
	}
	if rc.PasswordFile != "" {
		cur.PasswordFile = rc.PasswordFile
	}
	if rc.RealmHosts != nil {
		cur.RealmHosts = rc.RealmHosts
	}
	if rc.WriteThrough {
		cur.WriteThrough = true
	}
	(*regs)[host] = cur
}

// ConfigError names the key that is wrong; the CLI prints it on one line and exits with 2.
type ConfigError struct {
	Key string
	Err error
}

// Error is one line, whatever the wrapped error: several problems are joined with "; ".
func (e *ConfigError) Error() string {
	return strings.ReplaceAll(fmt.Sprintf("config: %s: %v", e.Key, e.Err), "\n", "; ")
}

// Unwrap is the wrapped error.
func (e *ConfigError) Unwrap() error { return e.Err }

// yamlAtLine splits yaml.v3's "line 4: cannot unmarshal …" into its line and message.
var yamlAtLine = regexp.MustCompile(`line (\d+): (.*)`)
