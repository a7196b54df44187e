package contrib_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"k8s.io/kube-openapi/pkg/validation/spec"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/kustomize/kyaml/openapi"
	kyaml "sigs.k8s.io/kustomize/kyaml/yaml"
)

// The Kubernetes manifests are checked without a cluster and without the network:
//
//  1. kustomize (sigs.k8s.io/kustomize/api, the code behind `kubectl apply -k`) builds each
//     documented kustomization;
//  2. every built-in object is validated against the Kubernetes OpenAPI (swagger) schema that
//     kustomize's kyaml module embeds (Kubernetes v1.21.2, the only one it ships): types, enums,
//     required fields, and — stricter than the API server's defaults — no unknown fields;
//  3. a few API-server rules that no schema expresses are checked by hand: selectors match the
//     pod labels, named ports and volumes exist, the Service and PodMonitor find the pods.
//
// kubeconform needs JSON schemas that it downloads at run time; none can be had offline here,
// so this test does its work with the embedded schema instead.

// kustomizeBuild runs `kustomize build` on dir (a copy of contrib/kubernetes in a temp dir, so
// the test can add the swarm key an overlay needs) and returns the objects as JSON maps.
func kustomizeBuild(t *testing.T, dir string) []map[string]any {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var out []map[string]any
	for _, r := range m.Resources() {
		b, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			t.Fatal(err)
		}
		out = append(out, obj)
	}
	return out
}

// copyTree copies contrib/kubernetes into a temp dir.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "kubernetes")
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// swarmKey writes a swarm key as example/kustomization.yaml tells the user to.
func swarmKey(t *testing.T, dir string) {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	key := "/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(b) + "\n"
	if err := os.WriteFile(filepath.Join(dir, "swarm.key"), []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
}

func kindName(o map[string]any) string {
	md, _ := o["metadata"].(map[string]any)
	return fmt.Sprintf("%v/%v", o["kind"], md["name"])
}

func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	tree := copyTree(t, "kubernetes")
	swarmKey(t, filepath.Join(tree, "example"))

	builds := map[string][]string{ // kustomization → the objects it must produce
		"example":    {"Namespace/shoal", "ServiceAccount/shoal", "Service/shoal-peers", "DaemonSet/shoal", "Secret/shoal-swarm-key-*"},
		"base":       {"Namespace/shoal", "ServiceAccount/shoal", "Service/shoal-peers", "DaemonSet/shoal"},
		"monitoring": {"PodMonitor/shoal"},
		"uninstall":  {"Namespace/shoal", "DaemonSet/shoal-uninstall"},
	}
	all := map[string][]map[string]any{}
	for dir, want := range builds {
		objs := kustomizeBuild(t, filepath.Join(tree, dir))
		all[dir] = objs
		var got []string
		for _, o := range objs {
			got = append(got, kindName(o))
		}
		for _, w := range want {
			if !slices.ContainsFunc(got, func(g string) bool { return matchName(w, g) }) {
				t.Errorf("kustomize build %s: no %s in %v", dir, w, got)
			}
		}
		for _, o := range objs {
			validateObject(t, dir, o)
		}
	}

	// The overlay's generated Secret (name with a content hash) is what the DaemonSet mounts.
	ds := find(t, all["example"], "DaemonSet/shoal")
	secret := find(t, all["example"], "Secret/shoal-swarm-key-*")
	secretName := secret["metadata"].(map[string]any)["name"].(string)
	vol := volumeByName(t, ds, "swarm-key")
	if got := dig(vol, "secret", "secretName"); got != secretName {
		t.Errorf("DaemonSet mounts secret %v, the overlay generated %s", got, secretName)
	}
	if got := dig(ds, "metadata", "namespace"); got != "shoal" {
		t.Errorf("DaemonSet namespace %v", got)
	}
	for _, o := range all["example"] {
		if o["kind"] != "Namespace" && dig(o, "metadata", "namespace") != "shoal" {
			t.Errorf("%s is not in namespace shoal", kindName(o))
		}
	}
	checkDaemonSet(t, ds)
	checkService(t, find(t, all["example"], "Service/shoal-peers"), ds)
	checkPodMonitor(t, find(t, all["monitoring"], "PodMonitor/shoal"), ds)
	checkUninstall(t, find(t, all["uninstall"], "DaemonSet/shoal-uninstall"))
	if img := dig(containerByName(t, ds, "containers", "shoal"), "image"); img != "ghcr.io/shoal-mirror/shoal:v0.1.0" {
		t.Errorf("image %v: the base's images: entry did not apply", img)
	}
}

func matchName(pattern, name string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(name, p)
	}
	return pattern == name
}

func find(t *testing.T, objs []map[string]any, pattern string) map[string]any {
	t.Helper()
	for _, o := range objs {
		if matchName(pattern, kindName(o)) {
			return o
		}
	}
	t.Fatalf("no %s", pattern)
	return nil
}

// dig follows keys through nested maps; nil when a key is missing.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func list(v any) []map[string]any {
	var out []map[string]any
	l, _ := v.([]any)
	for _, e := range l {
		if m, ok := e.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

func volumeByName(t *testing.T, ds map[string]any, name string) map[string]any {
	t.Helper()
	for _, v := range list(dig(ds, "spec", "template", "spec", "volumes")) {
		if v["name"] == name {
			return v
		}
	}
	t.Fatalf("%s: no volume %s", kindName(ds), name)
	return nil
}

func containerByName(t *testing.T, ds map[string]any, field, name string) map[string]any {
	t.Helper()
	for _, c := range list(dig(ds, "spec", "template", "spec", field)) {
		if c["name"] == name {
			return c
		}
	}
	t.Fatalf("%s: no %s %s", kindName(ds), field, name)
	return nil
}

// checkPodSpec: rules the API server enforces that the schema does not express.
func checkPodSpec(t *testing.T, ds map[string]any) {
	t.Helper()
	name := kindName(ds)
	sel, _ := dig(ds, "spec", "selector", "matchLabels").(map[string]any)
	labels, _ := dig(ds, "spec", "template", "metadata", "labels").(map[string]any)
	if len(sel) == 0 {
		t.Errorf("%s: empty selector", name)
	}
	for k, v := range sel {
		if labels[k] != v {
			t.Errorf("%s: selector %s=%v does not match the pod labels %v", name, k, v, labels)
		}
	}
	pod, _ := dig(ds, "spec", "template", "spec").(map[string]any)
	volumes := map[string]bool{}
	for _, v := range list(pod["volumes"]) {
		volumes[v["name"].(string)] = true
	}
	seen := map[string]bool{}
	for _, field := range []string{"initContainers", "containers"} {
		for _, c := range list(pod[field]) {
			cn := c["name"].(string)
			if seen[cn] {
				t.Errorf("%s: two containers named %s", name, cn)
			}
			seen[cn] = true
			ports := map[string]bool{}
			for _, p := range list(c["ports"]) {
				pn, _ := p["name"].(string)
				if len(pn) > 15 {
					t.Errorf("%s/%s: port name %q longer than 15 characters", name, cn, pn)
				}
				ports[pn] = true
				if pod["hostNetwork"] == true && p["hostPort"] != nil && p["hostPort"] != p["containerPort"] {
					t.Errorf("%s/%s: with hostNetwork, hostPort must equal containerPort", name, cn)
				}
			}
			for _, probe := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
				if port, ok := dig(c, probe, "httpGet", "port").(string); ok && !ports[port] {
					t.Errorf("%s/%s: %s uses port %q, which the container does not name", name, cn, probe, port)
				}
			}
			for _, m := range list(c["volumeMounts"]) {
				if !volumes[m["name"].(string)] {
					t.Errorf("%s/%s: mounts undeclared volume %v", name, cn, m["name"])
				}
			}
			if field == "initContainers" && (c["livenessProbe"] != nil || c["readinessProbe"] != nil) {
				t.Errorf("%s/%s: init containers may not have probes", name, cn)
			}
			// `shoal setup containerd` checks its result in a scratch directory under /tmp.
			if args := fmt.Sprint(c["args"]); strings.HasPrefix(args, "[setup containerd") && dig(c, "securityContext", "readOnlyRootFilesystem") == true &&
				!slices.ContainsFunc(list(c["volumeMounts"]), func(m map[string]any) bool { return m["mountPath"] == "/tmp" }) {
				t.Errorf("%s/%s: read-only root file system and no writable /tmp for setup's scratch files", name, cn)
			}
			if dig(c, "resources", "limits", "memory") == nil {
				t.Errorf("%s/%s: no memory limit", name, cn)
			}
		}
	}
	if pod["hostNetwork"] == true && pod["dnsPolicy"] != "ClusterFirstWithHostNet" {
		t.Errorf("%s: hostNetwork pods need dnsPolicy ClusterFirstWithHostNet to resolve cluster names", name)
	}
	if !slices.ContainsFunc(list(pod["tolerations"]), func(tol map[string]any) bool { return tol["operator"] == "Exists" && tol["key"] == nil }) {
		t.Errorf("%s: does not tolerate every taint (it must run on every node)", name)
	}
}

func checkDaemonSet(t *testing.T, ds map[string]any) {
	t.Helper()
	checkPodSpec(t, ds)
	pod := dig(ds, "spec", "template", "spec")
	if dig(pod, "hostNetwork") != true {
		t.Error("the mirror must use the host network (127.0.0.1:5000 on the node)")
	}
	if dig(ds, "spec", "updateStrategy", "type") != "RollingUpdate" {
		t.Error("no rolling update")
	}
	if s := fmt.Sprint(dig(ds, "spec", "updateStrategy", "rollingUpdate", "maxSurge")); s != "0" {
		t.Errorf("maxSurge %s: host ports cannot surge", s)
	}
	init := containerByName(t, ds, "initContainers", "setup-containerd")
	args := fmt.Sprint(init["args"])
	for _, want := range []string{"setup containerd", "--hosts-dir=/host/etc/containerd/certs.d", "--host-root=/host"} {
		if !strings.Contains(args, want) {
			t.Errorf("init container args %s lack %s", args, want)
		}
	}
	if m := list(init["volumeMounts"]); len(m) == 0 || m[0]["mountPath"] != "/host/etc/containerd" ||
		dig(volumeByName(t, ds, m[0]["name"].(string)), "hostPath", "path") != "/etc/containerd" {
		t.Errorf("init container must see the node's /etc/containerd at /host/etc/containerd: %v", m)
	}
	c := containerByName(t, ds, "containers", "shoal")
	env := map[string]string{}
	for _, e := range list(c["env"]) {
		v, _ := e["value"].(string)
		env[e["name"].(string)] = v
	}
	if env["SHOAL_LISTEN"] != "127.0.0.1:5000" {
		t.Errorf("SHOAL_LISTEN %q, want the node's loopback", env["SHOAL_LISTEN"])
	}
	if !strings.HasPrefix(env["SHOAL_BOOTSTRAP_DNS"], "shoal-peers.$(POD_NAMESPACE).svc") || env["SHOAL_SWARM_KEY"] == "" {
		t.Errorf("P2P bootstrap/swarm key env: %v", env)
	}
	if mp := "/etc/shoal/swarm"; !strings.HasPrefix(env["SHOAL_SWARM_KEY"], mp+"/") {
		t.Errorf("SHOAL_SWARM_KEY %s is not under the secret's mount %s", env["SHOAL_SWARM_KEY"], mp)
	}
	if dig(c, "securityContext", "runAsNonRoot") != true || dig(c, "securityContext", "readOnlyRootFilesystem") != true {
		t.Errorf("the daemon container should run as non-root with a read-only root: %v", c["securityContext"])
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if got := dig(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %v, want %s", probe, got, path)
		}
	}
}

func checkService(t *testing.T, svc, ds map[string]any) {
	t.Helper()
	if dig(svc, "spec", "clusterIP") != "None" {
		t.Error("the peers Service must be headless (its DNS name lists every pod)")
	}
	if dig(svc, "spec", "publishNotReadyAddresses") != true {
		t.Error("the peers Service should list pods before they are ready")
	}
	labels, _ := dig(ds, "spec", "template", "metadata", "labels").(map[string]any)
	sel, _ := dig(svc, "spec", "selector").(map[string]any)
	for k, v := range sel {
		if labels[k] != v {
			t.Errorf("Service selector %s=%v does not select the DaemonSet's pods", k, v)
		}
	}
	c := containerByName(t, ds, "containers", "shoal")
	for _, p := range list(dig(svc, "spec", "ports")) {
		tp := p["targetPort"]
		if !slices.ContainsFunc(list(c["ports"]), func(cp map[string]any) bool {
			return cp["name"] == tp || fmt.Sprint(cp["containerPort"]) == fmt.Sprint(tp)
		}) {
			t.Errorf("Service targetPort %v is not a port of the shoal container", tp)
		}
	}
}

func checkPodMonitor(t *testing.T, pm, ds map[string]any) {
	t.Helper()
	if dig(pm, "apiVersion") != "monitoring.coreos.com/v1" {
		t.Errorf("PodMonitor apiVersion %v", pm["apiVersion"])
	}
	labels, _ := dig(ds, "spec", "template", "metadata", "labels").(map[string]any)
	sel, _ := dig(pm, "spec", "selector", "matchLabels").(map[string]any)
	for k, v := range sel {
		if labels[k] != v {
			t.Errorf("PodMonitor selector %s=%v does not select the DaemonSet's pods", k, v)
		}
	}
	c := containerByName(t, ds, "containers", "shoal")
	for _, ep := range list(dig(pm, "spec", "podMetricsEndpoints")) {
		if !slices.ContainsFunc(list(c["ports"]), func(cp map[string]any) bool { return cp["name"] == ep["port"] }) {
			t.Errorf("PodMonitor scrapes port %v, which the shoal container does not name", ep["port"])
		}
		if ep["path"] != "/metrics" {
			t.Errorf("PodMonitor path %v", ep["path"])
		}
	}
}

func checkUninstall(t *testing.T, ds map[string]any) {
	t.Helper()
	checkPodSpec(t, ds)
	init := containerByName(t, ds, "initContainers", "uninstall-containerd")
	if args := fmt.Sprint(init["args"]); !strings.Contains(args, "setup containerd --uninstall") {
		t.Errorf("uninstall init container args: %s", args)
	}
}

// validateObject checks one object against the embedded Kubernetes OpenAPI schema. Objects of
// kinds the schema does not know (the PodMonitor CRD) are checked by hand elsewhere.
func validateObject(t *testing.T, dir string, obj map[string]any) {
	t.Helper()
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	rs := openapi.SchemaForResourceType(kyaml.TypeMeta{APIVersion: apiVersion, Kind: kind})
	if rs == nil {
		if apiVersion == "monitoring.coreos.com/v1" {
			return
		}
		t.Errorf("%s: %s %s is not a Kubernetes v%s kind", dir, apiVersion, kind, openapi.GetSchemaVersion())
		return
	}
	v := &validator{root: openapi.Schema()}
	v.check(kindName(obj), obj, rs.Schema)
	for _, e := range v.errs {
		t.Errorf("%s: %s", dir, e)
	}
}

// validator walks a value and its OpenAPI (swagger 2) schema.
type validator struct {
	root *spec.Schema
	errs []string
}

func (v *validator) errorf(format string, args ...any) {
	v.errs = append(v.errs, fmt.Sprintf(format, args...))
}

func (v *validator) resolve(s *spec.Schema) *spec.Schema {
	for s != nil && s.Ref.String() != "" {
		name := strings.TrimPrefix(s.Ref.String(), "#/definitions/")
		d, ok := v.root.Definitions[name]
		if !ok {
			v.errorf("schema: unknown reference %s", s.Ref.String())
			return nil
		}
		s = &d
	}
	return s
}

func (v *validator) check(path string, val any, s *spec.Schema) {
	s = v.resolve(s)
	if s == nil || val == nil {
		return
	}
	if s.Format == "int-or-string" {
		switch val.(type) {
		case string, json.Number:
		default:
			v.errorf("%s: want an integer or a string, got %T", path, val)
		}
		return
	}
	if b, ok := s.Extensions.GetBool("x-kubernetes-preserve-unknown-fields"); ok && b {
		return
	}
	typ := ""
	if len(s.Type) > 0 {
		typ = s.Type[0]
	} else if len(s.Properties) > 0 {
		typ = "object"
	}
	switch typ {
	case "object":
		m, ok := val.(map[string]any)
		if !ok {
			v.errorf("%s: want an object, got %T", path, val)
			return
		}
		for _, r := range s.Required {
			if _, ok := m[r]; !ok {
				v.errorf("%s: required field %q missing", path, r)
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if p, ok := s.Properties[k]; ok {
				v.check(path+"."+k, m[k], &p)
				continue
			}
			if s.AdditionalProperties != nil && s.AdditionalProperties.Allows {
				v.check(path+"."+k, m[k], s.AdditionalProperties.Schema)
				continue
			}
			if len(s.Properties) > 0 || s.AdditionalProperties != nil {
				v.errorf("%s: unknown field %q", path, k)
			}
		}
	case "array":
		l, ok := val.([]any)
		if !ok {
			v.errorf("%s: want a list, got %T", path, val)
			return
		}
		if s.Items != nil && s.Items.Schema != nil {
			for i, e := range l {
				v.check(fmt.Sprintf("%s[%d]", path, i), e, s.Items.Schema)
			}
		}
	case "string":
		str, ok := val.(string)
		if !ok {
			v.errorf("%s: want a string, got %T (%v)", path, val, val)
			return
		}
		if len(s.Enum) > 0 && !slices.ContainsFunc(s.Enum, func(e any) bool { return e == str }) {
			v.errorf("%s: %q is not one of %v", path, str, s.Enum)
		}
	case "integer":
		n, ok := val.(json.Number)
		if _, err := n.Int64(); !ok || err != nil {
			v.errorf("%s: want an integer, got %v", path, val)
		}
	case "number":
		if _, ok := val.(json.Number); !ok {
			v.errorf("%s: want a number, got %T", path, val)
		}
	case "boolean":
		if _, ok := val.(bool); !ok {
			v.errorf("%s: want true or false, got %T (%v)", path, val, val)
		}
	}
}

// TestSchemaValidatorCatches: the validator above is not a rubber stamp.
func TestSchemaValidatorCatches(t *testing.T) {
	t.Parallel()
	bad := map[string]string{
		"unknown field":      `{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"x"},"spec":{"selector":{},"template":{"spec":{"containers":[{"name":"a","imagePullPolice":"Always"}]}}}}`,
		"want an integer":    `{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"},"spec":{"ports":[{"port":"5001"}]}}`,
		"want true or false": `{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"x"},"spec":{"selector":{},"template":{"spec":{"hostNetwork":"yes","containers":[]}}}}`,
		"required field":     `{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"x"},"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}`,
		"want a list":        `{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"},"spec":{"ports":{"port":1}}}`,
	}
	for want, doc := range bad {
		dec := json.NewDecoder(strings.NewReader(doc))
		dec.UseNumber()
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			t.Fatal(err)
		}
		rs := openapi.SchemaForResourceType(kyaml.TypeMeta{APIVersion: obj["apiVersion"].(string), Kind: obj["kind"].(string)})
		v := &validator{root: openapi.Schema()}
		v.check("x", obj, rs.Schema)
		if !slices.ContainsFunc(v.errs, func(e string) bool { return strings.Contains(e, want) }) {
			t.Errorf("%s: errors %v, want one with %q", doc, v.errs, want)
		}
	}
}
