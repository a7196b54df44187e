package doctor

import "testing"

func TestMirrorURL(t *testing.T) {
	for in, want := range map[string]string{
		"0.0.0.0:5000":   "http://127.0.0.1:5000",
		":5000":          "http://127.0.0.1:5000",
		"[::]:5000":      "http://[::1]:5000",
		"10.0.0.1:5000":  "http://10.0.0.1:5000",
		"no port at all": "",
	} {
		if got := MirrorURL(in, false); got != want {
			t.Errorf("MirrorURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// findConfigPath reads the registry's configPath from CRI's verbose status (containerd 1.x
// reports its whole CRI config there).
func TestFindConfigPath(t *testing.T) {
	if p, ok := findConfigPath(`{"containerd":{"snapshotter":"overlayfs"},"registry":{"configPath":"/etc/containerd/certs.d"}}`); !ok || p != "/etc/containerd/certs.d" {
		t.Errorf("got %q %v", p, ok)
	}
	if _, ok := findConfigPath(`{"containerd":{}}`); ok {
		t.Errorf("found a configPath in a config without one")
	}
}

func TestSameURL(t *testing.T) {
	if !sameURL("http://127.0.0.1:5000/", "http://127.0.0.1:5000") || sameURL("https://127.0.0.1:5000", "http://127.0.0.1:5000") {
		t.Error("sameURL")
	}
}
