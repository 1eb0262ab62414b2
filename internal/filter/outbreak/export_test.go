package outbreak

import "flag"

// Full runs the tests at the sizes (-args -outbreak.full).
var Full = flag.Bool("outbreak.full", false, "run the simulation and the measurements at the issue's size: 300 worm copies from 300 networks, 1,000 clean messages, 1,000,000 fingerprints")

func fullFlag() *bool { return Full }

// SamplesUsed is the bytes the samples of a samples folder hold.
func SamplesUsed(dir string) int64 {
	statesMu.Lock()
	defer statesMu.Unlock()
	return states[dir].samples.Used()
}
