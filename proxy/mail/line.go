package mail

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// Limits on what a client may send before it has logged in: enough for any
// real login (a password is short, a PLAIN response a few hundred bytes),
// small enough that a stranger cannot make the proxy hold much memory.
const (
	maxClientLine   = 8 << 10  // one command line
	maxLiteral      = 8 << 10  // one IMAP literal ({n})
	maxCommand      = 16 << 10 // one IMAP command with all its literals
	maxServerLine   = 64 << 10 // one server response line while logging in
	maxClientErrors = 10       // unknown or malformed commands before we hang up
)

// errLineTooLong: the peer sent a line over the limit. The rest of the
// line is not read, so the conversation cannot go on: answer and hang up.
var errLineTooLong = errors.New("line too long")

// readLine reads one line ending in LF and returns it without its CRLF (or
// bare LF). A line over max bytes fails with errLineTooLong.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > max+2 { // +2: the CRLF
			return nil, errLineTooLong
		}
		line = append(line, frag...)
		switch {
		case err == nil:
			return trimEOL(line), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}
