package mirror

import (
	"sync"
	"time"
)

// logEvery lets a repeated condition be logged once per period, not once per request.
type logEvery struct {
	mu    sync.Mutex
	every time.Duration
	last  time.Time
}

func (l *logEvery) do(fn func()) {
	l.mu.Lock()
	now := time.Now()
	ok := l.last.IsZero() || now.Sub(l.last) >= l.every
	if ok {
		l.last = now
	}
	l.mu.Unlock()
	if ok {
		fn()
	}
}
