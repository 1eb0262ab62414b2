package milterdoor

import "syscall"

// errTooManyFiles is the accept error to wait out rather than die of.
var errTooManyFiles error = syscall.EMFILE
