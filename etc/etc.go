// Package etc holds the files mailguard ships: the example signature file
// that `serve` uses without a configuration, and the complete commented
// example configuration.
package etc

import _ "embed"

// Signatures is the bundled example signature file.
//
//go:embed signatures
var Signatures []byte

// SignaturesName is how the bundled signatures are named in messages.
const SignaturesName = "(bundled example signatures)"

// ExampleConfig is the complete commented example configuration.
//
//go:embed mailguard.toml
var ExampleConfig []byte

// ExampleUsers is an example user directory for the quota filter.
//
//go:embed users.example
var ExampleUsers []byte

// ExampleBlocklist is an example sender blocklist.
//
//go:embed blocklist.example
var ExampleBlocklist []byte
