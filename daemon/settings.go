package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// Setting is one configuration key: where it lives in the YAML file, on the command line and
// in the environment, its default and what it means.
type Setting struct {
	Key     string // YAML path, "p2p.lookup_timeout"
	Default string // YAML text of the default, `""` for an empty string
	Help    string // one sentence or a few; `code` in backticks
	Flag    string // CLI flag without "--"; "" derives it from Key
	Arg     string // the flag's argument in help, "FILE"; "" = by type
	Reload  bool   // SIGHUP applies it; otherwise a change waits for a restart
	ptr     func(*Config) any
	parse   func(string) (int64, error) // text form of a size held as a number
}

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

// Settings returns the table, each entry with its flag and variable filled in.
func Settings() []Setting { return slices.Clone(settings) }

func init() {
	for i := range settings {
		s := &settings[i]
		if s.Flag == "" {
			s.Flag = strings.NewReplacer(".", "-", "_", "-").Replace(strings.TrimPrefix(s.Key, "security."))
		}
	}
}

// Env is the setting's variable, SHOAL_ and the flag in capitals.
func (s Setting) Env() string {
	return "SHOAL_" + strings.ToUpper(strings.ReplaceAll(s.Flag, "-", "_"))
}

// Kind is the type of the setting's value as the CLI takes it (a size is a string).
func (s Setting) Kind() Kind {
	if s.parse != nil {
		return KindString
	}
	switch s.ptr(&Config{}).(type) {
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
func (s Setting) Set(c *Config, v any) error {
	err := s.set(c, v)
	if err != nil {
		return &ConfigError{Key: "--" + s.Flag, Err: err}
	}
	return nil
}

func (s Setting) set(c *Config, v any) error {
	c.given(s.Key)
	if s.parse != nil {
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("want a size, got %T", v)
		}
		n, err := s.parse(str)
		if err != nil {
			return err
		}
		reflect.ValueOf(s.ptr(c)).Elem().SetInt(n)
		return nil
	}
	if regs, ok := s.ptr(c).(*map[string]upstream.RegistryConfig); ok {
		list, _ := v.([]string)
		for _, hv := range list {
			host, u, ok := strings.Cut(hv, "=")
			if !ok || host == "" || u == "" {
				return fmt.Errorf("%q: want HOST=URL, e.g. docker.io=https://registry-1.docker.io", hv)
			}
			setRegistry(regs, host, upstream.RegistryConfig{URL: u})
		}
		return nil
	}
	if hosts, ok := s.ptr(c).(*map[string]string); ok {
		list, _ := v.([]string)
		for _, hv := range list {
			host, u, ok := strings.Cut(hv, "=")
			if !ok || host == "" || u == "" {
				return fmt.Errorf("%q: want HOST=URL (or HOST=- to remove a host)", hv)
			}
			setHost(hosts, host, u)
		}
		return nil
	}
	dst := reflect.ValueOf(s.ptr(c)).Elem()
	val := reflect.ValueOf(v)
	if !val.Type().AssignableTo(dst.Type()) {
		return fmt.Errorf("want %s, got %T", dst.Type(), v)
	}
	dst.Set(val)
	return nil
}

// decode sets the setting from its YAML node. A null node (`key:` with nothing) keeps the
// value as it was.
func (s Setting) decode(c *Config, n *yaml.Node) error {
	if n.Tag == "!!null" {
		return nil
	}
	c.given(s.Key)
	if s.parse != nil {
		if n.Kind != yaml.ScalarNode {
			return fmt.Errorf("line %d: %s: want a size such as 10GiB", n.Line, s.Key)
		}
		v, err := s.parse(n.Value)
		if err != nil {
			return &ConfigError{Key: s.Key, Err: err}
		}
		reflect.ValueOf(s.ptr(c)).Elem().SetInt(v)
		return nil
	}
	if regs, ok := s.ptr(c).(*map[string]upstream.RegistryConfig); ok {
		if err := knownKeys(n, s.Key, reflect.TypeFor[upstream.RegistryConfig]()); err != nil {
			return err
		}
		var m map[string]upstream.RegistryConfig
		if err := n.Decode(&m); err != nil {
			return yamlError(s.Key, err)
		}
		for host, rc := range m {
			setRegistry(regs, host, rc)
		}
		return nil
	}
	if hosts, ok := s.ptr(c).(*map[string]string); ok {
		var m map[string]string
		if err := n.Decode(&m); err != nil {
			return yamlError(s.Key, err)
		}
		for host, u := range m {
			setHost(hosts, host, u)
		}
		return nil
	}
	// Decode into a fresh value so that a type error leaves the old one.
	dst := reflect.ValueOf(s.ptr(c)).Elem()
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

// given records that a file, variable or flag set key.
func (c *Config) given(key string) {
	if c.explicit == nil {
		c.explicit = map[string]bool{}
	}
	c.explicit[key] = true
}

// value is the setting's current value in c, for comparing two configurations.
func (s Setting) value(c *Config) any { return reflect.ValueOf(s.ptr(c)).Elem().Interface() }

func parseSize(emptyIsZero bool) func(string) (int64, error) {
	return func(v string) (int64, error) {
		if v == "" {
			return 0, nil
		}
		n, err := store.ParseSize(v)
		if err != nil {
			return 0, err
		}
		if n == 0 && !emptyIsZero {
			return 0, errors.New(`0: want a size such as 10GiB, or "" for the store's budget`)
		}
		return n, nil
	}
}

func parseHeaderBytes(v string) (int64, error) {
	n, err := store.ParseSize(v)
	if err != nil {
		return 0, err
	}
	if n > 1<<30 {
		return 0, errors.New("must be at most 1GiB")
	}
	return n, nil
}

// applyYAML overlays the YAML document b on c. Unknown keys are errors naming their line.
func (c *Config) applyYAML(b []byte, name string) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return &ConfigError{Key: name, Err: errors.New(strings.ReplaceAll(strings.TrimPrefix(err.Error(), "yaml: "), "\n", "; "))}
	}
	if len(doc.Content) == 0 {
		return nil
	}
	if err := c.applyNode(doc.Content[0], ""); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			return err
		}
		return &ConfigError{Key: name, Err: err}
	}
	return nil
}

func (c *Config) applyNode(n *yaml.Node, prefix string) error {
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
		if s, ok := settingByKey(key); ok {
			if err := s.decode(c, v); err != nil {
				return err
			}
			continue
		}
		if isSection(key) {
			if err := c.applyNode(v, key); err != nil {
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

func settingByKey(key string) (Setting, bool) {
	for _, s := range settings {
		if s.Key == key {
			return s, true
		}
	}
	return Setting{}, false
}

func isSection(key string) bool {
	for _, s := range settings {
		if strings.HasPrefix(s.Key, key+".") {
			return true
		}
	}
	return false
}

// defaultsFromTable writes the table's defaults as the YAML file `shoal config default`
// prints, each key under its section with its help as a comment.
func defaultsFromTable() []byte {
	var b strings.Builder
	b.WriteString("# shoal's built-in configuration. `shoal config default` prints it; a --config file uses the\n")
	b.WriteString("# same keys and overrides these; SHOAL_* environment variables override the file; flags override all.\n")
	b.WriteString("# Every key: docs/configuration.md.\n")
	section := ""
	for _, s := range settings {
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

// SettingsMarkdown is the reference table of docs/configuration.md.
func SettingsMarkdown() string {
	var b strings.Builder
	b.WriteString("| YAML key | flag | env | default | reload | meaning |\n|---|---|---|---|---|---|\n")
	for _, s := range settings {
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

// ConfigSchema is the JSON schema (draft-07) of the configuration file, made from the table:
// every key with its type, default and help, no other key. The Helm chart's values.schema.json
// holds it as the schema of its `config` value, so that `helm install` refuses a misspelt key or
// a value the daemon would refuse to decode (TestDocsTable rewrites it there).
func ConfigSchema() []byte {
	props := jsonObject{}
	sections := map[string]int{} // section → its index in props
	for _, s := range settings {
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
func (s Setting) schema() jsonObject {
	var o jsonObject
	switch k := s.Kind(); {
	case s.parse != nil: // a size: 10GiB, or a number of bytes
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

// restartNeeded lists the settings that differ between the running and the new
// configuration but cannot change while running.
func restartNeeded(old, cur Config) []string {
	var keys []string
	for _, s := range settings {
		if !s.Reload && !reflect.DeepEqual(s.value(&old), s.value(&cur)) {
			keys = append(keys, s.Key)
		}
	}
	return keys
}

// setHost adds host → u to a host map that starts from built-in hosts; u "-" removes host.
func setHost(hosts *map[string]string, host, u string) {
	if u == "-" {
		delete(*hosts, host)
		return
	}
	if *hosts == nil {
		*hosts = map[string]string{}
	}
	(*hosts)[host] = u
}
