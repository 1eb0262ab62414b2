package testserver

// kill ends the process with SIGKILL, as a crash or the kernel's
// out-of-memory killer does: no clean-up, nothing flushed, a unix socket
// file left behind.
func (p *process) kill() {
	if p.exited() {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
}

// Kill ends clamd with SIGKILL, mid-scan if one is running; Start brings
// it back (its stale socket is replaced, FixStaleSocket).
func (c *Clamd) Kill() {
	c.proc.kill()
}

// Kill ends redis-server with SIGKILL; Start brings it back, empty, on
// the same port.
func (r *Redis) Kill() {
	r.proc.kill()
}
