package testutil

import (
	"io"
	"sync"
	"time"
)

// Link paces bytes like one slow link: every body read through it shares the rate, so N
// concurrent downloads each get 1/N of it (a per-response throttle would give each the whole
// rate). Slots are handed out in arrival order, so streams share it fairly; an idle link does
// not save up a burst.
type Link struct {
	mu   sync.Mutex
	rate float64   // bytes per second
	next time.Time // when the link is free again
}

// NewLink is a link of bytesPerSec.
func NewLink(bytesPerSec float64) *Link { return &Link{rate: bytesPerSec} }

// Wait blocks until n more bytes fit on the link.
func (l *Link) Wait(n int) {
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	due := l.next
	l.mu.Unlock()
	time.Sleep(time.Until(due)) // pacing, not synchronisation
}

// Body passes rc through the link in chunks of at most 32 KiB.
func (l *Link) Body(rc io.ReadCloser) io.ReadCloser { return &linkBody{rc: rc, l: l} }

type linkBody struct {
	rc io.ReadCloser
	l  *Link
}

func (b *linkBody) Read(p []byte) (int, error) {
	if len(p) > 32<<10 {
		p = p[:32<<10]
	}
	n, err := b.rc.Read(p)
	if n > 0 {
		b.l.Wait(n)
	}
	return n, err
}

func (b *linkBody) Close() error { return b.rc.Close() }
