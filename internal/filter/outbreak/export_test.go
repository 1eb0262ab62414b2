package outbreak

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"mailguard/internal/pipeline"
)

// Full runs the tests at full size (-args -outbreak.full).
var Full = flag.Bool("outbreak.full", false, "run the simulation and the measurements at full size: 300 worm copies from 300 networks, 1,000 clean messages, 1,000,000 fingerprints")

func fullFlag() *bool { return Full }

// SamplesUsed is the bytes the samples of a pipeline's outbreak filter
// hold.
func SamplesUsed(p interface{ Filter(string) pipeline.Filter }) int64 {
	return p.Filter(Name).(*Filter).opts.samples.Used()
}

// Info returns Redis's used_memory, in bytes.
func (r *Redis) Info(ctx context.Context) (int64, error) {
	s, err := r.client.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("redis %s: no used_memory in INFO", r.Addr())
}
