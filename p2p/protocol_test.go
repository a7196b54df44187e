package p2p

import (
	"bytes"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseRequest(t *testing.T) {
	sha512 := "sha512:" + hex64 + hex64
	for _, tc := range []struct {
		name   string
		line   string
		ok     bool
		offset int64
	}{
		{"whole", "sha256:" + hex64 + " 0 local\n", true, 0},
		{"range", "sha256:" + hex64 + " 1048576 local\n", true, 1048576},
		{"sha512", sha512 + " 7 local\n", true, 7},
		{"max offset", "sha256:" + hex64 + " 4611686018427387904 local\n", true, 1 << 62},
		{"offset too big", "sha256:" + hex64 + " 4611686018427387905 local\n", false, 0},
		{"offset overflow", "sha256:" + hex64 + " 99999999999999999999 local\n", false, 0},
		{"negative offset", "sha256:" + hex64 + " -1 local\n", false, 0},
		{"plus offset", "sha256:" + hex64 + " +1 local\n", false, 0},
		{"leading zero", "sha256:" + hex64 + " 01 local\n", false, 0},
		{"empty offset", "sha256:" + hex64 + "  local\n", false, 0},
		{"no newline", "sha256:" + hex64 + " 0 local", false, 0},
		{"crlf", "sha256:" + hex64 + " 0 local\r\n", false, 0},
		{"two newlines", "sha256:" + hex64 + " 0 local\n\n", false, 0},
		{"upper hex", "sha256:" + strings.ToUpper(hex64) + " 0 local\n", false, 0},
		{"short hex", "sha256:" + hex64[:63] + " 0 local\n", false, 0},
		{"md5", "md5:" + hex64[:32] + " 0 local\n", false, 0},
		{"no algorithm", hex64 + " 0 local\n", false, 0},
		{"tag", "latest 0 local\n", false, 0},
		{"other mode", "sha256:" + hex64 + " 0 upstream\n", false, 0},
		{"no mode", "sha256:" + hex64 + " 0\n", false, 0},
		{"extra field", "sha256:" + hex64 + " 0 local x\n", false, 0},
		{"tab", "sha256:" + hex64 + "\t0 local\n", false, 0},
		{"too long", "sha256:" + hex64 + " 0 local" + strings.Repeat(" ", 300) + "\n", false, 0},
		{"empty", "", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseRequest([]byte(tc.line))
			if tc.ok != (err == nil) {
				t.Fatalf("parseRequest(%q) = %+v, %v; want ok=%v", tc.line, r, err, tc.ok)
			}
			if tc.ok {
				if r.Offset != tc.offset || r.Mode != modeLocal || !bytes.Equal(r.marshal(), []byte(tc.line)) {
					t.Fatalf("parsed %+v, marshals to %q", r, r.marshal())
				}
			}
		})
	}
}

func TestParseResponse(t *testing.T) {
	for _, tc := range []struct {
		line   string
		status string
		size   int64
		ok     bool
	}{
		{"OK 0\n", statusOK, 0, true},
		{"OK 123\n", statusOK, 123, true},
		{"RANGE 5\n", statusRange, 5, true},
		{"NOTFOUND\n", statusNotFound, 0, true},
		{"BUSY\n", statusBusy, 0, true},
		{"OK\n", "", 0, false},
		{"OK -1\n", "", 0, false},
		{"OK 1", "", 0, false},
		{"NOTFOUND x\n", "", 0, false},
		{"HELLO\n", "", 0, false},
	} {
		st, size, err := parseResponse([]byte(tc.line))
		if tc.ok != (err == nil) || st != tc.status || size != tc.size {
			t.Errorf("parseResponse(%q) = %q %d %v", tc.line, st, size, err)
		}
	}
}

func TestDigestKey(t *testing.T) {
	d := digest.Digest("sha256:" + hex64)
	c, err := digestKey(d)
	if err != nil {
		t.Fatal(err)
	}
	// CIDv1, raw codec (0x55), sha2-256 (0x12), 32 bytes, then the digest's own bytes.
	want := append([]byte{0x01, 0x55, 0x12, 0x20}, mustHex(hex64)...)
	if !bytes.Equal(c.Bytes(), want) {
		t.Fatalf("key bytes %x, want %x", c.Bytes(), want)
	}
	if _, err := digestKey("sha256:nothex"); err == nil {
		t.Fatal("invalid digest accepted")
	}
	if _, err := digestKey(digest.Digest("sha384:" + hex64 + hex64[:32])); err == nil {
		t.Fatal("sha384 accepted")
	}
}

func mustHex(s string) []byte {
	b := make([]byte, len(s)/2)
	for i := range b {
		b[i] = unhex(s[2*i])<<4 | unhex(s[2*i+1])
	}
	return b
}

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'a' + 10
}

// FuzzParseRequest: the parser never panics, accepts only what it can reproduce byte for
// byte, and everything it accepts is a canonical digest with an offset in range.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("sha256:" + hex64 + " 0 local\n"))
	f.Add([]byte("sha512:" + hex64 + hex64 + " 42 local\n"))
	f.Add([]byte("sha256:" + hex64 + " 4611686018427387904 local\n"))
	f.Add([]byte("sha256:" + hex64 + " 01 local\n"))
	f.Add([]byte("latest 0 local\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := parseRequest(line)
		if err != nil {
			return
		}
		if len(line) > maxRequestLine {
			t.Fatalf("accepted a %d-byte line", len(line))
		}
		if !bytes.Equal(r.marshal(), line) {
			t.Fatalf("accepted %q but it marshals to %q", line, r.marshal())
		}
		if err := r.Digest.Validate(); err != nil {
			t.Fatalf("accepted invalid digest %q: %v", r.Digest, err)
		}
		if _, err := digestKey(r.Digest); err != nil {
			t.Fatalf("accepted digest without a DHT key: %v", err)
		}
		if r.Offset < 0 || r.Offset > maxOffset {
			t.Fatalf("accepted offset %d", r.Offset)
		}
	})
}

// FuzzResponseLine: the response parsers never panic; a REDIRECT is accepted only with 1 to
// maxRedirectPeers valid peer IDs, exactly as they appear on the line.
func FuzzResponseLine(f *testing.F) {
	id := "12D3KooWLya2DpJKp19CLAUmsFkWkkxzMSNEQukqFGuTkZBHgbHw"
	f.Add([]byte("OK 42\n"))
	f.Add([]byte("REDIRECT " + id + "\n"))
	f.Add([]byte("REDIRECT " + id + " " + id + "\n"))
	f.Add([]byte("REDIRECT Qm\n"))
	f.Fuzz(func(t *testing.T, line []byte) {
		parseResponse(line)
		ids, redirect, err := parseRedirect(line)
		if !redirect || err != nil {
			return
		}
		if len(ids) == 0 || len(ids) > maxRedirectPeers {
			t.Fatalf("accepted %d peers from %q", len(ids), line)
		}
		var b strings.Builder
		b.WriteString(statusRedirect)
		for _, x := range ids {
			b.WriteString(" " + x.String())
		}
		if b.String()+"\n" != string(line) {
			t.Fatalf("accepted %q but its peers print as %q", line, b.String())
		}
	})
}
