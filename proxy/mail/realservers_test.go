package mail

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// End-to-end tests against real Dovecot and Postfix (servers_test.go).

// realProxy serves proto through the proxy to addr of the real servers;
// the account's mailbox is the servers' one.
func realProxy(t testing.TB, proto Protocol, addr string, mode TLSMode, mech Mechanism, tokens *fakeTokens) *proxyUnderTest {
	t.Helper()
	l := &Listener{Protocol: proto, Server: addr, ServerTLS: ServerTLS{Mode: mode}, Mechanism: mech,
		Accounts: func(name string) (*Account, bool) {
			return &Account{User: mailbox, Password: []byte(testPass), OAuth2: "test", Tokens: tokens}, name == testUser
		}}
	return startProxy(t, l, tokens)
}

func unique() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// message is a mail message with CRLF line ends, none starting with a dot.
func message(id string, bodyLines int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: box@example.com\r\nTo: box@example.com\r\nDate: Mon, 1 Jun 2026 10:00:00 +0000\r\nSubject: test %s\r\nMessage-ID: <%s@test>\r\n\r\n", id, id)
	for i := range bodyLines {
		fmt.Fprintf(&b, "line %d of %s: \xc3\xa4 8-bit and some padding to make it longer ......\r\n", i, id)
	}
	return b.Bytes()
}

// imapDo sends a tagged command and returns the lines up to its tagged
// answer, which must be OK.
func imapDo(c *client, tag, cmd string) []string {
	c.t.Helper()
	c.send(tag + " " + cmd)
	var lines []string
	for {
		line := c.line()
		lines = append(lines, line)
		if strings.HasPrefix(line, tag+" ") {
			if !strings.HasPrefix(line, tag+" OK") {
				c.t.Fatalf("%s: %q", cmd, line)
			}
			return lines
		}
	}
}

// imapAppendFetch appends msg to INBOX and fetches it back.
func imapAppendFetch(t *testing.T, c *client, msg []byte) {
	t.Helper()
	imapDo(c, "s1", "SELECT INBOX")
	c.send(fmt.Sprintf("s2 APPEND INBOX {%d}", len(msg)))
	c.expect("+ ")
	if _, err := c.conn.Write(append(append([]byte(nil), msg...), "\r\n"...)); err != nil {
		t.Fatal(err)
	}
	ok := c.until("s2 ")
	var validity, uid int
	if _, err := fmt.Sscanf(ok, "s2 OK [APPENDUID %d %d]", &validity, &uid); err != nil {
		t.Fatalf("APPEND answer %q: %v", ok, err)
	}
	c.send(fmt.Sprintf("s3 UID FETCH %d BODY.PEEK[]", uid))
	head := c.expect("* ")
	var size int
	if i := strings.LastIndexByte(head, '{'); i < 0 || !strings.HasSuffix(head, "}") {
		t.Fatalf("FETCH answer %q has no literal", head)
	} else if _, err := fmt.Sscanf(head[i:], "{%d}", &size); err != nil {
		t.Fatalf("FETCH answer %q: %v", head, err)
	}
	got := make([]byte, size)
	if _, err := io.ReadFull(c.r, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("fetched %d bytes, want the %d appended (first difference at %d)", len(got), len(msg), firstDiff(got, msg))
	}
	c.until("s3 OK")
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestDovecotIMAP(t *testing.T) {
	rs := needServers(t)
	tests := []struct {
		name  string
		addr  string
		mode  TLSMode
		mech  Mechanism
		login func(c *client)
	}{
		{"implicit TLS, XOAUTH2, LOGIN", rs.imaps, Implicit, XOAUTH2, func(c *client) {
			c.send("a1 LOGIN " + imapQuote(testUser) + " " + imapQuote(testPass))
		}},
		{"STARTTLS, OAUTHBEARER, LOGIN with literals", rs.imap, StartTLS, OAUTHBEARER, func(c *client) {
			c.send(fmt.Sprintf("a1 LOGIN {%d}", len(testUser)))
			c.expect("+ ")
			c.send(fmt.Sprintf("%s {%d+}", testUser, len(testPass)), testPass)
		}},
		{"implicit TLS, OAUTHBEARER, AUTHENTICATE PLAIN", rs.imaps, Implicit, OAUTHBEARER, func(c *client) {
			c.send("a1 AUTHENTICATE PLAIN " + plain(testUser, testPass))
		}},
		{"STARTTLS, XOAUTH2, AUTHENTICATE PLAIN with continuation", rs.imap, StartTLS, XOAUTH2, func(c *client) {
			c.send("a1 AUTHENTICATE PLAIN")
			c.expect("+")
			c.send(plain(testUser, testPass))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tokens := &fakeTokens{}
			p := realProxy(t, IMAP, tc.addr, tc.mode, tc.mech, tokens)
			c := dial(t, p.addr)
			c.expect("* OK [CAPABILITY ")
			tc.login(c)
			if ok := c.until("a1 "); !strings.HasPrefix(ok, "a1 OK") {
				t.Fatalf("login: %q", ok)
			}
			imapAppendFetch(t, c, message(unique(), 20))
			imapDo(c, "z", "LOGOUT")
			c.closed()
			if o := p.outcome(t); o.Result != ResultOK || o.BytesIn == 0 || o.BytesOut == 0 {
				t.Errorf("outcome = %+v, want ok with bytes both ways", o)
			}
		})
	}
}

func TestDovecotPOP3(t *testing.T) {
	rs := needServers(t)
	// A message to retrieve, put there through IMAP.
	tokens := &fakeTokens{}
	ip := realProxy(t, IMAP, rs.imaps, Implicit, XOAUTH2, tokens)
	ic := dial(t, ip.addr)
	if ok := logIn(ic, IMAP, testUser, testPass); !strings.HasPrefix(ok, "a1 OK") {
		t.Fatalf("IMAP login: %q", ok)
	}
	msg := message(unique(), 50)
	imapAppendFetch(t, ic, msg)
	imapDo(ic, "z", "LOGOUT")

	tests := []struct {
		name  string
		addr  string
		mode  TLSMode
		mech  Mechanism
		login func(c *client)
	}{
		{"implicit TLS, XOAUTH2, USER/PASS", rs.pop3s, Implicit, XOAUTH2, func(c *client) {
			c.send("USER "+testUser, "PASS "+testPass)
			c.expect("+OK")
		}},
		{"STARTTLS, OAUTHBEARER, AUTH PLAIN", rs.pop3, StartTLS, OAUTHBEARER, func(c *client) {
			c.send("AUTH PLAIN " + plain(testUser, testPass))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := realProxy(t, POP3, tc.addr, tc.mode, tc.mech, &fakeTokens{})
			c := dial(t, p.addr)
			c.expect("+OK")
			tc.login(c)
			c.expect("+OK")
			c.send("STAT")
			var n, size int
			if _, err := fmt.Sscanf(c.expect("+OK "), "+OK %d %d", &n, &size); err != nil || n == 0 {
				t.Fatalf("STAT: %d messages, %v", n, err)
			}
			c.send(fmt.Sprintf("RETR %d", n))
			c.expect("+OK")
			var got bytes.Buffer
			for {
				line := c.line()
				if line == "." {
					break
				}
				got.WriteString(strings.TrimPrefix(line, ".") + "\r\n")
			}
			if !bytes.Equal(got.Bytes(), msg) {
				t.Fatalf("RETR: %d bytes, want the %d appended (first difference at %d)", got.Len(), len(msg), firstDiff(got.Bytes(), msg))
			}
			c.send("QUIT")
			c.expect("+OK")
			c.closed()
		})
	}
}

func TestPostfixSubmission(t *testing.T) {
	rs := needServers(t)
	tests := []struct {
		name  string
		addr  string
		mode  TLSMode
		mech  Mechanism
		login func(c *client)
	}{
		{"STARTTLS, XOAUTH2, AUTH PLAIN", rs.submission, StartTLS, XOAUTH2, func(c *client) {
			c.send("AUTH PLAIN " + plain(testUser, testPass))
		}},
		{"implicit TLS, OAUTHBEARER, AUTH LOGIN", rs.smtps, Implicit, OAUTHBEARER, func(c *client) {
			c.send("AUTH LOGIN")
			c.expect("334 ")
			c.send(b64(testUser))
			c.expect("334 ")
			c.send(b64(testPass))
		}},
		{"implicit TLS, XOAUTH2, AUTH LOGIN with the name at once", rs.smtps, Implicit, XOAUTH2, func(c *client) {
			c.send("AUTH LOGIN " + b64(testUser))
			c.expect("334 ")
			c.send(b64(testPass))
		}},
		{"STARTTLS, OAUTHBEARER, AUTH PLAIN with continuation", rs.submission, StartTLS, OAUTHBEARER, func(c *client) {
			c.send("AUTH PLAIN")
			c.expect("334")
			c.send(plain(testUser, testPass))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := realProxy(t, SMTP, tc.addr, tc.mode, tc.mech, &fakeTokens{})
			c := dial(t, p.addr)
			c.expect("220 ")
			c.send("EHLO client.test")
			c.until("250 ")
			tc.login(c)
			c.expect("235 ")
			id := unique()
			msg := message(id, 30)
			c.send("MAIL FROM:<box@example.com>")
			c.expect("250 ")
			c.send("RCPT TO:<box@example.com>")
			c.expect("250 ")
			c.send("DATA")
			c.expect("354 ")
			if _, err := c.conn.Write(append(append([]byte(nil), msg...), ".\r\n"...)); err != nil {
				t.Fatal(err)
			}
			c.expect("250 ")
			c.send("QUIT")
			c.expect("221 ")
			c.closed()
			// Postfix stores with LF line ends, after headers of its own.
			want := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
			if got := waitDelivered(t, rs, id); !bytes.HasSuffix(got, want) {
				t.Fatalf("delivered message does not end with the one sent:\n%s", got)
			}
		})
	}
}

// waitDelivered waits up to 15s for Postfix to deliver the message with id.
func waitDelivered(t *testing.T, rs *realServers, id string) []byte {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, f := range maildirFiles(rs.delivered) {
			if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte("<"+id+"@test>")) {
				return b
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s not delivered within 15s", id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRealServerRetry: Dovecot (directly, and through Postfix) rejects
// the first token; the proxy asks for one more and logs in. When every
// token is rejected the client hears so after exactly two logins.
func TestRealServerRetry(t *testing.T) {
	rs := needServers(t)
	for _, tc := range []struct {
		proto Protocol
		addr  string
		mode  TLSMode
	}{
		{IMAP, rs.imaps, Implicit},
		{POP3, rs.pop3, StartTLS},
		{SMTP, rs.submission, StartTLS},
	} {
		for _, mech := range []Mechanism{XOAUTH2, OAUTHBEARER} {
			t.Run(fmt.Sprintf("%s/%s/first rejected", tc.proto, mech), func(t *testing.T) {
				rs.accept(func(tok string) bool { return tok != "tok-1-secret" })
				tokens := &fakeTokens{}
				p := realProxy(t, tc.proto, tc.addr, tc.mode, mech, tokens)
				before := rs.hits.Load()
				c := dial(t, p.addr)
				if got := logIn(c, tc.proto, testUser, testPass); !strings.HasPrefix(got, answers[tc.proto].ok) {
					t.Fatalf("login answer = %q, want %q...", got, answers[tc.proto].ok)
				}
				if n := rs.hits.Load() - before; n != 2 {
					t.Errorf("tokens the server checked = %d, want 2", n)
				}
				if n := tokens.fetches.Load(); n != 2 {
					t.Errorf("token requests = %d, want 2", n)
				}
			})
			t.Run(fmt.Sprintf("%s/%s/all rejected", tc.proto, mech), func(t *testing.T) {
				rs.accept(func(string) bool { return false })
				tokens := &fakeTokens{}
				p := realProxy(t, tc.proto, tc.addr, tc.mode, mech, tokens)
				before := rs.hits.Load()
				c := dial(t, p.addr)
				got := logIn(c, tc.proto, testUser, testPass)
				if !strings.HasPrefix(got, answers[tc.proto].auth) {
					t.Fatalf("login answer = %q, want %q...", got, answers[tc.proto].auth)
				}
				if strings.Contains(got, "eyJ") { // the base64 JSON challenge
					t.Errorf("the answer %q holds the server's challenge", got)
				}
				if n := rs.hits.Load() - before; n != 2 {
					t.Errorf("tokens the server checked = %d, want 2", n)
				}
				if n := tokens.fetches.Load(); n != 2 {
					t.Errorf("token requests = %d, want 2", n)
				}
			})
		}
	}
}

// TestDovecotLargeMessage: 20 MiB appended and fetched byte for byte.
func TestDovecotLargeMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the 20 MiB message in -short mode")
	}
	rs := needServers(t)
	p := realProxy(t, IMAP, rs.imaps, Implicit, XOAUTH2, &fakeTokens{})
	c := dial(t, p.addr)
	c.conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if ok := logIn(c, IMAP, testUser, testPass); !strings.HasPrefix(ok, "a1 OK") {
		t.Fatalf("login: %q", ok)
	}
	msg := message(unique(), 20<<20/80)
	imapAppendFetch(t, c, msg)
	imapDo(c, "z", "LOGOUT")
	c.closed()
	if o := p.outcome(t); o.BytesIn < int64(len(msg)) || o.BytesOut < int64(len(msg)) {
		t.Errorf("relayed %d bytes in and %d out, want over %d each way", o.BytesIn, o.BytesOut, len(msg))
	}
}
