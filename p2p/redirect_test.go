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

// A node that sent a blob whole to as many peers as its upload limit sends the next asker to
// one of them, however fast those copies went: a node's copies of a blob stay about the limit
// (TestSwarm60Herd saw one node send a blob 9-12 times with a limit of 4 once copies took
// milliseconds). A peer that only read part of it is not named.
func TestRedirectToPeerThatGotItWhole(t *testing.T) {
	ips := loopbackIPs(4)
	blob := randomBlob(12, 1<<20)
	cfgA := testConfig(ips[0])
	cfgA.MaxUploadsPerBlob = 1
	a := startNode(t, cfgA, newMemContent(blob))
	part := startNode(t, bootstrapTo(testConfig(ips[1]), a), nil)
	b := startNode(t, bootstrapTo(testConfig(ips[2]), a), newMemContent(blob))
	c := startNode(t, bootstrapTo(testConfig(ips[3]), a), nil)
	for _, n := range []*testNode{a, part, b, c} {
		waitRT(t, n, 3)
	}
	d := b.content.put(blob)
	fetchFrom := func(n *testNode) string {
		t.Helper()
		rc, _, err := n.Fetch(t.Context(), peerOf(a), d, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("%d bytes, err %v", len(got), err)
		}
		return rc.(interface{ Peer() string }).Peer()
	}
	// part reads 1000 bytes and hangs up: a gave it no whole copy.
	rc, _, err := part.Fetch(t.Context(), peerOf(a), d, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	waitFor(t, 5*time.Second, "a's upload to part to end", func() bool {
		a.uploads.mu.Lock()
		defer a.uploads.mu.Unlock()
		return len(a.uploads.m) == 0
	})
	if from := fetchFrom(b); from != a.ID() {
		t.Fatalf("b's copy came from %s, want a", from)
	}
	if from := fetchFrom(c); from != b.ID() {
		t.Fatalf("c's copy came from %s, want b (a sent b a whole copy and its limit is 1)", from)
	}
	if r := a.Status().Redirected; r != 1 {
		t.Fatalf("a counted %d redirects, want 1", r)
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
