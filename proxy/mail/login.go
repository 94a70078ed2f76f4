package mail

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// loginError is a login the client is told failed.
type loginError struct {
	result string // ResultDenied, ResultRejected or ResultUnavailable
	reason string // one line for the client: no secret, no challenge
	err    error  // for the log
}

// rejectedError: the server refused the token. reason is the server's own
// one-line text when it is safe to show, else "".
type rejectedError struct{ reason string }

func (e *rejectedError) Error() string {
	if e.reason == "" {
		return "the server rejected the token"
	}
	return "the server rejected the token: " + e.reason
}

// serverError: the server answered the login with something that is not
// a verdict on the token (a temporary failure, an unsupported mechanism).
type serverError struct{ reason string }

func (e *serverError) Error() string { return "the server refused the login: " + e.reason }

// Reasons the client is given for failures that are not the server's.
const (
	reasonDenied      = "Authentication failed"
	reasonNoToken     = "No token for this account; see the proxy's log"
	reasonUnreachable = "Mail server unavailable; see the proxy's log"
	reasonRejected    = "The mail server rejected the account's token"
)

// login checks the client's credentials and logs in to the server with the
// account's token: a token the server rejects is dropped and the login
// tried once more, on a new connection, with a fresh one.
func (s *session) login(name string, pass []byte) (*serverConn, *loginError) {
	acct := s.l.check(name, pass, s.conn.LocalAddr())
	if acct == nil {
		s.out.Reason = "unknown account or wrong password"
		s.pause()
		return nil, &loginError{result: ResultDenied, reason: reasonDenied}
	}
	s.out.Account, s.out.OAuth2 = name, acct.OAuth2
	user := acct.User
	if user == "" {
		user = name
	}
	start := time.Now()
	defer func() {
		s.out.AuthDuration += time.Since(start)
		s.l.met.authDuration(s.out.Listener, time.Since(start))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), s.l.loginTimeout())
	defer cancel()
	s.mu.Lock()
	s.cancel = cancel // Close ends the login too
	hard := s.hard
	s.mu.Unlock()
	if hard {
		return nil, &loginError{result: ResultUnavailable, reason: reasonUnreachable, err: ErrListenerClosed}
	}

	tok, err := acct.Tokens.Token(ctx)
	if err != nil {
		return nil, tokenFailure(err)
	}
	sc, err := s.attempt(ctx, user, tok)
	var rej *rejectedError
	if !errors.As(err, &rej) {
		return sc, serverFailure(err)
	}
	acct.Tokens.Invalidate(tok)
	fresh, err := acct.Tokens.Token(ctx)
	if err != nil {
		return nil, tokenFailure(err)
	}
	if fresh == tok { // renewal refused for now (rate limit): it would fail the same way
		return nil, rejected(rej)
	}
	s.out.Retried = true
	sc, err = s.attempt(ctx, user, fresh)
	if errors.As(err, &rej) {
		return nil, rejected(rej)
	}
	return sc, serverFailure(err)
}

func rejected(rej *rejectedError) *loginError {
	reason := rej.reason
	if reason == "" {
		reason = reasonRejected
	}
	return &loginError{result: ResultRejected, reason: reason, err: rej}
}

func tokenFailure(err error) *loginError {
	reason := reasonNoToken
	// A token source error that knows its code has a message meant for
	// clients (proxy.StatusError): "sign-in required: sign in at ...".
	var coded interface{ ErrorCode() string }
	if errors.As(err, &coded) {
		if r := safeLine(coded.(error).Error()); r != "" {
			reason = r
		}
	}
	return &loginError{result: ResultUnavailable, reason: reason, err: fmt.Errorf("getting a token: %w", err)}
}

func serverFailure(err error) *loginError {
	if err == nil {
		return nil
	}
	reason := reasonUnreachable
	var se *serverError
	if errors.As(err, &se) && se.reason != "" {
		reason = se.reason
	}
	return &loginError{result: ResultUnavailable, reason: reason, err: err}
}

// check returns the account name opens when pass is its password, else
// nil. It takes as long for an unknown name as for a wrong password, and
// compares digests so that the time says nothing of the length either.
func (l *Listener) check(name string, pass []byte, local net.Addr) *Account {
	acct, ok := l.Accounts(name)
	want := dummyPassword
	if ok && acct != nil && acct.Password != nil {
		want = acct.Password
	}
	a, b := sha256.Sum256(pass), sha256.Sum256(want)
	match := subtle.ConstantTimeCompare(a[:], b[:]) == 1
	switch {
	case !ok || acct == nil || acct.Tokens == nil:
		return nil
	case acct.Password == nil:
		// No password is for loopback only; the config checks it too,
		// this holds if a listener is ever bound wider by mistake.
		if !isLoopbackAddr(local) {
			return nil
		}
		return acct
	case match:
		return acct
	}
	return nil
}

var dummyPassword = []byte("no account has this password \x00")

func isLoopbackAddr(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// pause slows a refused login down; Close cuts it short.
func (s *session) pause() {
	d := s.l.failureDelay()
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.l.done:
	}
}

// serverConn is a connection to the mail server while the proxy logs in.
type serverConn struct {
	conn net.Conn
	r    *bufio.Reader
	l    *Listener
	// seen holds the server's challenges, so that no reason shown to a
	// client repeats one.
	seen []string
	// What the server said on success, for the client: the final line
	// (IMAP: without its tag) and any untagged lines before it.
	success  string
	untagged []string
}

// attempt connects to the server and logs in with token. On success the
// connection is the session's; on failure it is closed.
func (s *session) attempt(ctx context.Context, user, token string) (*serverConn, error) {
	l := s.l
	d := net.Dialer{Timeout: l.dialTimeout(), KeepAlive: 30 * time.Second}
	c, err := d.DialContext(ctx, "tcp", l.Server)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s server %s: %w", l.Protocol, l.Server, err)
	}
	s.mu.Lock()
	if s.hard {
		s.mu.Unlock()
		c.Close()
		return nil, errors.New("the listener is closing")
	}
	s.server = c
	s.mu.Unlock()
	sc := &serverConn{conn: c, l: l}
	ok := false
	defer func() {
		if !ok {
			c.Close()
			if sc.conn != c {
				sc.conn.Close()
			}
			s.mu.Lock()
			s.server = nil
			s.mu.Unlock()
		}
	}()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	if l.ServerTLS.Mode == Implicit {
		if err := sc.startTLS(ctx); err != nil {
			return nil, err
		}
	} else {
		sc.r = bufio.NewReaderSize(c, 4<<10)
	}
	switch l.Protocol {
	case IMAP:
		err = sc.imapLogin(ctx, user, token)
	case POP3:
		err = sc.pop3Login(ctx, user, token)
	case SMTP:
		err = sc.smtpLogin(ctx, user, token)
	}
	if err != nil {
		return nil, err
	}
	sc.conn.SetDeadline(time.Time{})
	s.mu.Lock()
	s.server = sc.conn
	s.loggedIn = true
	s.mu.Unlock()
	ok = true
	return sc, nil
}

// startTLS makes the server connection TLS, verifying the server's
// certificate. Whatever the server sent before is dropped with the old
// reader; a server that sent more after its STARTTLS answer is not
// trusted.
func (sc *serverConn) startTLS(ctx context.Context) error {
	if sc.r != nil && sc.r.Buffered() > 0 {
		return fmt.Errorf("%s server %s sent data after its STARTTLS answer, before the handshake", sc.l.Protocol, sc.l.Server)
	}
	tc := tls.Client(sc.conn, sc.l.toServer)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS with %s server %s: %w", sc.l.Protocol, sc.l.Server, err)
	}
	sc.conn = tc
	sc.r = bufio.NewReaderSize(tc, 4<<10)
	return nil
}

// send writes one line to the server. Its error never holds the line,
// which may hold the token.
func (sc *serverConn) send(line string) error {
	if _, err := sc.conn.Write([]byte(line + "\r\n")); err != nil {
		return fmt.Errorf("writing to %s server %s: %w", sc.l.Protocol, sc.l.Server, err)
	}
	return nil
}

// read reads one line from the server.
func (sc *serverConn) read() (string, error) {
	line, err := readLine(sc.r, maxServerLine)
	if err != nil {
		return "", fmt.Errorf("reading from %s server %s: %w", sc.l.Protocol, sc.l.Server, err)
	}
	return string(line), nil
}

// challenge notes a server challenge so that reasons never repeat it.
func (sc *serverConn) challenge(c string) {
	if c = strings.TrimSpace(c); c != "" {
		sc.seen = append(sc.seen, c)
		if raw, err := decodeBase64([]byte(c)); err == nil && len(raw) > 0 {
			sc.seen = append(sc.seen, string(raw))
		}
	}
}

// reason turns a server's failure text into one line safe for the client:
// printable ASCII, short, without a leading response code, and "" when it
// holds a challenge or anything that looks like an encoded blob.
func (sc *serverConn) reason(text string) string {
	text = stripCode(strings.TrimSpace(text))
	r := safeLine(text)
	for _, c := range sc.seen {
		if strings.Contains(text, c) || strings.Contains(c, text) && len(text) > 16 {
			return ""
		}
	}
	return r
}

// stripCode drops a leading "[CODE ...]" (IMAP, POP3) or "5.7.8"
// (SMTP enhanced status) from a server's text.
func stripCode(t string) string {
	if strings.HasPrefix(t, "[") {
		if i := strings.IndexByte(t, ']'); i > 0 {
			t = strings.TrimSpace(t[i+1:])
		}
	}
	if f, rest, ok := strings.Cut(t, " "); ok && isEnhancedCode(f) {
		t = strings.TrimSpace(rest)
	}
	return t
}

func isEnhancedCode(f string) bool {
	parts := strings.Split(f, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// safeLine keeps a line a client may be shown: printable ASCII, at most
// 200 bytes, and "" when it has a run of 40 or more base64 characters (a
// token, a challenge) or mentions a bearer.
func safeLine(t string) string {
	var b strings.Builder
	run := 0
	for i := 0; i < len(t) && b.Len() < 200; i++ {
		c := t[i]
		if c < 0x20 || c > 0x7e {
			c = ' '
		}
		if isBase64Char(c) {
			if run++; run >= 40 {
				return ""
			}
		} else {
			run = 0
		}
		b.WriteByte(c)
	}
	out := strings.TrimSpace(b.String())
	if strings.Contains(strings.ToLower(out), "bearer") {
		return ""
	}
	return out
}

func isBase64Char(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '=' || c == '-' || c == '_' || c == '.'
}
