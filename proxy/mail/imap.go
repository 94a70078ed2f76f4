package mail

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// IMAP (RFC 9051, RFC 3501) before login: the proxy is the server.

// imapCaps are the capabilities the proxy shows before login: what it
// accepts, not the server's (whose LOGINDISABLED would stop clients).
func (s *session) imapCaps() string {
	caps := "IMAP4rev1 LITERAL+ SASL-IR"
	if s.mayStartTLS() {
		caps += " STARTTLS"
	}
	if s.loginDisabled() {
		return caps + " LOGINDISABLED"
	}
	return caps + " AUTH=PLAIN"
}

// imap runs the client side until a login succeeds (the server
// connection is returned) or the session ends (nil).
func (s *session) imap() *serverConn {
	if s.reply("* OK [CAPABILITY "+s.imapCaps()+"] oauthproxy ready") != nil {
		return nil
	}
	for s.awaitCommand() {
		cmd, err := readIMAPCommand(s.r, s.conn)
		var bad *imapSyntaxError
		switch {
		case errors.As(err, &bad):
			tag := bad.tag
			if tag == "" {
				tag = "*"
			}
			if s.reply(tag+" BAD "+bad.msg) != nil || s.misbehaved() {
				return nil
			}
			continue
		case errors.Is(err, errLineTooLong), errors.Is(err, errLiteralTooLarge):
			s.out.Reason = "client: " + err.Error()
			s.reply("* BYE " + capitalize(err.Error()))
			return nil
		case err != nil: // gone, idle too long, or shutting down
			s.shuttingDown("* BYE Server shutting down")
			return nil
		}
		if sc, done := s.imapCommand(cmd); done {
			return sc
		}
	}
	s.shuttingDown("* BYE Server shutting down")
	return nil
}

// imapCommand handles one command; done means the session leaves the
// pre-login loop, with the server connection when logged in.
func (s *session) imapCommand(cmd *imapCommand) (sc *serverConn, done bool) {
	t := cmd.tag
	switch cmd.name {
	case "CAPABILITY":
		return nil, s.reply("* CAPABILITY "+s.imapCaps(), t+" OK CAPABILITY completed") != nil
	case "NOOP":
		return nil, s.reply(t+" OK NOOP completed") != nil
	case "LOGOUT":
		s.reply("* BYE Logging out", t+" OK LOGOUT completed")
		return nil, true
	case "STARTTLS":
		if !s.mayStartTLS() {
			return nil, s.reply(t+" BAD STARTTLS is not available") != nil || s.misbehaved()
		}
		if s.pipelinedTLS() {
			s.out.Reason = "client: command pipelined after STARTTLS"
			s.reply(t + " BAD Nothing may follow STARTTLS before the handshake")
			return nil, true
		}
		if s.reply(t+" OK Begin TLS negotiation now") != nil {
			return nil, true
		}
		if err := s.startTLS(); err != nil {
			s.out.Reason = err.Error()
			return nil, true
		}
		return nil, false
	case "LOGIN":
		if s.loginDisabled() {
			return nil, s.reply(t+" NO [PRIVACYREQUIRED] Use STARTTLS first") != nil || s.misbehaved()
		}
		if len(cmd.args) != 2 || !cmd.args[0].isString() || !cmd.args[1].isString() {
			return nil, s.reply(t+" BAD LOGIN takes a user name and a password") != nil || s.misbehaved()
		}
		return s.imapLogin(t, string(cmd.args[0].val), cmd.args[1].val)
	case "AUTHENTICATE":
		if s.loginDisabled() {
			return nil, s.reply(t+" NO [PRIVACYREQUIRED] Use STARTTLS first") != nil || s.misbehaved()
		}
		if len(cmd.args) < 1 || len(cmd.args) > 2 || cmd.args[0].kind != argAtom {
			return nil, s.reply(t+" BAD AUTHENTICATE takes a mechanism and an optional initial response") != nil || s.misbehaved()
		}
		if !strings.EqualFold(string(cmd.args[0].val), "PLAIN") {
			return nil, s.reply(t+" NO [CANNOT] Only AUTHENTICATE PLAIN is supported") != nil || s.misbehaved()
		}
		var resp []byte
		if len(cmd.args) == 2 {
			resp = cmd.args[1].val
			if string(resp) == "=" { // RFC 4959: an empty initial response
				resp = nil
			}
		} else {
			if s.reply("+ ") != nil {
				return nil, true
			}
			line, err := readLine(s.r, maxClientLine)
			if err != nil {
				return nil, true
			}
			if string(line) == "*" {
				return nil, s.reply(t+" BAD Authentication cancelled") != nil || s.misbehaved()
			}
			resp = line
		}
		user, pass, err := decodePlain(resp)
		if err != nil {
			return nil, s.reply(t+" BAD Malformed PLAIN response") != nil || s.misbehaved()
		}
		return s.imapLogin(t, user, pass)
	}
	return nil, s.reply(t+" BAD Unknown command or not allowed before login") != nil || s.misbehaved()
}

// imapLogin logs in and answers the client with the server's verdict.
func (s *session) imapLogin(tag, user string, pass []byte) (*serverConn, bool) {
	sc, le := s.login(user, pass)
	if le != nil {
		s.failed(le)
		code := "UNAVAILABLE"
		if le.result != ResultUnavailable {
			code = "AUTHENTICATIONFAILED"
		}
		return nil, s.reply(tag+" NO ["+code+"] "+le.reason) != nil || s.misbehaved()
	}
	lines := append(sc.untagged, tag+" "+sc.success)
	if s.reply(lines...) != nil {
		return nil, true
	}
	return sc, true
}

// failed notes a failed login in the session's outcome.
func (s *session) failed(le *loginError) {
	s.out.Result = le.result
	s.out.Reason = le.reason
	if le.err != nil {
		s.out.Reason = le.err.Error()
	}
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// An IMAP command as the client sent it: tag, upper-cased name, and its
// arguments. Only what pre-login commands use is parsed: atoms, quoted
// strings, literals, and parentheses as their own tokens.
type imapCommand struct {
	tag  string
	name string
	args []imapArg
}

type argKind byte

const (
	argAtom argKind = iota
	argQuoted
	argLiteral
	argParen // "(" or ")"
)

type imapArg struct {
	kind argKind
	val  []byte
}

// isString: an astring (RFC 9051 §9).
func (a imapArg) isString() bool { return a.kind != argParen }

// imapSyntaxError is a malformed command, answered BAD; the session goes on.
type imapSyntaxError struct{ tag, msg string }

func (e *imapSyntaxError) Error() string { return e.msg }

var errLiteralTooLarge = errors.New("literal too large")

const maxArgs = 64

// readIMAPCommand reads one command with its literals, asking for
// synchronizing literals with a continuation on w. Sizes are bounded
// before anything is read: a line by maxClientLine, a literal by
// maxLiteral, the whole command by maxCommand.
func readIMAPCommand(r *bufio.Reader, w io.Writer) (*imapCommand, error) {
	line, err := readLine(r, maxClientLine)
	if err != nil {
		return nil, err
	}
	total := len(line)
	tag, rest, _ := bytes.Cut(line, []byte(" "))
	if len(tag) == 0 || !validTag(tag) {
		return nil, &imapSyntaxError{msg: "Missing or invalid tag"}
	}
	cmd := &imapCommand{tag: string(tag)}
	name, rest, _ := bytes.Cut(rest, []byte(" "))
	if len(name) == 0 || !isAtom(name) {
		return nil, &imapSyntaxError{tag: cmd.tag, msg: "Missing or invalid command name"}
	}
	cmd.name = strings.ToUpper(string(name))
	bad := func(msg string) (*imapCommand, error) {
		return nil, &imapSyntaxError{tag: cmd.tag, msg: msg}
	}
	for len(rest) > 0 {
		if len(cmd.args) == maxArgs {
			return bad("Too many arguments")
		}
		switch c := rest[0]; {
		case c == ' ':
			rest = rest[1:]
		case c == '(' || c == ')':
			cmd.args = append(cmd.args, imapArg{kind: argParen, val: rest[:1]})
			rest = rest[1:]
		case c == '"':
			val, n, ok := parseQuoted(rest)
			if !ok {
				return bad("Malformed quoted string")
			}
			cmd.args = append(cmd.args, imapArg{kind: argQuoted, val: val})
			rest = rest[n:]
		case c == '{':
			n, sync, ok := parseLiteralHeader(rest)
			if !ok {
				return bad("Malformed literal")
			}
			if n > maxLiteral || total+n > maxCommand {
				if sync { // the client waits for our go-ahead: refusing is enough
					return bad("Literal too large")
				}
				return nil, errLiteralTooLarge // it is coming anyway
			}
			if sync {
				if _, err := io.WriteString(w, "+ Ready for literal data\r\n"); err != nil {
					return nil, err
				}
			}
			val := make([]byte, n)
			if _, err := io.ReadFull(r, val); err != nil {
				return nil, err
			}
			cmd.args = append(cmd.args, imapArg{kind: argLiteral, val: val})
			more, err := readLine(r, maxClientLine)
			if err != nil {
				return nil, err
			}
			if total += n + len(more); total > maxCommand {
				return nil, errLineTooLong
			}
			if len(more) > 0 && more[0] != ' ' && more[0] != ')' {
				return bad("Missing space after literal")
			}
			rest = more
		default:
			end := bytes.IndexAny(rest, " ()")
			if end < 0 {
				end = len(rest)
			}
			atom := rest[:end]
			if !isAtom(atom) {
				return bad("Malformed argument")
			}
			cmd.args = append(cmd.args, imapArg{kind: argAtom, val: atom})
			rest = rest[end:]
		}
	}
	return cmd, nil
}

// parseQuoted reads a quoted string at the start of b; n is how many bytes
// it took. Any octet but CR, LF and NUL may be quoted: clients send UTF-8
// passwords so.
func parseQuoted(b []byte) (val []byte, n int, ok bool) {
	val = make([]byte, 0, len(b))
	for i := 1; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			return val, i + 1, true
		case '\\':
			if i+1 >= len(b) || b[i+1] != '"' && b[i+1] != '\\' {
				return nil, 0, false
			}
			i++
			val = append(val, b[i])
		case '\r', '\n', 0:
			return nil, 0, false
		default:
			val = append(val, c)
		}
	}
	return nil, 0, false
}

// parseLiteralHeader reads "{n}" or "{n+}" (RFC 7888), which must end the
// line.
func parseLiteralHeader(b []byte) (n int, sync, ok bool) {
	if len(b) < 3 || b[len(b)-1] != '}' {
		return 0, false, false
	}
	digits := b[1 : len(b)-1]
	sync = true
	if bytes.HasSuffix(digits, []byte("+")) {
		digits, sync = digits[:len(digits)-1], false
	}
	if len(digits) == 0 || len(digits) > 10 {
		return 0, false, false
	}
	for _, d := range digits {
		if d < '0' || d > '9' {
			return 0, false, false
		}
	}
	v, err := strconv.ParseUint(string(digits), 10, 32)
	if err != nil {
		return 0, false, false
	}
	return int(v), sync, true
}

// isAtom: ATOM-CHARs only (RFC 9051 §9), leniently allowing ']' and '%'
// and '*' as some clients do in arguments.
func isAtom(b []byte) bool {
	for _, c := range b {
		if c <= 0x20 || c >= 0x7f || c == '(' || c == ')' || c == '{' || c == '"' || c == '\\' {
			return false
		}
	}
	return len(b) > 0
}

// validTag: a tag is an atom without '+' (RFC 9051 §9).
func validTag(b []byte) bool {
	return isAtom(b) && !bytes.ContainsAny(b, "+*%]")
}

// IMAP towards the server: the proxy is the client.

const (
	imapTagTLS  = "P1"
	imapTagAuth = "P2"
)

// imapLogin reads the greeting, starts TLS if asked, and authenticates.
// On success sc.success is the server's tagged OK without its tag, and
// sc.untagged the untagged lines that came with it.
func (sc *serverConn) imapLogin(ctx context.Context, user, token string) error {
	greeting, err := sc.read()
	if err != nil {
		return err
	}
	status, text := imapStatus(strings.TrimPrefix(greeting, "* "))
	if !strings.HasPrefix(greeting, "* ") || status != "OK" {
		return &serverError{reason: because("Mail server refused the connection", sc.reason(text))}
	}
	caps := imapCapsOf(text)
	if sc.l.ServerTLS.Mode == StartTLS {
		if err := sc.send(imapTagTLS + " STARTTLS"); err != nil {
			return err
		}
		st, text, _, err := sc.imapTagged(imapTagTLS)
		if err != nil {
			return err
		}
		if st != "OK" {
			return fmt.Errorf("imap server %s refused STARTTLS: %s", sc.l.Server, sc.reason(text))
		}
		if err := sc.startTLS(ctx); err != nil {
			return err
		}
		caps = nil // learnt in plaintext: not to be trusted
	}
	mech := sc.l.Mechanism
	ir := mech.initialResponse(user, token, sc.l.host, sc.l.port)
	cmd := imapTagAuth + " AUTHENTICATE " + mech.saslName()
	if caps["SASL-IR"] {
		cmd += " " + ir
		ir = ""
	}
	if err := sc.send(cmd); err != nil {
		return err
	}
	var untagged []string
	for {
		line, err := sc.read()
		if err != nil {
			return err
		}
		switch {
		case line == "+" || strings.HasPrefix(line, "+ "):
			if ir != "" { // the empty challenge before our response
				err = sc.send(ir)
				ir = ""
			} else { // an error challenge (RFC 7628 §3.2.2): answer it for the verdict
				sc.challenge(strings.TrimPrefix(line, "+"))
				err = sc.send(mech.errorAnswer())
			}
			if err != nil {
				return err
			}
		case strings.HasPrefix(line, "* "):
			if len(untagged) < 16 {
				untagged = append(untagged, line)
			}
		case strings.HasPrefix(line, imapTagAuth+" "):
			status, text := imapStatus(line[len(imapTagAuth)+1:])
			switch status {
			case "OK":
				sc.untagged, sc.success = untagged, line[len(imapTagAuth)+1:]
				return nil
			case "NO":
				if code := imapCode(text); code == "UNAVAILABLE" || code == "SERVERBUG" || code == "LIMIT" || code == "INUSE" {
					return &serverError{reason: sc.reason(text)}
				}
				return &rejectedError{reason: sc.reason(text)}
			default:
				return &serverError{reason: because("Mail server refused AUTHENTICATE "+mech.saslName(), sc.reason(text))}
			}
		default:
			return fmt.Errorf("imap server %s: unexpected answer to AUTHENTICATE", sc.l.Server)
		}
	}
}

// imapTagged reads to the tagged answer to tag, skipping untagged lines.
func (sc *serverConn) imapTagged(tag string) (status, text string, untagged []string, err error) {
	for {
		line, err := sc.read()
		if err != nil {
			return "", "", nil, err
		}
		if rest, ok := strings.CutPrefix(line, tag+" "); ok {
			status, text := imapStatus(rest)
			return status, text, untagged, nil
		}
		if len(untagged) < 16 {
			untagged = append(untagged, line)
		}
	}
}

// imapStatus splits "OK text" into its upper-cased status and text.
func imapStatus(s string) (status, text string) {
	status, text, _ = strings.Cut(s, " ")
	return strings.ToUpper(status), text
}

// imapCode is the response code a text starts with ("[UNAVAILABLE] ...").
func imapCode(text string) string {
	if !strings.HasPrefix(text, "[") {
		return ""
	}
	end := strings.IndexAny(text, " ]")
	if end < 0 {
		return ""
	}
	return strings.ToUpper(text[1:end])
}

// imapCapsOf reads "[CAPABILITY ...]" at the start of a greeting's text.
func imapCapsOf(text string) map[string]bool {
	if imapCode(text) != "CAPABILITY" {
		return nil
	}
	end := strings.IndexByte(text, ']')
	if end < 0 {
		return nil
	}
	caps := map[string]bool{}
	for _, c := range strings.Fields(text[len("[CAPABILITY"):end]) {
		caps[strings.ToUpper(c)] = true
	}
	return caps
}
