package mail

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeLogin starts a fake server and a proxy to it (no TLS to the
// server), with the client side as given.
func fakeLogin(t *testing.T, proto Protocol, clientTLS *ClientTLS) (*proxyUnderTest, *fakeServer, *fakeTokens) {
	t.Helper()
	srv := startFake(t, &fakeServer{proto: proto, mode: NoTLS})
	tokens := &fakeTokens{}
	p := startProxy(t, &Listener{Protocol: proto, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS}, ClientTLS: clientTLS}, tokens)
	return p, srv, tokens
}

func starttlsToClients() *ClientTLS {
	return &ClientTLS{Mode: StartTLS, Config: testCerts(nil).serverConfig()}
}

// TestCapabilities: before login the proxy shows what it accepts; with
// STARTTLS on offer, no password may cross before it.
func TestCapabilities(t *testing.T) {
	tests := []struct {
		proto           Protocol
		starttls        bool
		ask             string   // the capability command; "" is the greeting
		want, wantNot   []string // in the answer
		loginBeforeTLS  string   // what a login before STARTTLS gets
		startTLS, ready string
	}{
		{IMAP, false, "", []string{"IMAP4rev1", "SASL-IR", "AUTH=PLAIN", "LITERAL+"}, []string{"STARTTLS", "LOGINDISABLED"}, "", "", ""},
		{IMAP, false, "c CAPABILITY", []string{"* CAPABILITY IMAP4rev1 ", "AUTH=PLAIN", "c OK"}, []string{"STARTTLS"}, "", "", ""},
		{IMAP, true, "c CAPABILITY", []string{"STARTTLS", "LOGINDISABLED"}, []string{"AUTH=PLAIN"}, "a1 NO [PRIVACYREQUIRED]", "s STARTTLS", "s OK"},
		{POP3, false, "CAPA", []string{"USER", "SASL PLAIN", "RESP-CODES", "AUTH-RESP-CODE"}, []string{"STLS"}, "", "", ""},
		{POP3, true, "CAPA", []string{"STLS"}, []string{"USER", "SASL"}, "-ERR", "STLS", "+OK"},
		{SMTP, false, "EHLO c", []string{"250-proxy.test", "AUTH PLAIN LOGIN", "8BITMIME", "PIPELINING"}, []string{"STARTTLS"}, "", "", ""},
		{SMTP, true, "EHLO c", []string{"STARTTLS"}, []string{"AUTH"}, "530 5.7.0", "STARTTLS", "220 "},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/starttls=%v/%s", tc.proto, tc.starttls, tc.ask), func(t *testing.T) {
			var ct *ClientTLS
			if tc.starttls {
				ct = starttlsToClients()
			}
			p, srv, _ := fakeLogin(t, tc.proto, ct)
			c := dial(t, p.addr)
			answer := readCaps(c, tc.proto, tc.ask)
			for _, w := range tc.want {
				if !strings.Contains(answer, w) {
					t.Errorf("answer to %q lacks %q:\n%s", tc.ask, w, answer)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(answer, w) {
					t.Errorf("answer to %q has %q:\n%s", tc.ask, w, answer)
				}
			}
			if !tc.starttls {
				return
			}
			if got := loginOnly(c, tc.proto); !strings.HasPrefix(got, tc.loginBeforeTLS) {
				t.Errorf("login before STARTTLS = %q, want %q...", got, tc.loginBeforeTLS)
			}
			c.send(tc.startTLS)
			c.expect(tc.ready)
			c.startTLS()
			after := readCaps(c, tc.proto, tc.ask)
			if strings.Contains(after, "STARTTLS") || strings.Contains(after, "STLS") || strings.Contains(after, "LOGINDISABLED") {
				t.Errorf("after STARTTLS the capabilities still offer it or disable login:\n%s", after)
			}
			if got := loginOnly(c, tc.proto); !strings.HasPrefix(got, answers[tc.proto].ok) {
				t.Errorf("login after STARTTLS = %q, want %q...", got, answers[tc.proto].ok)
			}
			echo(c)
			if n := srv.logins.Load(); n != 1 {
				t.Errorf("logins at the server = %d, want 1", n)
			}
		})
	}
}

// readCaps reads the greeting (ask == "") or the answer to ask.
func readCaps(c *client, proto Protocol, ask string) string {
	c.t.Helper()
	if ask == "" {
		return c.line()
	}
	if c.r.Buffered() == 0 && c.conn.RemoteAddr() != nil {
		// the greeting, once per connection
		if _, ok := c.conn.(*tls.Conn); !ok {
			c.line()
		}
	}
	c.send(ask)
	var b strings.Builder
	for {
		line := c.line()
		b.WriteString(line + "\n")
		switch proto {
		case IMAP:
			if strings.HasPrefix(line, "c ") {
				return b.String()
			}
		case POP3:
			if line == "." {
				return b.String()
			}
		case SMTP:
			if strings.HasPrefix(line, "250 ") {
				return b.String()
			}
		}
	}
}

// loginOnly sends the plainest login (the greeting already read).
func loginOnly(c *client, proto Protocol) string {
	c.t.Helper()
	switch proto {
	case IMAP:
		c.send("a1 LOGIN " + imapQuote(testUser) + " " + imapQuote(testPass))
		return c.until("a1 ")
	case POP3:
		c.send("USER " + testUser)
		if l := c.line(); !strings.HasPrefix(l, "+OK") {
			return l
		}
		c.send("PASS " + testPass)
		return c.line()
	default:
		c.send("AUTH PLAIN " + plain(testUser, testPass))
		return c.line()
	}
}

func TestClientImplicitTLS(t *testing.T) {
	for _, proto := range []Protocol{IMAP, POP3, SMTP} {
		t.Run(string(proto), func(t *testing.T) {
			p, _, _ := fakeLogin(t, proto, &ClientTLS{Mode: Implicit, Config: testCerts(t).serverConfig()})
			c := dial(t, p.addr)
			c.startTLS()
			if got := logIn(c, proto, testUser, testPass); !strings.HasPrefix(got, answers[proto].ok) {
				t.Fatalf("login = %q, want %q...", got, answers[proto].ok)
			}
			echo(c)
		})
	}
}

// TestSTARTTLSInjection: a command pipelined after STARTTLS in the same
// packet (CVE-2011-0411) is never run, before or after the handshake.
func TestSTARTTLSInjection(t *testing.T) {
	for _, tc := range []struct {
		proto        Protocol
		packet, want string
	}{
		{IMAP, "s STARTTLS\r\na1 LOGIN " + imapQuote(testUser) + " " + imapQuote(testPass) + "\r\n", "s BAD"},
		{POP3, "STLS\r\nUSER " + testUser + "\r\nPASS " + testPass + "\r\n", "-ERR"},
		{SMTP, "STARTTLS\r\nAUTH PLAIN " + plain(testUser, testPass) + "\r\n", "554 "},
	} {
		t.Run(string(tc.proto), func(t *testing.T) {
			p, srv, tokens := fakeLogin(t, tc.proto, starttlsToClients())
			c := dial(t, p.addr)
			c.line()
			if _, err := io.WriteString(c.conn, tc.packet); err != nil {
				t.Fatal(err)
			}
			c.expect(tc.want)
			c.closed()
			if n := tokens.fetches.Load() + srv.conns.Load(); n != 0 {
				t.Errorf("token requests and server connections = %d, want 0", n)
			}
			if o := p.outcome(t); o.Result != ResultAbandoned || !strings.Contains(o.Reason, "pipelined") {
				t.Errorf("outcome = %+v, want abandoned for pipelining", o)
			}
		})
	}
}

// TestPreLoginCommands: the rest of what the proxy answers itself.
func TestPreLoginCommands(t *testing.T) {
	tests := []struct {
		proto  Protocol
		name   string
		script []string // alternately a line to send and the start of the answer; "" sends nothing
		closed bool     // the proxy hangs up at the end
	}{
		{IMAP, "NOOP", []string{"a NOOP", "a OK"}, false},
		{IMAP, "unknown and post-login commands", []string{"a SELECT INBOX", "a BAD", "b FOO", "b BAD"}, false},
		{IMAP, "no command", []string{"NOOP", "NOOP BAD"}, false},
		{IMAP, "bad tag", []string{"+a NOOP", "* BAD"}, false},
		{IMAP, "LOGOUT", []string{"a LOGOUT", "* BYE", "", "a OK"}, true},
		{IMAP, "LOGIN with one argument", []string{"a LOGIN x", "a BAD"}, false},
		{IMAP, "LOGIN with a list", []string{"a LOGIN (x) y", "a BAD"}, false},
		{IMAP, "unterminated quote", []string{`a LOGIN "x y`, "a BAD"}, false},
		{IMAP, "AUTHENTICATE other mechanism", []string{"a AUTHENTICATE XOAUTH2 abc", "a NO [CANNOT]"}, false},
		{IMAP, "AUTHENTICATE cancelled", []string{"a AUTHENTICATE PLAIN", "+", "*", "a BAD"}, false},
		{IMAP, "AUTHENTICATE bad base64", []string{"a AUTHENTICATE PLAIN !!!", "a BAD"}, false},
		{IMAP, "AUTHENTICATE PLAIN for another identity", []string{"a AUTHENTICATE PLAIN " + b64("other\x00"+testUser+"\x00"+testPass), "a BAD"}, false},
		{IMAP, "STARTTLS not offered", []string{"a STARTTLS", "a BAD"}, false},
		{POP3, "USER takes any name", []string{"USER nobody@nowhere", "+OK"}, false},
		{POP3, "PASS before USER", []string{"PASS x", "-ERR"}, false},
		{POP3, "AUTH lists mechanisms", []string{"AUTH", "+OK", "", "PLAIN", "", "."}, false},
		{POP3, "AUTH other mechanism", []string{"AUTH XOAUTH2", "-ERR"}, false},
		{POP3, "AUTH cancelled", []string{"AUTH PLAIN", "+", "*", "-ERR"}, false},
		{POP3, "STAT before login", []string{"STAT", "-ERR"}, false},
		{POP3, "QUIT", []string{"QUIT", "+OK"}, true},
		{SMTP, "HELO", []string{"HELO c", "250 proxy.test"}, false},
		{SMTP, "NOOP and RSET", []string{"NOOP", "250 ", "RSET", "250 "}, false},
		{SMTP, "MAIL before AUTH", []string{"MAIL FROM:<a@b>", "530 "}, false},
		{SMTP, "AUTH other mechanism", []string{"AUTH CRAM-MD5", "504 "}, false},
		{SMTP, "AUTH LOGIN cancelled", []string{"AUTH LOGIN", "334 ", "*", "501 "}, false},
		{SMTP, "AUTH LOGIN bad base64", []string{"AUTH LOGIN !!", "334 ", "x", "501 "}, false},
		{SMTP, "QUIT", []string{"QUIT", "221 "}, true},
	}
	for _, tc := range tests {
		t.Run(string(tc.proto)+"/"+tc.name, func(t *testing.T) {
			p, srv, tokens := fakeLogin(t, tc.proto, nil)
			c := dial(t, p.addr)
			c.line()
			for i := 0; i < len(tc.script); i += 2 {
				if tc.script[i] != "" {
					c.send(tc.script[i])
				}
				if tc.script[i+1] != "" {
					c.expect(tc.script[i+1])
				}
			}
			if tc.closed {
				c.closed()
			} else {
				c.send(map[Protocol]string{IMAP: "z NOOP", POP3: "USER x", SMTP: "NOOP"}[tc.proto])
				c.expect(map[Protocol]string{IMAP: "z OK", POP3: "+OK", SMTP: "250 "}[tc.proto])
			}
			if n := tokens.fetches.Load() + srv.conns.Load(); n != 0 {
				t.Errorf("token requests and server connections = %d, want 0", n)
			}
		})
	}
}

// TestLimits: what a client may send before login is bounded.
func TestLimits(t *testing.T) {
	long := strings.Repeat("x", maxClientLine+1)
	tests := []struct {
		proto  Protocol
		name   string
		send   string
		want   string
		closed bool
	}{
		{IMAP, "long line", "a LOGIN " + long, "* BYE", true},
		{IMAP, "large non-synchronizing literal", fmt.Sprintf("a LOGIN {%d+}", maxLiteral+1), "* BYE", true},
		{IMAP, "large synchronizing literal", fmt.Sprintf("a LOGIN {%d}", maxLiteral+1), "a BAD", false},
		{IMAP, "huge literal size", "a LOGIN {99999999999}", "a BAD", false},
		{POP3, "long line", "USER " + long, "-ERR", true},
		{SMTP, "long line", "AUTH PLAIN " + long, "500 ", true},
	}
	for _, tc := range tests {
		t.Run(string(tc.proto)+"/"+tc.name, func(t *testing.T) {
			p, _, _ := fakeLogin(t, tc.proto, nil)
			c := dial(t, p.addr)
			c.line()
			c.send(tc.send)
			c.expect(tc.want)
			if tc.closed {
				c.closed()
			} else {
				c.send("z NOOP")
				c.expect("z OK")
			}
		})
	}
	t.Run("too many bad commands", func(t *testing.T) {
		p, _, _ := fakeLogin(t, SMTP, nil)
		c := dial(t, p.addr)
		c.line()
		for range maxClientErrors {
			c.send("MAIL FROM:<a@b>")
			c.expect("530 ")
		}
		c.closed()
	})
	t.Run("IMAP command with literals over the total", func(t *testing.T) {
		p, _, _ := fakeLogin(t, IMAP, nil)
		c := dial(t, p.addr)
		c.line()
		lit := strings.Repeat("y", maxLiteral)
		c.send(fmt.Sprintf("a X {%d+}", maxLiteral), lit+fmt.Sprintf(" {%d+}", maxLiteral), lit+" {10+}", "0123456789")
		c.expect("* BYE")
		c.closed()
	})
}

func TestLoginTimeout(t *testing.T) {
	srv := startFake(t, &fakeServer{proto: IMAP, mode: NoTLS})
	p := startProxy(t, &Listener{Protocol: IMAP, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS}, LoginTimeout: 100 * time.Millisecond}, &fakeTokens{})
	c := dial(t, p.addr)
	c.line()
	start := time.Now()
	c.closed()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("closed after %v, want about the 100ms login timeout", d)
	}
	if o := p.outcome(t); o.Result != ResultAbandoned {
		t.Errorf("outcome = %+v, want abandoned", o)
	}
}

func TestIdleTimeout(t *testing.T) {
	srv := startFake(t, &fakeServer{proto: POP3, mode: NoTLS})
	p := startProxy(t, &Listener{Protocol: POP3, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS}, IdleTimeout: time.Second}, &fakeTokens{})
	c := dial(t, p.addr)
	if got := logIn(c, POP3, testUser, testPass); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("login = %q", got)
	}
	echo(c)
	c.closed()
	if o := p.outcome(t); o.Result != ResultOK || o.Reason != "idle timeout" {
		t.Errorf("outcome = %+v, want ok, closed for idleness", o)
	}
}

// TestHalfClose: a client that sends its last command and shuts its
// side still gets the server's answer.
func TestHalfClose(t *testing.T) {
	p, _, _ := fakeLogin(t, POP3, nil)
	c := dial(t, p.addr)
	if got := logIn(c, POP3, testUser, testPass); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("login = %q", got)
	}
	c.send("last words")
	if err := c.conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := c.line(); got != "last words" {
		t.Errorf("after half-close got %q, want the echo", got)
	}
	c.closed()
}

func TestShutdown(t *testing.T) {
	srv := startFake(t, &fakeServer{proto: IMAP, mode: NoTLS})
	l := &Listener{Protocol: IMAP, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS}}
	p := startProxy(t, l, &fakeTokens{})
	waiting := dial(t, p.addr)
	waiting.line()
	busy := dial(t, p.addr)
	if got := logIn(busy, IMAP, testUser, testPass); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("login = %q", got)
	}
	done := make(chan error, 1)
	go func() { done <- l.Shutdown(context.Background()) }()
	waiting.expect("* BYE")
	waiting.closed()
	echo(busy) // a logged-in session goes on
	if _, err := net.Dial("tcp", p.addr); err == nil {
		t.Error("the proxy still accepts connections during shutdown")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a session open", err)
	default:
	}
	busy.conn.Close()
	if err := <-done; err != nil {
		t.Errorf("Shutdown = %v, want nil once the session ended", err)
	}

	// A Shutdown whose context ends closes what is left.
	l2 := &Listener{Protocol: IMAP, Server: srv.addr(), ServerTLS: ServerTLS{Mode: NoTLS}}
	p2 := startProxy(t, l2, &fakeTokens{})
	stuck := dial(t, p2.addr)
	if got := logIn(stuck, IMAP, testUser, testPass); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("login = %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l2.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want context.DeadlineExceeded", err)
	}
	stuck.closed()
	if n := l2.Sessions(); n != 0 {
		t.Errorf("sessions after Shutdown = %d, want 0", n)
	}
}

func TestConfigErrors(t *testing.T) {
	accounts := func(string) (*Account, bool) { return nil, false }
	tests := []struct {
		name string
		l    *Listener
		want string
	}{
		{"protocol", &Listener{Protocol: "nntp", Server: "h:1", ServerTLS: ServerTLS{Mode: Implicit}, Accounts: accounts}, `protocol "nntp"`},
		{"mechanism", &Listener{Protocol: IMAP, Mechanism: "plain", Server: "h:1", ServerTLS: ServerTLS{Mode: Implicit}, Accounts: accounts}, `mechanism "plain"`},
		{"server", &Listener{Protocol: IMAP, Server: "h", ServerTLS: ServerTLS{Mode: Implicit}, Accounts: accounts}, `server "h"`},
		{"server tls mode", &Listener{Protocol: IMAP, Server: "h:1", Accounts: accounts}, `server_tls mode ""`},
		{"plaintext to a remote server", &Listener{Protocol: IMAP, Server: "mail.example.com:143", ServerTLS: ServerTLS{Mode: NoTLS}, Accounts: accounts}, "loopback servers only"},
		{"client tls without certificate", &Listener{Protocol: IMAP, Server: "h:1", ServerTLS: ServerTLS{Mode: Implicit}, ClientTLS: &ClientTLS{Mode: Implicit}, Accounts: accounts}, "without a certificate"},
		{"client tls mode", &Listener{Protocol: IMAP, Server: "h:1", ServerTLS: ServerTLS{Mode: Implicit}, ClientTLS: &ClientTLS{Mode: NoTLS, Config: &tls.Config{}}, Accounts: accounts}, `client tls mode "none"`},
		{"accounts", &Listener{Protocol: IMAP, Server: "h:1", ServerTLS: ServerTLS{Mode: Implicit}}, "no accounts"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.l.Serve(ln); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Serve = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestConcurrentLogins: many sessions at once share the token source.
func TestConcurrentLogins(t *testing.T) {
	p, srv, tokens := fakeLogin(t, IMAP, nil)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			r := bufio.NewReader(c)
			r.ReadString('\n')
			fmt.Fprintf(c, "a1 LOGIN %s %s\r\n", imapQuote(testUser), imapQuote(testPass))
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					errs <- err
					return
				}
				if strings.HasPrefix(line, "a1 ") {
					if !strings.HasPrefix(line, "a1 OK") {
						errs <- fmt.Errorf("session %d: %q", i, line)
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := srv.logins.Load(); got != n {
		t.Errorf("logins at the server = %d, want %d", got, n)
	}
	if got := tokens.fetches.Load(); got != 1 {
		t.Errorf("token requests = %d, want 1", got)
	}
}
