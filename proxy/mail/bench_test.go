package mail

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// Benchmarks of a 20 MiB IMAP FETCH and SMTP DATA through the proxy
// against the same straight to the server (issue 12: at most 1.1× the
// direct time). They need the real servers:
//
//	go test ./proxy/mail -run '^$' -bench . -benchtime 5x

const benchSize = 20 << 20

// benchClient is logged in to addr, through the proxy or straight.
func benchClient(b *testing.B, rs *realServers, proto Protocol, direct bool) *client {
	addr := map[Protocol]string{IMAP: rs.imaps, SMTP: rs.smtps}[proto]
	if direct {
		c, err := tls.Dial("tcp", addr, testCerts(b).clientConfig())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		cl := &client{t: b, conn: c, r: bufio.NewReader(c)}
		cl.conn.SetDeadline(time.Now().Add(10 * time.Minute))
		ir := XOAUTH2.initialResponse(mailbox, "tok-1-secret", "", "")
		if proto == IMAP {
			cl.expect("* OK")
			cl.send("a1 AUTHENTICATE XOAUTH2 " + ir)
			cl.until("a1 OK")
		} else {
			cl.expect("220 ")
			cl.send("EHLO bench")
			cl.until("250 ")
			cl.send("AUTH XOAUTH2 " + ir)
			cl.expect("235 ")
		}
		return cl
	}
	p := realProxy(b, proto, addr, Implicit, XOAUTH2, &fakeTokens{})
	cl := dial(b, p.addr)
	cl.conn.SetDeadline(time.Now().Add(10 * time.Minute))
	if got := logIn(cl, proto, testUser, testPass); !strings.HasPrefix(got, answers[proto].ok) {
		b.Fatalf("login: %q", got)
	}
	return cl
}

func BenchmarkIMAPFetch20MiB(b *testing.B) {
	rs := needServers(b)
	setup := benchClient(b, rs, IMAP, true)
	msg := message(unique(), benchSize/80)
	imapDo(setup, "s1", "SELECT INBOX")
	setup.send(fmt.Sprintf("s2 APPEND INBOX {%d+}", len(msg)))
	setup.conn.Write(append(msg, "\r\n"...))
	var validity, uid int
	if _, err := fmt.Sscanf(setup.until("s2 "), "s2 OK [APPENDUID %d %d]", &validity, &uid); err != nil {
		b.Fatal(err)
	}
	for _, direct := range []bool{true, false} {
		b.Run(map[bool]string{true: "direct", false: "proxy"}[direct], func(b *testing.B) {
			c := benchClient(b, rs, IMAP, direct)
			imapDo(c, "s", "SELECT INBOX")
			b.SetBytes(int64(len(msg)))
			for i := 0; b.Loop(); i++ {
				c.send(fmt.Sprintf("f%d UID FETCH %d BODY.PEEK[]", i, uid))
				head := c.expect("* ")
				var size int
				fmt.Sscanf(head[strings.LastIndexByte(head, '{'):], "{%d}", &size)
				if _, err := io.CopyN(io.Discard, c.r, int64(size)); err != nil {
					b.Fatal(err)
				}
				c.until(fmt.Sprintf("f%d OK", i))
			}
		})
	}
}

func BenchmarkSMTPData20MiB(b *testing.B) {
	rs := needServers(b)
	msg := message(unique(), benchSize/80)
	for _, direct := range []bool{true, false} {
		b.Run(map[bool]string{true: "direct", false: "proxy"}[direct], func(b *testing.B) {
			c := benchClient(b, rs, SMTP, direct)
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				c.send("MAIL FROM:<box@example.com>", "RCPT TO:<box@example.com>", "DATA")
				c.expect("250 ")
				c.expect("250 ")
				c.expect("354 ")
				c.conn.Write(append(msg, ".\r\n"...))
				c.expect("250 ")
			}
		})
	}
}
