package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: a retry
// that never returns, a body copy stuck on a closed upstream.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
