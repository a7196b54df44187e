package hostsetup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
)

// DefaultDaemonJSON is dockerd's configuration file.
const DefaultDaemonJSON = "/etc/docker/daemon.json"

// DockerOptions say where and how to point dockerd at shoal.
type DockerOptions struct {
	// HostRoot is where this process sees the host's file system ("/" or "" on the host).
	HostRoot string
	// DaemonJSON is the file to edit; "" = DefaultDaemonJSON under HostRoot.
	DaemonJSON string
	// Mirror is shoal's URL as dockerd reaches it; "" = DefaultMirror.
	Mirror string
}

func (o DockerOptions) resolve() (DockerOptions, error) {
	if o.Mirror == "" {
		o.Mirror = DefaultMirror
	}
	if err := ValidateMirror(o.Mirror); err != nil {
		return o, err
	}
	if o.DaemonJSON == "" {
		o.DaemonJSON = under(o.HostRoot, DefaultDaemonJSON)
	}
	return o, nil
}

// jsonMember is one top-level member of a JSON object, with the byte range of its value.
type jsonMember struct {
	key        string
	valueStart int
	valueEnd   int
}

// jsonObject is a JSON object's members in file order, and where the object closes.
type jsonObject struct {
	members []jsonMember
	close   int // offset of the closing '}'
}

// scanObject reads the top level of a JSON object, keeping byte offsets so that an edit can
// replace one value and leave every other byte of the file alone.
func scanObject(b []byte) (jsonObject, error) {
	var obj jsonObject
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return obj, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return obj, errors.New("not a JSON object")
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return obj, err
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		after := int(dec.InputOffset())
		if err := dec.Decode(&raw); err != nil {
			return obj, err
		}
		end := int(dec.InputOffset())
		start := after + bytes.Index(b[after:end], raw)
		for _, m := range obj.members {
			if m.key == key {
				return obj, fmt.Errorf("key %q appears twice", key)
			}
		}
		obj.members = append(obj.members, jsonMember{key: key, valueStart: start, valueEnd: start + len(raw)})
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return obj, err
	}
	obj.close = int(dec.InputOffset()) - 1
	if _, err := dec.Token(); err != io.EOF {
		return obj, errors.New("data after the JSON object")
	}
	return obj, nil
}

func (o jsonObject) get(key string) (jsonMember, bool) {
	for _, m := range o.members {
		if m.key == key {
			return m, true
		}
	}
	return jsonMember{}, false
}

const mirrorsKey = "registry-mirrors"

// sameMirror compares two mirror URLs the way dockerd normalises them (a trailing slash does
// not matter).
func sameMirror(a, b string) bool {
	return strings.TrimSuffix(a, "/") == strings.TrimSuffix(b, "/")
}

// setMirrors returns b with registry-mirrors rewritten by edit; the member is added at the end
// when missing. Everything else in b stays byte for byte.
func setMirrors(b []byte, edit func([]string) []string) ([]byte, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		b = []byte("{}\n")
	}
	obj, err := scanObject(b)
	if err != nil {
		return nil, err
	}
	var cur []string
	m, ok := obj.get(mirrorsKey)
	if ok {
		if err := json.Unmarshal(b[m.valueStart:m.valueEnd], &cur); err != nil {
			return nil, fmt.Errorf("%s: want a list of URLs: %w", mirrorsKey, err)
		}
	}
	next := edit(cur)
	if !ok && len(next) == 0 {
		return b, nil
	}
	var enc bytes.Buffer
	e := json.NewEncoder(&enc)
	e.SetEscapeHTML(false)
	if err := e.Encode(append([]string{}, next...)); err != nil {
		return nil, err
	}
	val := bytes.ReplaceAll(bytes.TrimSpace(enc.Bytes()), []byte(`","`), []byte(`", "`))
	var out []byte
	if ok {
		out = append(out, b[:m.valueStart]...)
		out = append(out, val...)
		return append(out, b[m.valueEnd:]...), nil
	}
	// A new member goes last, indented like the first one.
	indent := "  "
	if len(obj.members) > 0 {
		first := obj.members[0].valueStart
		keyStart := bytes.LastIndex(b[:first], []byte(`"`+obj.members[0].key+`"`))
		if nl := bytes.LastIndexByte(b[:max(keyStart, 0)], '\n'); nl >= 0 && keyStart > nl {
			indent = string(b[nl+1 : keyStart])
		}
		last := obj.members[len(obj.members)-1].valueEnd
		out = append(out, b[:last]...)
		out = append(out, ",\n"+indent+`"`+mirrorsKey+`": `...)
		out = append(out, val...)
		return append(out, b[last:]...), nil
	}
	out = append(out, b[:obj.close]...)
	out = bytes.TrimRight(out, " \t\r\n")
	out = append(out, "\n"+indent+`"`+mirrorsKey+`": `...)
	out = append(out, val...)
	out = append(out, "\n"...)
	return append(out, b[obj.close:]...), nil
}

// createdDaemonJSON is the file setup writes when there is none.
func createdDaemonJSON(mirror string) []byte {
	return []byte("{\n  \"" + mirrorsKey + "\": [\"" + mirror + "\"]\n}\n")
}

func mergeDaemonJSON(b []byte, mirror string) ([]byte, error) {
	return setMirrors(b, func(cur []string) []string {
		out := []string{mirror}
		for _, m := range cur {
			if !sameMirror(m, mirror) {
				out = append(out, m)
			}
		}
		return out
	})
}

// PlanDocker computes the daemon.json that lists shoal first in registry-mirrors.
func PlanDocker(o DockerOptions) (*Plan, error) {
	o, err := o.resolve()
	if err != nil {
		return nil, err
	}
	old, err := readOptional(o.DaemonJSON)
	if err != nil {
		return nil, err
	}
	c := Change{Path: o.DaemonJSON, Old: old}
	if old == nil {
		c.New, c.Note = createdDaemonJSON(o.Mirror), "created"
	} else {
		if c.New, err = mergeDaemonJSON(old, o.Mirror); err != nil {
			return nil, fmt.Errorf("%s is not valid JSON (dockerd will not start with it either): %w; fix it, then run setup again", o.DaemonJSON, err)
		}
		c.Note, c.Backup = "merged", o.DaemonJSON+BackupSuffix
	}
	var check []string
	if err := json.Unmarshal(c.New, &struct {
		Mirrors *[]string `json:"registry-mirrors"`
	}{&check}); err != nil || len(check) == 0 || check[0] != o.Mirror {
		return nil, fmt.Errorf("%s: the merged file does not list %s first (%v); nothing was written", o.DaemonJSON, o.Mirror, err)
	}
	p := &Plan{}
	p.add(c)
	p.Findings = dockerFindings(o, len(p.Changes) > 0)
	return p, nil
}

// reloadFinding says that dockerd does not see a changed daemon.json by itself.
var reloadFinding = Finding{
	Severity: Warning,
	Message:  "dockerd reads registry-mirrors when it starts or reloads: until then it goes on as before",
	Fix:      "systemctl reload docker (dockerd reloads registry-mirrors on SIGHUP), or systemctl restart docker",
}

func dockerFindings(o DockerOptions, changed bool) []Finding {
	var f []Finding
	if changed {
		f = append(f, reloadFinding)
	}
	f = append(f, Finding{
		Severity: Info,
		Message:  "dockerd sends only Docker Hub (docker.io) pulls to registry-mirrors",
		Fix:      "pull other registries through shoal by name: docker pull 127.0.0.1:5000/ghcr.io/OWNER/IMAGE:TAG",
	})
	if u, err := url.Parse(o.Mirror); err == nil && u.Scheme == "http" {
		host := u.Hostname()
		if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && host != "localhost" {
			f = append(f, Finding{
				Severity: Warning,
				Message:  fmt.Sprintf("dockerd uses plain HTTP only for loopback mirrors and insecure-registries; %s is neither", u.Host),
				Fix:      fmt.Sprintf("add %q to \"insecure-registries\" in %s", u.Host, o.DaemonJSON),
			})
		}
	}
	return sortFindings(f)
}

// PlanDockerUninstall computes how to take shoal out of daemon.json: the backup comes back when
// the file is still as setup left it (the file goes away when setup created it); otherwise only
// shoal leaves registry-mirrors.
func PlanDockerUninstall(o DockerOptions) (*Plan, error) {
	o, err := o.resolve()
	if err != nil {
		return nil, err
	}
	p := &Plan{}
	cur, err := readOptional(o.DaemonJSON)
	if err != nil {
		return nil, err
	}
	backup := o.DaemonJSON + BackupSuffix
	orig, err := readOptional(backup)
	if err != nil {
		return nil, err
	}
	switch {
	case cur == nil && orig != nil:
		p.add(Change{Path: o.DaemonJSON, New: orig, Backup: backup, RemoveBackup: true, Note: "restored from backup"})
		return p, nil
	case cur == nil:
		return p, nil
	case orig != nil:
		if merged, err := mergeDaemonJSON(orig, o.Mirror); err == nil && bytes.Equal(merged, cur) {
			p.add(Change{Path: o.DaemonJSON, Old: cur, New: orig, Backup: backup, RemoveBackup: true, Note: "restored from backup"})
			p.Findings = []Finding{reloadFinding}
			return p, nil
		}
	case bytes.Equal(cur, createdDaemonJSON(o.Mirror)):
		p.add(Change{Path: o.DaemonJSON, Old: cur, Note: "removed (setup created it)"})
		p.Findings = []Finding{reloadFinding}
		return p, nil
	}
	stripped, err := setMirrors(cur, func(ms []string) []string {
		var out []string
		for _, m := range ms {
			if !sameMirror(m, o.Mirror) {
				out = append(out, m)
			}
		}
		return out
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.DaemonJSON, err)
	}
	note := "shoal removed from registry-mirrors"
	if orig != nil {
		note += " (the file changed since setup; " + backup + " kept)"
	}
	p.add(Change{Path: o.DaemonJSON, Old: cur, New: stripped, Note: note})
	if len(p.Changes) > 0 {
		p.Findings = []Finding{reloadFinding}
	}
	return p, nil
}
