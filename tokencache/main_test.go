package tokencache

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: a fetch
// that never ends, a renewal loop that outlives Close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
