package mail

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// SMTP submission (RFC 5321, RFC 4954 AUTH, RFC 3207 STARTTLS) before
// login: the proxy is the server. After AUTH the client's next command
// (MAIL) goes to the server, which the proxy has greeted with EHLO itself:
// a session may send MAIL after AUTH without another EHLO.

// smtpExtensions are shown in the proxy's EHLO answer. The server's are
// not known yet when the client asks; these are the ones every
// submission server the proxy is meant for (Microsoft 365, Gmail,
// Postfix, Exim) has, and the ones a client's behaviour hangs on.
func (s *session) smtpEHLO() []string {
	lines := []string{"250-" + s.l.hostname, "250-PIPELINING", "250-8BITMIME", "250-ENHANCEDSTATUSCODES"}
	if s.mayStartTLS() {
		lines = append(lines, "250-STARTTLS")
	}
	if !s.loginDisabled() {
		lines = append(lines, "250-AUTH PLAIN LOGIN")
	}
	last := lines[len(lines)-1]
	lines[len(lines)-1] = "250 " + last[len("250-"):]
	return lines
}

// smtp runs the client side until AUTH succeeds or the session ends.
func (s *session) smtp() *serverConn {
	if s.reply("220 "+s.l.hostname+" ESMTP oauthproxy") != nil {
		return nil
	}
	for s.awaitCommand() {
		line, err := readLine(s.r, maxClientLine)
		if errors.Is(err, errLineTooLong) {
			s.out.Reason = "client: line too long"
			s.reply("500 5.5.2 Line too long")
			return nil
		}
		if err != nil { // gone, idle too long, or shutting down
			s.shuttingDown("421 4.3.2 Server shutting down")
			return nil
		}
		verb, arg, _ := strings.Cut(string(line), " ")
		var sc *serverConn
		done := false
		switch strings.ToUpper(verb) {
		case "EHLO":
			done = s.reply(s.smtpEHLO()...) != nil
		case "HELO":
			done = s.reply("250 "+s.l.hostname) != nil
		case "NOOP", "RSET":
			done = s.reply("250 2.0.0 OK") != nil
		case "QUIT":
			s.reply("221 2.0.0 Bye")
			return nil
		case "STARTTLS":
			switch {
			case !s.mayStartTLS():
				done = s.reply("502 5.5.1 STARTTLS is not available") != nil || s.misbehaved()
			case s.pipelinedTLS():
				s.out.Reason = "client: command pipelined after STARTTLS"
				s.reply("554 5.5.0 Nothing may follow STARTTLS before the handshake")
				return nil
			case s.reply("220 2.0.0 Ready to start TLS") != nil:
				return nil
			default:
				if err := s.startTLS(); err != nil {
					s.out.Reason = err.Error()
					return nil
				}
			}
		case "AUTH":
			sc, done = s.smtpAuth(arg)
		default:
			done = s.reply("530 5.7.0 Authentication required") != nil || s.misbehaved()
		}
		if done {
			return sc
		}
	}
	s.shuttingDown("421 4.3.2 Server shutting down")
	return nil
}

// smtpAuth handles AUTH PLAIN and AUTH LOGIN, each with or without an
// initial response.
func (s *session) smtpAuth(arg string) (*serverConn, bool) {
	if s.loginDisabled() {
		return nil, s.reply("530 5.7.0 Must issue a STARTTLS command first") != nil || s.misbehaved()
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	if hasIR && ir == "=" { // RFC 4954 §4: an empty initial response
		ir = ""
	}
	// ask sends a 334 challenge and reads the answer; false when the
	// client cancelled ("*") or left.
	ask := func(challenge string) ([]byte, bool, bool) {
		if s.reply("334 "+challenge) != nil {
			return nil, false, true
		}
		line, err := readLine(s.r, maxClientLine)
		if err != nil {
			return nil, false, true
		}
		if string(line) == "*" {
			return nil, false, s.reply("501 5.7.0 Authentication cancelled") != nil || s.misbehaved()
		}
		return line, true, false
	}
	switch strings.ToUpper(mech) {
	case "PLAIN":
		resp := []byte(ir)
		if !hasIR {
			line, ok, done := ask("")
			if !ok {
				return nil, done
			}
			resp = line
		}
		user, pass, err := decodePlain(resp)
		if err != nil {
			return nil, s.reply("501 5.5.2 Malformed PLAIN response") != nil || s.misbehaved()
		}
		return s.smtpLogin(user, pass)
	case "LOGIN":
		user := []byte(ir)
		if !hasIR {
			line, ok, done := ask(base64.StdEncoding.EncodeToString([]byte("Username:")))
			if !ok {
				return nil, done
			}
			user = line
		}
		line, ok, done := ask(base64.StdEncoding.EncodeToString([]byte("Password:")))
		if !ok {
			return nil, done
		}
		name, err1 := decodeBase64(user)
		pass, err2 := decodeBase64(line)
		if err1 != nil || err2 != nil || len(name) == 0 {
			return nil, s.reply("501 5.5.2 Malformed LOGIN response") != nil || s.misbehaved()
		}
		return s.smtpLogin(string(name), pass)
	}
	return nil, s.reply("504 5.5.4 Only AUTH PLAIN and AUTH LOGIN are supported") != nil || s.misbehaved()
}

func (s *session) smtpLogin(user string, pass []byte) (*serverConn, bool) {
	sc, le := s.login(user, pass)
	if le != nil {
		s.failed(le)
		code := "454 4.7.0 "
		if le.result != ResultUnavailable {
			code = "535 5.7.8 "
		}
		return nil, s.reply(code+le.reason) != nil || s.misbehaved()
	}
	if s.reply(sc.success) != nil {
		return nil, true
	}
	return sc, true
}

// SMTP towards the server: the proxy is the client.

// smtpReply is one reply: its code and the text of its lines.
type smtpReply struct {
	code  int
	lines []string
}

func (r smtpReply) text() string { return strings.Join(r.lines, " ") }

// readReply reads a reply of one or more lines ("250-...", "250 ...").
func (sc *serverConn) readReply() (smtpReply, error) {
	var r smtpReply
	for n := 0; ; n++ {
		line, err := sc.read()
		if err != nil {
			return r, err
		}
		if len(line) < 3 || n > 100 {
			return r, fmt.Errorf("smtp server %s: malformed reply", sc.l.Server)
		}
		code := 0
		for _, c := range line[:3] {
			if c < '0' || c > '9' {
				return r, fmt.Errorf("smtp server %s: malformed reply", sc.l.Server)
			}
			code = code*10 + int(c-'0')
		}
		if n > 0 && code != r.code {
			return r, fmt.Errorf("smtp server %s: malformed reply", sc.l.Server)
		}
		r.code = code
		r.lines = append(r.lines, strings.TrimSpace(line[min(4, len(line)):]))
		if len(line) == 3 || line[3] == ' ' {
			return r, nil
		}
		if line[3] != '-' {
			return r, fmt.Errorf("smtp server %s: malformed reply", sc.l.Server)
		}
	}
}

// ehlo greets the server and returns its extensions, upper-cased keywords.
func (sc *serverConn) ehlo() (map[string]string, error) {
	if err := sc.send("EHLO " + sc.l.hostname); err != nil {
		return nil, err
	}
	r, err := sc.readReply()
	if err != nil {
		return nil, err
	}
	if r.code != 250 {
		return nil, &serverError{reason: because("Mail server refused EHLO", sc.reason(r.text()))}
	}
	ext := map[string]string{}
	for _, l := range r.lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		ext[strings.ToUpper(k)] = v
	}
	return ext, nil
}

// smtpLogin reads the greeting, says EHLO, starts TLS if asked (and says
// EHLO again, RFC 3207 §4.2), and authenticates with an initial response
// (RFC 4954 §4 lets a server take 12288 octets of it).
func (sc *serverConn) smtpLogin(ctx context.Context, user, token string) error {
	r, err := sc.readReply()
	if err != nil {
		return err
	}
	if r.code != 220 {
		return &serverError{reason: because("Mail server refused the connection", sc.reason(r.text()))}
	}
	if _, err := sc.ehlo(); err != nil {
		return err
	}
	if sc.l.ServerTLS.Mode == StartTLS {
		if err := sc.send("STARTTLS"); err != nil {
			return err
		}
		r, err := sc.readReply()
		if err != nil {
			return err
		}
		if r.code != 220 {
			return fmt.Errorf("smtp server %s refused STARTTLS: %d %s", sc.l.Server, r.code, sc.reason(r.text()))
		}
		if err := sc.startTLS(ctx); err != nil {
			return err
		}
		if _, err := sc.ehlo(); err != nil {
			return err
		}
	}
	mech := sc.l.Mechanism
	ir := mech.initialResponse(user, token, sc.l.host, sc.l.port)
	if err := sc.send("AUTH " + mech.saslName() + " " + ir); err != nil {
		return err
	}
	for answered, resent := false, false; ; {
		r, err := sc.readReply()
		if err != nil {
			return err
		}
		switch {
		case r.code == 235:
			sc.success = fmt.Sprintf("%d %s", r.code, strings.Join(r.lines, " "))
			return nil
		case r.code == 334 && r.text() == "" && !resent && !answered:
			// An empty challenge: a server that ignored the initial
			// response and asks for it (RFC 4954 §4 allows it).
			if err := sc.send(ir); err != nil {
				return err
			}
			resent = true
		case r.code == 334 && !answered:
			// The error challenge (base64 JSON): answer it for the verdict.
			sc.challenge(r.text())
			if err := sc.send(mech.errorAnswer()); err != nil {
				return err
			}
			answered = true
		case r.code == 535 || r.code == 534 || r.code == 530:
			// 535 credentials invalid, 534 mechanism too weak / web
			// login required, 530 authentication required: a verdict on
			// this login.
			return &rejectedError{reason: sc.reason(r.text())}
		default:
			return &serverError{reason: because(fmt.Sprintf("Mail server answered AUTH %s with %d", mech.saslName(), r.code), sc.reason(r.text()))}
		}
	}
}

// because joins a message and a reason that may be empty.
func because(msg, reason string) string {
	if reason == "" {
		return msg
	}
	return msg + ": " + reason
}
