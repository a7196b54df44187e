package testutil

import (
	"fmt"
	"testing"
	"time"
)

// Poll calls f until it returns nil (then nil), abort returns an error (that error; abort
// gets f's last one to put in it), or timeout passes (f's last error). abort may be nil; it
// is how a caller stops waiting on a process that already exited. The interval grows from
// 5 ms to 250 ms.
func Poll(timeout time.Duration, f func() error, abort func(last error) error) error {
	deadline := time.Now().Add(timeout)
	tick := 5 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		if abort != nil {
			if aerr := abort(err); aerr != nil {
				return aerr
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s: %w", timeout, err)
		}
		time.Sleep(tick) // polling interval, not synchronisation
		if tick < 250*time.Millisecond {
			tick = min(2*tick, 250*time.Millisecond)
		}
	}
}

// WaitFor polls cond until it holds, or fails the test after timeout naming what it waited for.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	err := Poll(timeout, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf("%s", what)
	}, nil)
	if err != nil {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}
