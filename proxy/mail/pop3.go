package mail

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// POP3 (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH, RFC 2595 STLS) before
// login: the proxy is the server.

func (s *session) pop3Caps() []string {
	caps := []string{"+OK Capability list follows"}
	if s.mayStartTLS() {
		caps = append(caps, "STLS")
	}
	if !s.loginDisabled() {
		caps = append(caps, "USER", "SASL PLAIN")
	}
	return append(caps, "RESP-CODES", "AUTH-RESP-CODE", ".")
}

// pop3 runs the client side until a login succeeds or the session ends.
func (s *session) pop3() *serverConn {
	if s.reply("+OK oauthproxy ready") != nil {
		return nil
	}
	user, haveUser := "", false
	for s.awaitCommand() {
		line, err := readLine(s.r, maxClientLine)
		if errors.Is(err, errLineTooLong) {
			s.out.Reason = "client: line too long"
			s.reply("-ERR Line too long")
			return nil
		}
		if err != nil { // gone, idle too long, or shutting down
			s.shuttingDown("-ERR Server shutting down")
			return nil
		}
		verb, arg, _ := strings.Cut(string(line), " ")
		var sc *serverConn
		done := false
		switch strings.ToUpper(verb) {
		case "CAPA":
			done = s.reply(s.pop3Caps()...) != nil
		case "QUIT":
			s.reply("+OK Bye")
			return nil
		case "STLS":
			switch {
			case !s.mayStartTLS():
				done = s.reply("-ERR STLS is not available") != nil || s.misbehaved()
			case s.pipelinedTLS():
				s.out.Reason = "client: command pipelined after STLS"
				s.reply("-ERR Nothing may follow STLS before the handshake")
				return nil
			case s.reply("+OK Begin TLS negotiation") != nil:
				return nil
			default:
				if err := s.startTLS(); err != nil {
					s.out.Reason = err.Error()
					return nil
				}
				user, haveUser = "", false
			}
		case "USER":
			switch {
			case s.loginDisabled():
				done = s.reply("-ERR Use STLS first") != nil || s.misbehaved()
			case arg == "":
				done = s.reply("-ERR USER takes a name") != nil || s.misbehaved()
			default:
				// Any name gets +OK: no account enumeration.
				user, haveUser = arg, true
				done = s.reply("+OK") != nil
			}
		case "PASS":
			if !haveUser {
				done = s.reply("-ERR USER first") != nil || s.misbehaved()
				break
			}
			haveUser = false
			sc, done = s.pop3Login(user, []byte(arg))
		case "AUTH":
			sc, done = s.pop3Auth(arg)
		default:
			done = s.reply("-ERR Unknown command or not allowed before login") != nil || s.misbehaved()
		}
		if done {
			return sc
		}
	}
	s.shuttingDown("-ERR Server shutting down")
	return nil
}

// pop3Auth handles AUTH [PLAIN [initial-response]].
func (s *session) pop3Auth(arg string) (*serverConn, bool) {
	if arg == "" { // the mechanism list (RFC 1734 usage many clients rely on)
		return nil, s.reply("+OK", "PLAIN", ".") != nil
	}
	if s.loginDisabled() {
		return nil, s.reply("-ERR Use STLS first") != nil || s.misbehaved()
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	if !strings.EqualFold(mech, "PLAIN") {
		return nil, s.reply("-ERR Only AUTH PLAIN is supported") != nil || s.misbehaved()
	}
	resp := []byte(ir)
	switch {
	case hasIR && ir == "=": // RFC 5034 §4: an empty initial response
		resp = nil
	case !hasIR:
		if s.reply("+ ") != nil {
			return nil, true
		}
		line, err := readLine(s.r, maxClientLine)
		if err != nil {
			return nil, true
		}
		if string(line) == "*" {
			return nil, s.reply("-ERR Authentication cancelled") != nil || s.misbehaved()
		}
		resp = line
	}
	user, pass, err := decodePlain(resp)
	if err != nil {
		return nil, s.reply("-ERR Malformed PLAIN response") != nil || s.misbehaved()
	}
	return s.pop3Login(user, pass)
}

func (s *session) pop3Login(user string, pass []byte) (*serverConn, bool) {
	sc, le := s.login(user, pass)
	if le != nil {
		s.failed(le)
		code := "SYS/TEMP"
		if le.result != ResultUnavailable {
			code = "AUTH"
		}
		return nil, s.reply("-ERR ["+code+"] "+le.reason) != nil || s.misbehaved()
	}
	if s.reply(sc.success) != nil {
		return nil, true
	}
	return sc, true
}

// POP3 towards the server: the proxy is the client.

// pop3Login reads the greeting, starts TLS if asked, and authenticates.
// The response goes after a continuation, never as an initial response:
// with a token it would pass the 255 octets RFC 5034 §4 allows.
func (sc *serverConn) pop3Login(ctx context.Context, user, token string) error {
	greeting, err := sc.read()
	if err != nil {
		return err
	}
	if !strings.HasPrefix(greeting, "+OK") {
		return &serverError{reason: because("Mail server refused the connection", sc.reason(strings.TrimPrefix(greeting, "-ERR")))}
	}
	if sc.l.ServerTLS.Mode == StartTLS {
		if err := sc.send("STLS"); err != nil {
			return err
		}
		line, err := sc.read()
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, "+OK") {
			return fmt.Errorf("pop3 server %s refused STLS: %s", sc.l.Server, sc.reason(strings.TrimPrefix(line, "-ERR")))
		}
		if err := sc.startTLS(ctx); err != nil {
			return err
		}
	}
	mech := sc.l.Mechanism
	if err := sc.send("AUTH " + mech.saslName()); err != nil {
		return err
	}
	sent := false
	for {
		line, err := sc.read()
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(line, "+OK"):
			if !sent {
				return fmt.Errorf("pop3 server %s: logged in before the token was sent", sc.l.Server)
			}
			sc.success = line
			return nil
		case line == "+" || strings.HasPrefix(line, "+ "):
			if !sent {
				err = sc.send(mech.initialResponse(user, token, sc.l.host, sc.l.port))
				sent = true
			} else {
				sc.challenge(strings.TrimPrefix(line, "+"))
				err = sc.send(mech.errorAnswer())
			}
			if err != nil {
				return err
			}
		case strings.HasPrefix(line, "-ERR"):
			text := strings.TrimSpace(strings.TrimPrefix(line, "-ERR"))
			code := imapCode(text) // the same [CODE] syntax (RFC 2449 §8)
			if !sent || code == "SYS/TEMP" || code == "IN-USE" || code == "LOGIN-DELAY" || code == "SYS/PERM" {
				return &serverError{reason: sc.reason(text)}
			}
			return &rejectedError{reason: sc.reason(text)}
		default:
			return fmt.Errorf("pop3 server %s: unexpected answer to AUTH", sc.l.Server)
		}
	}
}
