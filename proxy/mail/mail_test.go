package mail

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// imapQuote quotes s as an IMAP quoted string.
func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func plain(user, pass string) string { return b64("\x00" + user + "\x00" + pass) }

// logIn runs the protocol's plainest login and returns the proxy's answer.
func logIn(c *client, proto Protocol, user, pass string) string {
	c.t.Helper()
	switch proto {
	case IMAP:
		c.expect("* OK ")
		c.send("a1 LOGIN " + imapQuote(user) + " " + imapQuote(pass))
		return c.until("a1 ")
	case POP3:
		c.expect("+OK")
		c.send("USER " + user)
		c.expect("+OK")
		c.send("PASS " + pass)
		return c.line()
	default:
		c.expect("220 ")
		c.send("EHLO client.test")
		c.until("250 ")
		c.send("AUTH PLAIN " + plain(user, pass))
		return c.line()
	}
}

// success, refusal and temporary failure lines per protocol.
var answers = map[Protocol]struct{ ok, auth, temp string }{
	IMAP: {"a1 OK ", "a1 NO [AUTHENTICATIONFAILED] ", "a1 NO [UNAVAILABLE] "},
	POP3: {"+OK", "-ERR [AUTH] ", "-ERR [SYS/TEMP] "},
	SMTP: {"235 ", "535 5.7.8 ", "454 4.7.0 "},
}

// echo checks that bytes now go to the (echoing) server and back.
func echo(c *client) {
	c.t.Helper()
	c.send("echo 1 2 3")
	if got := c.line(); got != "echo 1 2 3" {
		c.t.Fatalf("after login: echo = %q, want %q", got, "echo 1 2 3")
	}
}

func TestLogin(t *testing.T) {
	for _, proto := range []Protocol{IMAP, POP3, SMTP} {
		for _, mode := range []TLSMode{Implicit, StartTLS, NoTLS} {
			for _, mech := range []Mechanism{XOAUTH2, OAUTHBEARER} {
				t.Run(fmt.Sprintf("%s/%s/%s", proto, mode, mech), func(t *testing.T) {
					srv := startFake(t, &fakeServer{proto: proto, mode: mode, mech: mech})
					tokens := &fakeTokens{}
					p := startProxy(t, &Listener{Protocol: proto, Server: srv.addr(), ServerTLS: ServerTLS{Mode: mode}, Mechanism: mech}, tokens)
					c := dial(t, p.addr)
					if got := logIn(c, proto, testUser, testPass); !strings.HasPrefix(got, answers[proto].ok) {
						t.Fatalf("login answer = %q, want %q...", got, answers[proto].ok)
					}
					echo(c)
					users, toks, _ := srv.seen()
					if len(users) != 1 || users[0] != "box@example.com" || toks[0] != "tok-1-secret" {
						t.Errorf("server saw users %q tokens %q, want box@example.com with tok-1-secret", users, toks)
					}
					if proto == SMTP && srv.lastEHLO != "proxy.test" {
						t.Errorf("the proxy said EHLO %q to the server, want proxy.test", srv.lastEHLO)
					}
					c.conn.Close()
					o := p.outcome(t)
					if o.Result != ResultOK || o.Account != testUser || o.OAuth2 != "test" || o.Retried || o.BytesIn != 12 || o.BytesOut != 12 {
						t.Errorf("outcome = %+v, want ok for %s, 12 bytes each way, no retry", o, testUser)
					}
				})
			}
		}
	}
}

// TestServerVariants: servers that take the initial response at once, or
// ask for it.
func TestServerVariants(t *testing.T) {
	for _, tc := range []struct {
		name string
		srv  *fakeServer
	}{
		{"IMAP server with SASL-IR", &fakeServer{proto: IMAP, saslIR: true}},
		{"IMAP server with SASL-IR, rejecting the first token", &fakeServer{proto: IMAP, saslIR: true, verdict: rejectFirst}},
		{"SMTP server asking for the initial response", &fakeServer{proto: SMTP, askIR: true}},
		{"SMTP server asking for the initial response, rejecting the first token", &fakeServer{proto: SMTP, askIR: true, verdict: rejectFirst}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.srv.mode = NoTLS
			srv := startFake(t, tc.srv)
			p := startProxy(t, &Listener{Protocol: tc.srv.proto, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS}}, &fakeTokens{})
			c := dial(t, p.addr)
			if got := logIn(c, tc.srv.proto, testUser, testPass); !strings.HasPrefix(got, answers[tc.srv.proto].ok) {
				t.Fatalf("login answer = %q, want %q...", got, answers[tc.srv.proto].ok)
			}
			echo(c)
		})
	}
}

func rejectFirst(_, tok string) string {
	if tok == "tok-1-secret" {
		return reject
	}
	return accept
}

// TestClientLoginForms: every way a client may send its name and password.
func TestClientLoginForms(t *testing.T) {
	pass := testPass
	tests := []struct {
		proto  Protocol
		name   string
		script func(c *client) string // returns the login's answer
	}{
		{IMAP, "LOGIN atoms", func(c *client) string {
			c.send("a1 LOGIN ops@example.com pw")
			return c.until("a1 ")
		}},
		{IMAP, "LOGIN quoted", func(c *client) string {
			c.send("a1 login " + imapQuote(testUser) + " " + imapQuote(pass))
			return c.until("a1 ")
		}},
		{IMAP, "LOGIN synchronizing literals", func(c *client) string {
			c.send(fmt.Sprintf("a1 LOGIN {%d}", len(testUser)))
			c.expect("+ ")
			c.send(fmt.Sprintf("%s {%d}", testUser, len(pass)))
			c.expect("+ ")
			c.send(pass)
			return c.until("a1 ")
		}},
		{IMAP, "LOGIN non-synchronizing literals", func(c *client) string {
			c.send(fmt.Sprintf("a1 LOGIN {%d+}", len(testUser)), fmt.Sprintf("%s {%d+}", testUser, len(pass)), pass)
			return c.until("a1 ")
		}},
		{IMAP, "LOGIN quoted then literal with CRLF in the password", func(c *client) string {
			c.send(fmt.Sprintf("a1 LOGIN %s {%d+}", imapQuote(testUser), len("a\r\nb")), "a\r\nb")
			return c.until("a1 ")
		}},
		{IMAP, "AUTHENTICATE PLAIN with initial response", func(c *client) string {
			c.send("a1 AUTHENTICATE PLAIN " + plain(testUser, pass))
			return c.until("a1 ")
		}},
		{IMAP, "AUTHENTICATE PLAIN with continuation", func(c *client) string {
			c.send("a1 AUTHENTICATE plain")
			c.expect("+")
			c.send(b64(testUser + "\x00" + testUser + "\x00" + pass))
			return c.until("a1 ")
		}},
		{POP3, "USER PASS", func(c *client) string {
			c.send("USER "+testUser, "PASS "+pass)
			c.expect("+OK")
			return c.line()
		}},
		{POP3, "AUTH PLAIN with initial response", func(c *client) string {
			c.send("AUTH PLAIN " + plain(testUser, pass))
			return c.line()
		}},
		{POP3, "AUTH PLAIN with continuation", func(c *client) string {
			c.send("AUTH PLAIN")
			c.expect("+")
			c.send(plain(testUser, pass))
			return c.line()
		}},
		{SMTP, "AUTH PLAIN with initial response", func(c *client) string {
			c.send("AUTH PLAIN " + plain(testUser, pass))
			return c.line()
		}},
		{SMTP, "AUTH PLAIN with continuation", func(c *client) string {
			c.send("AUTH PLAIN")
			c.expect("334 ")
			c.send(plain(testUser, pass))
			return c.line()
		}},
		{SMTP, "AUTH LOGIN in two steps", func(c *client) string {
			c.send("AUTH LOGIN")
			c.expect("334 VXNlcm5hbWU6")
			c.send(b64(testUser))
			c.expect("334 UGFzc3dvcmQ6")
			c.send(b64(pass))
			return c.line()
		}},
		{SMTP, "AUTH LOGIN with the name at once", func(c *client) string {
			c.send("AUTH LOGIN " + b64(testUser))
			c.expect("334 UGFzc3dvcmQ6")
			c.send(b64(pass))
			return c.line()
		}},
	}
	for _, tc := range tests {
		t.Run(string(tc.proto)+"/"+tc.name, func(t *testing.T) {
			srv := startFake(t, &fakeServer{proto: tc.proto, mode: NoTLS})
			wantPass := pass
			switch tc.name {
			case "LOGIN atoms":
				wantPass = "pw"
			case "LOGIN quoted then literal with CRLF in the password":
				wantPass = "a\r\nb"
			}
			p := startProxy(t, &Listener{Protocol: tc.proto, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS},
				Accounts: func(name string) (*Account, bool) {
					return &Account{Password: []byte(wantPass), Tokens: &fakeTokens{}}, name == testUser
				}}, nil)
			c := dial(t, p.addr)
			c.line() // greeting
			want := answers[tc.proto].ok
			if ans := tc.script(c); !strings.HasPrefix(ans, want) {
				t.Fatalf("login answer = %q, want %q...", ans, want)
			}
			echo(c)
		})
	}
}

// TestWrongPassword: an unknown account or a wrong password is refused
// with no token request and no server connection.
func TestWrongPassword(t *testing.T) {
	for _, proto := range []Protocol{IMAP, POP3, SMTP} {
		for _, cred := range []struct{ name, user, pass string }{
			{"wrong password", testUser, "nope"},
			{"unknown account", "who@example.com", testPass},
			{"empty password", testUser, ""},
		} {
			t.Run(string(proto)+"/"+cred.name, func(t *testing.T) {
				srv := startFake(t, &fakeServer{proto: proto, mode: NoTLS})
				tokens := &fakeTokens{}
				p := startProxy(t, &Listener{Protocol: proto, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS}, FailureDelay: 50 * time.Millisecond}, tokens)
				c := dial(t, p.addr)
				start := time.Now()
				got := logIn(c, proto, cred.user, cred.pass)
				if !strings.HasPrefix(got, answers[proto].auth) {
					t.Errorf("answer = %q, want %q...", got, answers[proto].auth)
				}
				if d := time.Since(start); d < 50*time.Millisecond {
					t.Errorf("refused after %v, want at least the 50ms failure delay", d)
				}
				if n := tokens.fetches.Load(); n != 0 {
					t.Errorf("token requests = %d, want 0", n)
				}
				if n := srv.conns.Load(); n != 0 {
					t.Errorf("server connections = %d, want 0", n)
				}
				c.conn.Close()
				if o := p.outcome(t); o.Result != ResultDenied || o.Account != "" && cred.name == "unknown account" {
					t.Errorf("outcome = %+v, want denied, no account named", o)
				}
			})
		}
	}
}

// TestPasswordless: an account without a password takes any, on loopback.
func TestPasswordless(t *testing.T) {
	srv := startFake(t, &fakeServer{proto: IMAP, mode: NoTLS})
	acct := &Account{Tokens: &fakeTokens{}}
	l := &Listener{Protocol: IMAP, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS},
		Accounts: func(string) (*Account, bool) { return acct, true }}
	p := startProxy(t, l, nil)
	c := dial(t, p.addr)
	if got := logIn(c, IMAP, "any@example.com", "anything"); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("login = %q, want OK", got)
	}
	if a := l.check("x", []byte("y"), &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1)}); a != nil {
		t.Error("a passwordless account opened on a non-loopback address")
	}
}

// TestRetryOnce: a rejected token is dropped and the login tried once
// more with a fresh one on a new connection; the error challenge is
// answered as the mechanism wants.
func TestRetryOnce(t *testing.T) {
	for _, proto := range []Protocol{IMAP, POP3, SMTP} {
		for _, mech := range []Mechanism{XOAUTH2, OAUTHBEARER} {
			t.Run(string(proto)+"/"+string(mech), func(t *testing.T) {
				srv := startFake(t, &fakeServer{proto: proto, mode: NoTLS, mech: mech,
					verdict: func(_, tok string) string {
						if tok == "tok-1-secret" {
							return reject
						}
						return accept
					}})
				tokens := &fakeTokens{}
				p := startProxy(t, &Listener{Protocol: proto, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS}, Mechanism: mech}, tokens)
				c := dial(t, p.addr)
				if got := logIn(c, proto, testUser, testPass); !strings.HasPrefix(got, answers[proto].ok) {
					t.Fatalf("login answer = %q, want %q...", got, answers[proto].ok)
				}
				echo(c)
				if n := tokens.fetches.Load(); n != 2 {
					t.Errorf("token requests = %d, want 2", n)
				}
				if n := srv.conns.Load(); n != 2 {
					t.Errorf("server connections = %d, want 2 (a new one for the retry)", n)
				}
				_, _, ans := srv.seen()
				want := ""
				if mech == OAUTHBEARER {
					want = "AQ=="
				}
				if len(ans) != 1 || ans[0] != want {
					t.Errorf("answers to the error challenge = %q, want [%q]", ans, want)
				}
				c.conn.Close()
				if o := p.outcome(t); o.Result != ResultOK || !o.Retried {
					t.Errorf("outcome = %+v, want ok and retried", o)
				}
			})
		}
	}
}

// TestRejectedTwice: the second rejection reaches the client as an
// authentication failure with the server's text, never its challenge.
func TestRejectedTwice(t *testing.T) {
	for _, proto := range []Protocol{IMAP, POP3, SMTP} {
		for _, tc := range []struct{ name, reason, want string }{
			{"server text", "SmtpClientAuthentication is disabled for the Tenant", "SmtpClientAuthentication is disabled for the Tenant"},
			{"text holding the challenge", "bad token " + b64(challengeJSON), reasonRejected},
			{"text holding a bearer", "Bearer tok-1 refused", reasonRejected},
		} {
			t.Run(string(proto)+"/"+tc.name, func(t *testing.T) {
				srv := startFake(t, &fakeServer{proto: proto, mode: NoTLS, reason: tc.reason,
					verdict: func(string, string) string { return reject }})
				tokens := &fakeTokens{}
				p := startProxy(t, &Listener{Protocol: proto, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS}}, tokens)
				c := dial(t, p.addr)
				got := logIn(c, proto, testUser, testPass)
				if want := answers[proto].auth + tc.want; got != want {
					t.Errorf("answer = %q, want %q", got, want)
				}
				if n := tokens.fetches.Load(); n != 2 {
					t.Errorf("token requests = %d, want 2", n)
				}
				if n := srv.logins.Load(); n != 2 {
					t.Errorf("logins at the server = %d, want 2", n)
				}
				c.conn.Close()
				if o := p.outcome(t); o.Result != ResultRejected || !o.Retried {
					t.Errorf("outcome = %+v, want rejected after a retry", o)
				}
			})
		}
	}
}

// TestNoFreshToken: when the token source keeps the rejected token (its
// renewals are rate-limited), the same token is not sent again.
func TestNoFreshToken(t *testing.T) {
	srv := startFake(t, &fakeServer{proto: IMAP, mode: NoTLS, verdict: func(string, string) string { return reject }})
	tokens := &fakeTokens{stuck: true}
	p := startProxy(t, &Listener{Protocol: IMAP, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS}}, tokens)
	c := dial(t, p.addr)
	if got := logIn(c, IMAP, testUser, testPass); !strings.HasPrefix(got, "a1 NO [AUTHENTICATIONFAILED]") {
		t.Errorf("answer = %q, want NO [AUTHENTICATIONFAILED]", got)
	}
	if n := srv.logins.Load(); n != 1 {
		t.Errorf("logins at the server = %d, want 1", n)
	}
}

// TestTemporaryFailures: what is not the token's fault answers the
// protocol's temporary code and drops no token.
func TestTemporaryFailures(t *testing.T) {
	closedPort := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	for _, proto := range []Protocol{IMAP, POP3, SMTP} {
		tests := []struct {
			name  string
			setup func(t *testing.T, l *Listener, tokens *fakeTokens)
		}{
			{"token source fails", func(t *testing.T, l *Listener, tokens *fakeTokens) {
				tokens.err = errors.New("token endpoint: 503")
				l.Server = startFake(t, &fakeServer{proto: proto, mode: NoTLS}).addr()
			}},
			{"server unreachable", func(t *testing.T, l *Listener, tokens *fakeTokens) {
				l.Server = closedPort(t)
			}},
			{"server says try later", func(t *testing.T, l *Listener, tokens *fakeTokens) {
				l.Server = startFake(t, &fakeServer{proto: proto, mode: NoTLS, verdict: func(string, string) string { return temp }}).addr()
			}},
			{"server certificate untrusted", func(t *testing.T, l *Listener, tokens *fakeTokens) {
				l.Server = startFake(t, &fakeServer{proto: proto, mode: Implicit}).addr()
				l.ServerTLS = ServerTLS{Mode: Implicit, Config: newTLSConfigWithoutRoots()}
			}},
			{"server certificate for another name", func(t *testing.T, l *Listener, tokens *fakeTokens) {
				l.Server = startFake(t, &fakeServer{proto: proto, mode: StartTLS}).addr()
				cfg := testCerts(t).clientConfig()
				cfg.ServerName = "mail.example.com"
				l.ServerTLS = ServerTLS{Mode: StartTLS, Config: cfg}
			}},
			{"server sends data after its STARTTLS answer", func(t *testing.T, l *Listener, tokens *fakeTokens) {
				l.Server = startFake(t, &fakeServer{proto: proto, mode: StartTLS, injectTLS: true}).addr()
				l.ServerTLS = ServerTLS{Mode: StartTLS}
			}},
		}
		for _, tc := range tests {
			t.Run(string(proto)+"/"+tc.name, func(t *testing.T) {
				tokens := &fakeTokens{}
				l := &Listener{Protocol: proto, ServerTLS: ServerTLS{Mode: NoTLS}}
				tc.setup(t, l, tokens)
				p := startProxy(t, l, tokens)
				c := dial(t, p.addr)
				if got := logIn(c, proto, testUser, testPass); !strings.HasPrefix(got, answers[proto].temp) {
					t.Errorf("answer = %q, want %q...", got, answers[proto].temp)
				}
				if n := tokens.invalids.Load(); n != 0 {
					t.Errorf("tokens invalidated = %d, want 0", n)
				}
				c.conn.Close()
				if o := p.outcome(t); o.Result != ResultUnavailable {
					t.Errorf("outcome = %+v, want unavailable", o)
				}
			})
		}
	}
}

func newTLSConfigWithoutRoots() *tls.Config { return &tls.Config{} }

// TestTokenErrorReason: a token source error that carries a client-safe
// code (proxy.StatusError: sign-in required) is shown; others are not.
func TestTokenErrorReason(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{errors.New("oauth2 x: token endpoint said invalid_client (secret abc)"), reasonNoToken},
		{loginRequired{}, "oauth2 m365: sign-in required: sign in at https://proxy.example/login/m365"},
	}
	for _, tc := range tests {
		if got := tokenFailure(tc.err).reason; got != tc.want {
			t.Errorf("tokenFailure(%v).reason = %q, want %q", tc.err, got, tc.want)
		}
	}
}

type loginRequired struct{}

func (loginRequired) Error() string {
	return "oauth2 m365: sign-in required: sign in at https://proxy.example/login/m365"
}
func (loginRequired) ErrorCode() string { return "login_required" }
