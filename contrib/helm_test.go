package contrib_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/shoal-mirror/shoal/daemon"
)

// The Helm chart (contrib/helm/shoal) is checked with Helm v4 as a library, without a cluster:
//
//  1. `helm lint` (action.Lint) reports no warning, with the default values and with others;
//  2. `helm template` (action.Install, client-only dry run) renders, and every object passes the
//     validation of kubernetes_test.go (the embedded OpenAPI schema, no unknown fields, the
//     selector, port and volume cross-references);
//  3. for the default values plus a swarm key, the DaemonSet, Service, ServiceAccount and Secret
//     are equal, field by field, to those of the kustomize overlay contrib/kubernetes/example,
//     once the documented differences are normalised (helmToKustomize): Helm's standard labels,
//     the Secret's name (kustomize adds a content hash), the pod annotations with checksums, and
//     the daemon's settings, which the chart writes into a ConfigMap mounted as the config file
//     where the base sets SHOAL_* variables. Loaded by the daemon, that file gives the built-in
//     configuration plus the base's settings and nothing else: the chart changes nothing silently.
//     The kustomize base's Namespace object has no counterpart: the chart installs into the
//     release's namespace (helm install -n shoal --create-namespace) and templates none.
//  4. a missing swarm key fails the render with a message saying how to make one; values reach the
//     objects and the daemon's config file (loaded with the daemon's own loader); the PodMonitor
//     selects the pods; values.schema.json knows exactly `shoal config default`'s keys (its config
//     part is generated from the settings table: daemon's TestDocsTableInChartSchema) and their
//     types, and takes every default.

const chartDir = "helm/shoal"

// envToConfig: the kustomize base's SHOAL_* variables and the config file keys the chart sets
// instead, in the base's order.
var envToConfig = []struct{ env, key string }{
	{"SHOAL_LISTEN", "listen"},
	{"SHOAL_METRICS_LISTEN", "metrics_listen"},
	{"SHOAL_DATA_DIR", "data_dir"},
	{"SHOAL_P2P_LISTEN", "p2p.listen"},
	{"SHOAL_BOOTSTRAP_DNS", "p2p.bootstrap_dns"},
	{"SHOAL_SWARM_KEY", "p2p.swarm_key_file"},
	{"SHOAL_LOG_FORMAT", "log_format"},
	{"SHOAL_STORE_MIN_FREE", "store.min_free"},
}

// helmLabels are the labels the chart adds to every object's metadata and the base has not.
var helmLabels = []string{"helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version"}

// helmTemplate runs `helm template RELEASE contrib/helm/shoal -n NAMESPACE` with vals.
func helmTemplate(t *testing.T, releaseName, namespace string, vals map[string]any) ([]map[string]any, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	cfg := action.NewConfiguration()
	cfg.SetLogger(slog.NewTextHandler(io.Discard, nil))
	install := action.NewInstall(cfg)
	install.DryRunStrategy = action.DryRunClient // client only: no cluster
	install.ReleaseName = releaseName
	install.Namespace = namespace
	install.Replace = true
	r, err := install.Run(chrt, vals)
	if err != nil {
		return nil, err
	}
	rel, ok := r.(*release.Release)
	if !ok {
		t.Fatalf("release of type %T", r)
	}
	docs := releaseutil.SplitManifests(rel.Manifest)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []map[string]any
	for _, k := range keys {
		j, err := sigsyaml.YAMLToJSON([]byte(docs[k]))
		if err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, docs[k])
		}
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.UseNumber()
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			t.Fatal(err)
		}
		if obj != nil {
			out = append(out, obj)
		}
	}
	return out, nil
}

func mustHelmTemplate(t *testing.T, releaseName, namespace string, vals map[string]any) []map[string]any {
	t.Helper()
	objs, err := helmTemplate(t, releaseName, namespace, vals)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	return objs
}

// newSwarmKey makes a key the way README says.
func newSwarmKey(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	swarmKey(t, dir)
	b, err := os.ReadFile(filepath.Join(dir, "swarm.key"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// renderedConfig is the daemon's config file from the chart's ConfigMap, also written to a file
// for the daemon's loader.
func renderedConfig(t *testing.T, objs []map[string]any, name string) (map[string]any, string) {
	t.Helper()
	cm := find(t, objs, "ConfigMap/"+name)
	text, _ := dig(cm, "data", "config.yaml").(string)
	var m map[string]any
	if err := yaml.Unmarshal([]byte(text), &m); err != nil {
		t.Fatalf("config.yaml: %v\n%s", err, text)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return m, path
}

func getPath(m map[string]any, key string) (any, bool) {
	var v any = m
	for _, k := range strings.Split(key, ".") {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = mm[k]; !ok {
			return nil, false
		}
	}
	return v, true
}

func deletePath(m map[string]any, key string) {
	parts := strings.Split(key, ".")
	for _, k := range parts[:len(parts)-1] {
		mm, ok := m[k].(map[string]any)
		if !ok {
			return
		}
		m = mm
	}
	delete(m, parts[len(parts)-1])
}

// clone deep-copies a JSON-shaped value.
func clone(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = clone(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = clone(e)
		}
		return l
	}
	return v
}

// helmToKustomize rewrites a rendered chart object the way the kustomize base writes it, undoing
// the documented differences; config is the daemon's config file from the chart's ConfigMap.
func helmToKustomize(t *testing.T, obj, config map[string]any) map[string]any {
	t.Helper()
	o := clone(obj).(map[string]any)
	md := o["metadata"].(map[string]any)
	if labels, ok := md["labels"].(map[string]any); ok {
		for _, l := range helmLabels {
			delete(labels, l)
		}
		if len(labels) == 0 {
			delete(md, "labels")
		}
	}
	if o["kind"] != "DaemonSet" {
		return o
	}
	tmpl := dig(o, "spec", "template").(map[string]any)
	if ann, ok := dig(tmpl, "metadata", "annotations").(map[string]any); ok {
		for k := range ann {
			if strings.HasPrefix(k, "checksum/") {
				delete(ann, k)
			}
		}
		if len(ann) == 0 {
			delete(tmpl["metadata"].(map[string]any), "annotations")
		}
	}
	pod := tmpl["spec"].(map[string]any)
	pod["volumes"] = slices.DeleteFunc(pod["volumes"].([]any), func(v any) bool { return v.(map[string]any)["name"] == "config" })
	for _, c := range pod["containers"].([]any) {
		c := c.(map[string]any)
		if c["name"] != "shoal" {
			continue
		}
		c["volumeMounts"] = slices.DeleteFunc(c["volumeMounts"].([]any), func(v any) bool { return v.(map[string]any)["name"] == "config" })
		// The base: POD_NAMESPACE, then the SHOAL_* settings, then the rest.
		env := []any{map[string]any{"name": "POD_NAMESPACE", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.namespace"}}}}
		for _, e := range envToConfig {
			v, ok := getPath(config, e.key)
			if !ok {
				t.Errorf("config file has no %s (the base sets %s)", e.key, e.env)
				continue
			}
			var s string
			switch x := v.(type) {
			case []any:
				var parts []string
				for _, p := range x {
					parts = append(parts, fmt.Sprint(p))
				}
				s = strings.Join(parts, ",")
			default:
				s = fmt.Sprint(x)
			}
			if e.key == "p2p.bootstrap_dns" {
				s = strings.Replace(s, "."+md["namespace"].(string)+".svc", ".$(POD_NAMESPACE).svc", 1)
			}
			env = append(env, map[string]any{"name": e.env, "value": s})
		}
		var configEnv bool
		for _, e := range c["env"].([]any) {
			e := e.(map[string]any)
			if e["name"] == "SHOAL_CONFIG" {
				configEnv = e["value"] == "/etc/shoal/config/config.yaml"
				continue
			}
			env = append(env, e)
		}
		if !configEnv {
			t.Error("the daemon container's SHOAL_CONFIG does not name the mounted config file")
		}
		c["env"] = env
	}
	return o
}

// unhash removes the content hash kustomize appends to a generated Secret's name.
func unhash(name string) string {
	return regexp.MustCompile(`-[a-z0-9]{10}$`).ReplaceAllString(name, "")
}

// diff lists the paths where a and b differ.
func diff(path string, a, b any) []string {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %v ≠ %v", path, a, b)}
		}
		var out []string
		keys := map[string]bool{}
		for k := range x {
			keys[k] = true
		}
		for k := range y {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			out = append(out, diff(path+"."+k, x[k], y[k])...)
		}
		return out
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return []string{fmt.Sprintf("%s: %v ≠ %v", path, a, b)}
		}
		var out []string
		for i := range x {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), x[i], y[i])...)
		}
		return out
	}
	if fmt.Sprint(a) != fmt.Sprint(b) || (a == nil) != (b == nil) || reflect.TypeOf(a) != reflect.TypeOf(b) {
		return []string{fmt.Sprintf("%s: %v (%T) ≠ %v (%T)", path, a, a, b, b)}
	}
	return nil
}

// validateAll runs kubernetes_test.go's checks on a rendered release.
func validateAll(t *testing.T, what string, objs []map[string]any) {
	t.Helper()
	for _, o := range objs {
		validateObject(t, what, o)
		if ns := dig(o, "metadata", "namespace"); ns == nil || ns == "" {
			t.Errorf("%s: %s has no namespace (helm template | kubectl apply would put it elsewhere)", what, kindName(o))
		}
	}
}

func TestHelmLint(t *testing.T) {
	t.Parallel()
	key := newSwarmKey(t)
	for name, vals := range map[string]map[string]any{
		"defaults": nil,
		"swarm key and monitoring": {
			"swarmKey":   map[string]any{"value": key},
			"monitoring": map[string]any{"podMonitor": map[string]any{"enabled": true}},
		},
		"existing secret": {"swarmKey": map[string]any{"existingSecret": "mykey"}},
	} {
		l := action.NewLint()
		l.Namespace = "shoal"
		res := l.Run([]string{chartDir}, vals)
		if res.TotalChartsLinted != 1 {
			t.Errorf("%s: %d charts linted, errors %v", name, res.TotalChartsLinted, res.Errors)
		}
		for _, m := range res.Messages {
			if m.Severity > support.InfoSev {
				t.Errorf("helm lint (%s): %v", name, m)
			} else {
				t.Logf("helm lint (%s): %v", name, m)
			}
		}
		if len(res.Errors) > 0 {
			t.Errorf("helm lint (%s): %v", name, res.Errors)
		}
	}
}

// TestHelmTemplateMatchesKustomize: the chart's defaults are the kustomize overlay's objects.
func TestHelmTemplateMatchesKustomize(t *testing.T) {
	t.Parallel()
	tree := copyTree(t, "kubernetes")
	swarmKey(t, filepath.Join(tree, "example"))
	key, err := os.ReadFile(filepath.Join(tree, "example", "swarm.key"))
	if err != nil {
		t.Fatal(err)
	}
	kust := kustomizeBuild(t, filepath.Join(tree, "example"))
	objs := mustHelmTemplate(t, "shoal", "shoal", map[string]any{"swarmKey": map[string]any{"value": string(key)}})
	validateAll(t, "helm template", objs)

	var got []string
	for _, o := range objs {
		got = append(got, kindName(o))
	}
	sort.Strings(got)
	if want := []string{"ConfigMap/shoal-config", "DaemonSet/shoal", "Secret/shoal-swarm-key", "Service/shoal-peers", "ServiceAccount/shoal"}; !slices.Equal(got, want) {
		t.Errorf("helm template rendered %v, want %v", got, want)
	}

	config, configPath := renderedConfig(t, objs, "shoal-config")
	ds := helmToKustomize(t, find(t, objs, "DaemonSet/shoal"), config)
	checkDaemonSet(t, ds)
	checkService(t, find(t, objs, "Service/shoal-peers"), ds)

	// The kustomize objects, with the Secret's hash taken off its name.
	for _, o := range kust {
		if o["kind"] == "Secret" {
			md := o["metadata"].(map[string]any)
			md["name"] = unhash(md["name"].(string))
			// kustomize wraps base64 at 76 characters; the bytes are the same.
			for k, v := range o["data"].(map[string]any) {
				o["data"].(map[string]any)[k] = strings.Join(strings.Fields(v.(string)), "")
			}
		}
		if o["kind"] == "DaemonSet" {
			v := volumeByName(t, o, "swarm-key")
			v["secret"].(map[string]any)["secretName"] = unhash(dig(v, "secret", "secretName").(string))
		}
	}
	for _, name := range []string{"DaemonSet/shoal", "Service/shoal-peers", "ServiceAccount/shoal", "Secret/shoal-swarm-key"} {
		h := helmToKustomize(t, find(t, objs, name), config)
		k := find(t, kust, name)
		for _, d := range diff(name, h, k) {
			t.Errorf("chart ≠ kustomize overlay: %s", d)
		}
	}
	for _, o := range kust {
		if o["kind"] == "Namespace" {
			continue // the chart uses the release's namespace (documented)
		}
		if !slices.Contains(got, kindName(o)) {
			t.Errorf("the kustomize overlay has %s, the chart not", kindName(o))
		}
	}

	// The daemon loads it, and gets its built-in configuration plus the base's settings.
	loaded := daemon.DefaultConfig()
	if err := loaded.LoadFile(configPath); err != nil {
		t.Fatalf("the daemon refuses the chart's config file: %v", err)
	}
	if loaded.P2P.SwarmKeyFile != "/etc/shoal/swarm/swarm.key" || loaded.P2P.BootstrapDNS != "shoal-peers.shoal.svc:5001" {
		t.Errorf("daemon config: swarm key %q, bootstrap DNS %q", loaded.P2P.SwarmKeyFile, loaded.P2P.BootstrapDNS)
	}
	base := map[string]any{}
	for _, e := range envToConfig {
		v, _ := getPath(config, e.key)
		setPath(base, e.key, v)
	}
	want := daemon.DefaultConfig()
	if err := want.LoadFile(writeYAML(t, base)); err != nil {
		t.Fatal(err)
	}
	for _, d := range configDiff(loaded, want) {
		t.Errorf("the chart's config file sets %s, which the kustomize base leaves at its default", d)
	}
}

// configDiff names the fields of Config (exported, nested ones whole) where a and b differ.
func configDiff(a, b daemon.Config) []string {
	var out []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	for i := range va.NumField() {
		f := va.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		if x, y := va.Field(i).Interface(), vb.Field(i).Interface(); !reflect.DeepEqual(x, y) {
			out = append(out, fmt.Sprintf("%s: %+v ≠ %+v", f.Name, x, y))
		}
	}
	return out
}

func setPath(m map[string]any, key string, v any) {
	parts := strings.Split(key, ".")
	for _, k := range parts[:len(parts)-1] {
		mm, ok := m[k].(map[string]any)
		if !ok {
			mm = map[string]any{}
			m[k] = mm
		}
		m = mm
	}
	m[parts[len(parts)-1]] = v
}

func writeYAML(t *testing.T, v any) string {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestHelmConfigTakesEverySetting: config may hold every key of `shoal config default` with its
// default (the schema accepts each one's type), and the daemon loads the result as its built-in
// configuration; a value of the wrong type, which the daemon would refuse at start on every node,
// fails `helm install` and names the key.
func TestHelmConfigTakesEverySetting(t *testing.T) {
	t.Parallel()
	var defaults map[string]any
	if err := yaml.Unmarshal(daemon.DefaultsYAML(), &defaults); err != nil {
		t.Fatal(err)
	}
	// Values reach Helm as JSON (numbers as float64, as from a values file).
	j, err := sigsyaml.YAMLToJSON(daemon.DefaultsYAML())
	if err != nil {
		t.Fatal(err)
	}
	var config map[string]any
	if err := json.Unmarshal(j, &config); err != nil {
		t.Fatal(err)
	}
	key := newSwarmKey(t)
	objs := mustHelmTemplate(t, "shoal", "shoal", map[string]any{"swarmKey": map[string]any{"value": key}, "config": config})
	rendered, path := renderedConfig(t, objs, "shoal-config")
	got := daemon.DefaultConfig()
	if err := got.LoadFile(path); err != nil {
		t.Fatalf("the daemon refuses the chart's config file made of every default: %v", err)
	}
	want := daemon.DefaultConfig()
	want.P2P.SwarmKeyFile, want.P2P.BootstrapDNS = "/etc/shoal/swarm/swarm.key", "shoal-peers.shoal.svc:5001"
	for _, d := range configDiff(got, want) {
		t.Errorf("every default through the chart: %s", d)
	}
	for _, s := range daemon.Settings() {
		if _, ok := getPath(rendered, s.Key); !ok {
			t.Errorf("config.%s given, not in the rendered config file", s.Key)
		}
	}

	for _, c := range []struct {
		key string
		v   any
	}{
		{"tag_ttl", 30},           // a number of what? yaml.v3 refuses it for a duration
		{"upstream.retries", "3"}, // a string for an int
		{"p2p.enabled", "yes"},
		{"security.deny_repo", "docker.io/evil/*"}, // a list
		{"store.max_size", true},
		{"registries", map[string]any{"ghcr.io": map[string]any{"url": 5}}},
	} {
		vals := map[string]any{"swarmKey": map[string]any{"value": key}, "config": map[string]any{}}
		setPath(vals["config"].(map[string]any), c.key, c.v)
		_, err := helmTemplate(t, "shoal", "shoal", vals)
		if want := "/config/" + strings.ReplaceAll(c.key, ".", "/"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config.%s = %#v: helm template gave %v, want an error at %s", c.key, c.v, err, want)
		}
	}
}

// TestHelmRequiresSwarmKey: no key, no install, and a message that says what to do.
func TestHelmRequiresSwarmKey(t *testing.T) {
	t.Parallel()
	_, err := helmTemplate(t, "shoal", "shoal", nil)
	if err == nil || !strings.Contains(err.Error(), "shoal needs a swarm key: --set-file swarmKey.value=swarm.key") ||
		!strings.Contains(err.Error(), "swarmKey.existingSecret") {
		t.Fatalf("helm template without a swarm key: %v", err)
	}

	// An existing Secret: mounted, none rendered, the config names its key.
	objs := mustHelmTemplate(t, "shoal", "shoal", map[string]any{"swarmKey": map[string]any{"existingSecret": "my-key", "existingSecretKey": "psk"}})
	validateAll(t, "existing secret", objs)
	for _, o := range objs {
		if o["kind"] == "Secret" {
			t.Errorf("a Secret rendered although swarmKey.existingSecret is set: %s", kindName(o))
		}
	}
	ds := find(t, objs, "DaemonSet/shoal")
	if got := dig(volumeByName(t, ds, "swarm-key"), "secret", "secretName"); got != "my-key" {
		t.Errorf("swarm-key volume from Secret %v, want my-key", got)
	}
	config, _ := renderedConfig(t, objs, "shoal-config")
	if got, _ := getPath(config, "p2p.swarm_key_file"); got != "/etc/shoal/swarm/psk" {
		t.Errorf("p2p.swarm_key_file %v, want the existing Secret's key psk", got)
	}
	checkDaemonSet(t, helmToKustomize(t, ds, config))
}

// TestHelmValues: another release and namespace, the monitoring, and the values reaching the pods
// and the daemon's config file.
func TestHelmValues(t *testing.T) {
	t.Parallel()
	vals := map[string]any{
		"swarmKey":   map[string]any{"value": newSwarmKey(t)},
		"monitoring": map[string]any{"podMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}}},
		"config": map[string]any{
			"listen":         "127.0.0.1:5050",
			"metrics_listen": "0.0.0.0:9096",
			"log_level":      "debug",
			"store":          map[string]any{"max_size": "50GiB"},
			"registries": map[string]any{
				"ghcr.io": map[string]any{},
			},
			"security": map[string]any{"deny_repo": []any{"docker.io/evil/*"}},
		},
		"image":             map[string]any{"repository": "registry.example/shoal", "tag": "v9", "pullPolicy": "Always"},
		"extraEnv":          []any{map[string]any{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}},
		"extraArgs":         []any{"--log-level=warn"},
		"nodeSelector":      map[string]any{"kubernetes.io/os": "linux"},
		"priorityClassName": "system-node-critical",
		"affinity": map[string]any{"nodeAffinity": map[string]any{"requiredDuringSchedulingIgnoredDuringExecution": map[string]any{
			"nodeSelectorTerms": []any{map[string]any{"matchExpressions": []any{map[string]any{"key": "shoal", "operator": "NotIn", "values": []any{"off"}}}}},
		}}},
		"tolerations": []any{map[string]any{"operator": "Exists"}, map[string]any{"key": "x", "operator": "Exists", "effect": "NoSchedule"}},
		"resources":   map[string]any{"requests": map[string]any{"cpu": "200m", "memory": "256Mi"}, "limits": map[string]any{"memory": "2Gi"}},
	}
	objs := mustHelmTemplate(t, "edge", "mirrors", vals)
	validateAll(t, "helm template edge", objs)
	config, configPath := renderedConfig(t, objs, "edge-shoal-config")
	ds := find(t, objs, "DaemonSet/edge-shoal")
	checkPodSpec(t, ds) // checkDaemonSet wants the defaults' listen and names
	checkService(t, find(t, objs, "Service/edge-shoal-peers"), ds)
	pm := find(t, objs, "PodMonitor/edge-shoal")
	validateObject(t, "helm template edge", pm)
	checkPodMonitor(t, pm, ds)
	if dig(pm, "metadata", "labels", "release") != "prom" {
		t.Errorf("PodMonitor labels %v: no monitoring.podMonitor.labels", dig(pm, "metadata", "labels"))
	}
	// The PodMonitor is the kustomize one (contrib/kubernetes/monitoring), but for the names.
	tree := copyTree(t, "kubernetes")
	kpm := find(t, kustomizeBuild(t, filepath.Join(tree, "monitoring")), "PodMonitor/shoal")
	for _, d := range diff("PodMonitor.spec", pm["spec"], kpm["spec"]) {
		t.Errorf("chart ≠ contrib/kubernetes/monitoring: %s", d)
	}

	// The values in the config file, and the daemon takes them.
	for key, want := range map[string]any{
		"listen": "127.0.0.1:5050", "log_level": "debug", "store.max_size": "50GiB",
		"p2p.bootstrap_dns": "edge-shoal-peers.mirrors.svc:5001", "store.min_free": "10%",
		"metrics_listen": "0.0.0.0:9096",
	} {
		if got, _ := getPath(config, key); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("config file %s = %v, want %v", key, got, want)
		}
	}
	c := daemon.DefaultConfig()
	if err := c.LoadFile(configPath); err != nil {
		t.Fatalf("the daemon refuses the chart's config file: %v", err)
	}
	if _, ok := c.Upstream.Registries["ghcr.io"]; !ok || c.Upstream.Registries["docker.io"].URL != "https://registry-1.docker.io" {
		t.Errorf("daemon config registries from the chart: %v", c.Upstream.Registries)
	}
	if c.Listen != "127.0.0.1:5050" || c.LogLevel != "debug" || c.P2P.BootstrapDNS != "edge-shoal-peers.mirrors.svc:5001" ||
		!slices.Contains(c.Guard.DenyRepo, "docker.io/evil/*") {
		t.Errorf("daemon config from the chart: listen %q, log level %q, bootstrap %q, deny_repo %v", c.Listen, c.LogLevel, c.P2P.BootstrapDNS, c.Guard.DenyRepo)
	}

	// The rest reaches the pods.
	pod := dig(ds, "spec", "template", "spec").(map[string]any)
	shoal := containerByName(t, ds, "containers", "shoal")
	setup := containerByName(t, ds, "initContainers", "setup-containerd")
	for what, ok := range map[string]bool{
		"image":             shoal["image"] == "registry.example/shoal:v9" && setup["image"] == "registry.example/shoal:v9",
		"pull policy":       shoal["imagePullPolicy"] == "Always" && setup["imagePullPolicy"] == "Always",
		"extra env":         slices.ContainsFunc(list(shoal["env"]), func(e map[string]any) bool { return e["name"] == "HTTPS_PROXY" }),
		"extra args":        fmt.Sprint(shoal["args"]) == "[daemon --log-level=warn]",
		"mirror port":       fmt.Sprint(list(shoal["ports"])[0]["containerPort"]) == "5050",
		"metrics port":      fmt.Sprint(list(shoal["ports"])[2]["containerPort"]) == "9096" && dig(shoal, "livenessProbe", "httpGet", "port") == "metrics",
		"p2p direct port":   len(list(shoal["ports"])) == 4 && fmt.Sprint(list(shoal["ports"])[3]["containerPort"]) == "5002",
		"setup's mirror":    slices.Contains(setup["args"].([]any), "--mirror=http://127.0.0.1:5050"),
		"node selector":     dig(pod, "nodeSelector", "kubernetes.io/os") == "linux",
		"priority class":    pod["priorityClassName"] == "system-node-critical",
		"affinity":          dig(pod, "affinity", "nodeAffinity") != nil,
		"tolerations":       len(list(pod["tolerations"])) == 2,
		"resources":         dig(shoal, "resources", "limits", "memory") == "2Gi",
		"service account":   pod["serviceAccountName"] == "edge-shoal",
		"swarm key secret":  dig(volumeByName(t, ds, "swarm-key"), "secret", "secretName") == "edge-shoal-swarm-key",
		"config map volume": dig(volumeByName(t, ds, "config"), "configMap", "name") == "edge-shoal-config",
	} {
		if !ok {
			t.Errorf("%s: not rendered as the values say", what)
		}
	}
	find(t, objs, "Secret/edge-shoal-swarm-key")
	find(t, objs, "ServiceAccount/edge-shoal")

	// metrics_listen off would leave the probes without a port: refused.
	vals["config"].(map[string]any)["metrics_listen"] = "off"
	if _, err := helmTemplate(t, "edge", "mirrors", vals); err == nil || !strings.Contains(err.Error(), "metrics_listen") {
		t.Errorf("metrics_listen off: %v", err)
	}
}

// TestHelmValuesSchema: values.schema.json knows every daemon config key (and no other), so that
// a misspelt key fails `helm install` instead of every node's daemon at start.
func TestHelmValuesSchema(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	var defaults map[string]any
	if err := yaml.Unmarshal(daemon.DefaultsYAML(), &defaults); err != nil {
		t.Fatal(err)
	}
	var walk func(path string, d map[string]any, s any)
	walk = func(path string, d map[string]any, s any) {
		props, _ := dig(s, "properties").(map[string]any)
		if dig(s, "additionalProperties") != false {
			t.Errorf("schema %s: additionalProperties is not false", path)
		}
		for k, v := range d {
			p, ok := props[k]
			if !ok {
				t.Errorf("values.schema.json has no %s.%s (`shoal config default` has)", path, k)
				continue
			}
			if sub, ok := v.(map[string]any); ok && k != "registries" && path+"."+k != "config.files.hosts" { // maps of host → value
				walk(path+"."+k, sub, p)
			}
		}
		for k := range props {
			if _, ok := d[k]; !ok {
				t.Errorf("values.schema.json has %s.%s, `shoal config default` not", path, k)
			}
		}
	}
	walk("config", defaults, dig(schema, "properties", "config"))

	key := newSwarmKey(t)
	for what, vals := range map[string]map[string]any{
		"stor":      {"config": map[string]any{"stor": map[string]any{"max_size": "1GiB"}}},
		"min_fre":   {"config": map[string]any{"store": map[string]any{"min_fre": "5%"}}},
		"tolerance": {"tolerance": []any{}},
		"passwd":    {"config": map[string]any{"registries": map[string]any{"ghcr.io": map[string]any{"passwd": "x"}}}},
	} {
		vals["swarmKey"] = map[string]any{"value": key}
		_, err := helmTemplate(t, "shoal", "shoal", vals)
		if err == nil || !strings.Contains(err.Error(), "additional properties '"+what+"' not allowed") {
			t.Errorf("values with a misspelt key %s: %v", what, err)
		}
	}
}
