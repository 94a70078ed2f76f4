//go:build race

package e2e

// raceEnabled builds the binary under test with -race too, so that a data
// race in the running proxy fails the suite.
const raceEnabled = true
