package mail

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// FuzzIMAPCommand: the IMAP command reader never panics and never takes
// more than its limits, whatever a client sends.
func FuzzIMAPCommand(f *testing.F) {
	for _, s := range []string{
		"a LOGIN user pass\r\n",
		"a LOGIN \"us\\\"er\" \"p\\\\ass\"\r\n",
		"a LOGIN {4}\r\nuser {4+}\r\npass\r\n",
		"a AUTHENTICATE PLAIN AHVzZXIAcGFzcw==\r\n",
		"a ID (\"name\" \"x\")\r\n",
		"a LOGIN {99999999999}\r\n",
		"\r\n",
		"a\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for {
			cmd, err := readIMAPCommand(r, io.Discard)
			var bad *imapSyntaxError
			if errors.As(err, &bad) {
				continue
			}
			if err != nil {
				return
			}
			if cmd.tag == "" || cmd.name == "" || len(cmd.args) > maxArgs {
				t.Fatalf("command %+v: empty tag or name, or too many arguments", cmd)
			}
			total := 0
			for _, a := range cmd.args {
				if a.kind == argLiteral && len(a.val) > maxLiteral {
					t.Fatalf("literal of %d bytes, over %d", len(a.val), maxLiteral)
				}
				total += len(a.val)
			}
			if total > maxCommand {
				t.Fatalf("command of %d bytes, over %d", total, maxCommand)
			}
		}
	})
}

// fuzzSession runs one pre-login session over an in-memory connection,
// fed input. Account "u" with password "p" exists, but its token source
// fails, so no server is ever dialled.
func fuzzSession(t *testing.T, proto Protocol, input []byte) {
	l := &Listener{
		Protocol: proto, Server: "127.0.0.1:1", ServerTLS: ServerTLS{Mode: NoTLS},
		Accounts: func(name string) (*Account, bool) {
			return &Account{Password: []byte("p"), Tokens: &fakeTokens{err: errors.New("no token")}}, name == "u"
		},
		FailureDelay: -1, Hostname: "fuzz",
		Logger: slog.New(slog.DiscardHandler),
	}
	if err := l.init(); err != nil {
		t.Fatal(err)
	}
	cli, srv := net.Pipe()
	s := newSession(l, srv, "fuzz")
	if !l.track(s) {
		t.Fatal("not tracked")
	}
	done := make(chan struct{})
	go func() { s.serve(); close(done) }()
	go io.Copy(io.Discard, cli)
	cli.SetWriteDeadline(time.Now().Add(5 * time.Second))
	cli.Write(input)
	cli.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end after its input did")
	}
	if s.out.Result == ResultOK {
		t.Fatal("a session logged in with no server")
	}
}

func FuzzIMAPSession(f *testing.F) {
	for _, s := range []string{
		"a CAPABILITY\r\na NOOP\r\nb LOGIN u p\r\nc LOGOUT\r\n",
		"a LOGIN {1}\r\nu {1+}\r\np\r\n",
		"a AUTHENTICATE PLAIN\r\nAHUAcA==\r\n",
		"a AUTHENTICATE PLAIN AHUAcA==\r\n",
		"a AUTHENTICATE PLAIN\r\n*\r\n",
		"a STARTTLS\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzSession(t, IMAP, data) })
}

func FuzzPOP3Session(f *testing.F) {
	for _, s := range []string{
		"CAPA\r\nUSER u\r\nPASS p\r\nQUIT\r\n",
		"AUTH\r\nAUTH PLAIN\r\nAHUAcA==\r\n",
		"AUTH PLAIN AHUAcA==\r\n",
		"AUTH PLAIN =\r\n",
		"PASS p\r\nSTLS\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzSession(t, POP3, data) })
}

func FuzzSMTPSession(f *testing.F) {
	for _, s := range []string{
		"EHLO x\r\nAUTH PLAIN AHUAcA==\r\nQUIT\r\n",
		"HELO x\r\nAUTH LOGIN\r\ndQ==\r\ncA==\r\n",
		"AUTH LOGIN dQ==\r\ncA==\r\n",
		"AUTH PLAIN\r\n*\r\nMAIL FROM:<a@b>\r\nRSET\r\nNOOP\r\n",
		"STARTTLS\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzSession(t, SMTP, data) })
}
