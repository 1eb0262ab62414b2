//go:build race

package e2e

// raceFlags builds the daemon with the race detector when the tests run
// with it, so races under real MTAs and real concurrency are caught too.
var raceFlags = []string{"-race"}
