package matcher

// Scanner finds patterns in a stream that arrives in chunks, such as a
// message body from the MTA. It keeps only the last (longest pattern - 1) bytes of the
// stream, which is all a match spanning a chunk boundary needs, so memory per
// stream is bounded by the longest pattern, not by the message.
//
// A Scanner is not safe for concurrent use. Reset it to reuse it.
type Scanner struct {
	m     *Matcher
	carry []byte // the last m.maxLen-1 bytes of the stream so far
	join  []byte // carry + head of the next chunk, for boundary matches
	hit   int
}

// NewScanner returns a scanner for one stream.
func (m *Matcher) NewScanner() *Scanner {
	s := &Scanner{m: m, hit: -1}
	if m.maxLen > 1 {
		s.carry = make([]byte, 0, m.maxLen-1)
		s.join = make([]byte, 0, 2*(m.maxLen-1))
	}
	return s
}

// Reset prepares the scanner for a new stream.
func (s *Scanner) Reset() {
	s.carry = s.carry[:0]
	s.hit = -1
}

// Write scans the next chunk and reports whether a pattern has been found in
// the stream so far. After the first hit further chunks are ignored.
func (s *Scanner) Write(chunk []byte) bool {
	if s.hit >= 0 || s.m.patCount == 0 || len(chunk) == 0 {
		return s.hit >= 0
	}
	keep := s.m.maxLen - 1
	if len(s.carry) > 0 {
		// Matches that start in the carry and end in this chunk lie within
		// carry + the first keep bytes of the chunk.
		s.join = append(append(s.join[:0], s.carry...), chunk[:min(len(chunk), keep)]...)
		if p := s.m.Find(s.join); p >= 0 {
			s.hit = p
			return true
		}
	}
	if p := s.m.Find(chunk); p >= 0 {
		s.hit = p
		return true
	}
	if len(chunk) >= keep {
		s.carry = append(s.carry[:0], chunk[len(chunk)-keep:]...)
	} else {
		s.carry = append(s.carry, chunk...)
		if over := len(s.carry) - keep; over > 0 {
			s.carry = s.carry[:copy(s.carry, s.carry[over:])]
		}
	}
	return false
}

// Hit returns the index of the pattern found, or -1.
func (s *Scanner) Hit() int { return s.hit }
