package p2p

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

// At its upload limit, a node sends the next asker to the peer already streaming the blob
// from it, and the asker gets the whole blob from that peer.
func TestRedirectAtUploadLimit(t *testing.T) {
	ips := loopbackIPs(3)
	blob := randomBlob(11, 1<<20)
	cfgA := testConfig(ips[0])
	cfgA.MaxUploadsPerBlob = 1
	a := startNode(t, cfgA, newMemContent(blob))
	// b follows a's download in the real swarm; here it simply holds the blob too.
	b := startNode(t, bootstrapTo(testConfig(ips[1]), a), newMemContent(blob))
	c := startNode(t, bootstrapTo(testConfig(ips[2]), a), nil)
	for _, n := range []*testNode{a, b, c} {
		waitRT(t, n, 2)
	}
	d := b.content.put(blob)

	// b streams from a and has not finished: a is at its limit of one upload for d.
	held, _, err := b.Fetch(t.Context(), peerOf(a), d, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(held, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}

	rc, size, err := c.Fetch(t.Context(), peerOf(a), d, 0)
	if err != nil {
		t.Fatalf("fetch from a node at its upload limit: %v", err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || size != int64(len(blob)) || !bytes.Equal(got, blob) {
		t.Fatalf("redirected fetch: %d of %d bytes, err %v", len(got), size, err)
	}
	if from := rc.(interface{ Peer() string }).Peer(); from != b.ID() {
		t.Fatalf("bytes came from %s, want %s (the peer a redirected to)", from, b.ID())
	}
	if r := a.Status().Redirected; r != 1 {
		t.Fatalf("a counted %d redirects, want 1", r)
	}

	// Once b's stream is over, a serves again itself.
	held.Close()
	waitFor(t, 5*time.Second, "a's upload to b to end", func() bool {
		a.uploads.mu.Lock()
		defer a.uploads.mu.Unlock()
		return len(a.uploads.m) == 0
	})
	rc, _, err = c.Fetch(t.Context(), peerOf(a), d, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if from := rc.(interface{ Peer() string }).Peer(); from != a.ID() {
		t.Fatalf("after the upload ended, bytes came from %s, want a (%s)", from, a.ID())
	}
}

func TestParseRedirect(t *testing.T) {
	id := "12D3KooWLya2DpJKp19CLAUmsFkWkkxzMSNEQukqFGuTkZBHgbHw"
	for _, tc := range []struct {
		line     string
		redirect bool
		n        int
		ok       bool
	}{
		{"REDIRECT " + id + "\n", true, 1, true},
		{"REDIRECT " + id + " " + id + "\n", true, 2, true},
		{"REDIRECT " + strings.Repeat(id+" ", maxRedirectPeers) + id + "\n", true, 0, false},
		{"REDIRECT notapeer\n", true, 0, false},
		{"REDIRECT \n", true, 0, false},
		{"REDIRECT " + id, true, 0, false},
		{"REDIRECT\n", false, 0, true}, // not a redirect line: parseResponse refuses it
		{"OK 5\n", false, 0, true},
	} {
		ids, redirect, err := parseRedirect([]byte(tc.line))
		if redirect != tc.redirect || (err == nil) != tc.ok || len(ids) != tc.n {
			t.Errorf("parseRedirect(%q) = %v, %v, %v", tc.line, ids, redirect, err)
		}
		for _, x := range ids {
			if x.String() != id {
				t.Errorf("parseRedirect(%q): peer %s", tc.line, x)
			}
		}
	}
	if _, _, err := parseResponse([]byte("REDIRECT\n")); err == nil {
		t.Error(`parseResponse accepted "REDIRECT\n"`)
	}
}

func TestRateLogOncePerMinute(t *testing.T) {
	var l rateLog
	t0 := time.Now()
	if _, ok := l.allow(t0); !ok {
		t.Fatal("the first warning was held back")
	}
	for i := range 5 {
		if _, ok := l.allow(t0.Add(time.Duration(i) * time.Second)); ok {
			t.Fatalf("warning %d within the minute let through", i+2)
		}
	}
	if skipped, ok := l.allow(t0.Add(time.Minute)); !ok || skipped != 5 {
		t.Fatalf("after a minute: ok=%v, skipped=%d, want true, 5", ok, skipped)
	}
}
