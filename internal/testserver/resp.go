package testserver

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ReadRESPCommand reads one Redis command as a client sends it (an array
// of bulk strings) and returns its name: for stand-in servers that answer
// with replies a real Redis never gives.
func ReadRESPCommand(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
	if err != nil || n < 1 {
		return "", fmt.Errorf("not a command: %q", line)
	}
	var name string
	for i := range n {
		l, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(l, "$")))
		if err != nil || size < 0 {
			return "", fmt.Errorf("not a bulk string: %q", l)
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return "", err
		}
		if i == 0 {
			name = string(b[:size])
		}
	}
	return name, nil
}
