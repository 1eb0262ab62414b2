//go:build race

package milterdoor

// raceBuild: see newRawIO.
const raceBuild = true
