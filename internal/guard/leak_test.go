package guard

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine outlives them: a background loop not
// stopped by Close, a request not cancelled, a connection left open.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
