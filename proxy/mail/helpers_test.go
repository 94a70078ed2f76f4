package mail

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// testCA is a certificate authority for the tests' servers: one key for
// the whole run, a certificate for 127.0.0.1 and localhost.
type testCA struct {
	pool    *x509.CertPool
	cert    tls.Certificate
	certPEM []byte
	keyPEM  []byte
}

var (
	caOnce sync.Once
	ca     *testCA
)

func testCerts(t testing.TB) *testCA {
	if t != nil {
		t.Helper()
	}
	caOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "oauthproxy mail test"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
			DNSNames:              []string{"localhost"},
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			panic(err)
		}
		c := &testCA{
			certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
			pool:    x509.NewCertPool(),
		}
		if c.cert, err = tls.X509KeyPair(c.certPEM, c.keyPEM); err != nil {
			panic(err)
		}
		c.pool.AppendCertsFromPEM(c.certPEM)
		ca = c
	})
	return ca
}

func (c *testCA) serverConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c.cert}}
}

func (c *testCA) clientConfig() *tls.Config {
	return &tls.Config{RootCAs: c.pool, ServerName: "127.0.0.1"}
}

// fakeTokens is a TokenSource handing out tok-1, tok-2, ...: Invalidate of
// the current one makes the next Token a new one.
type fakeTokens struct {
	mu       sync.Mutex
	n        int // tokens issued; 0: none yet
	err      error
	fetches  atomic.Int64
	invalids atomic.Int64
	// stuck: Invalidate does nothing (a rate-limited renewal).
	stuck bool
}

func (f *fakeTokens) Token(ctx context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		f.fetches.Add(1)
		return "", f.err
	}
	if f.n == 0 {
		f.n = 1
		f.fetches.Add(1)
	}
	return fmt.Sprintf("tok-%d-secret", f.n), nil
}

func (f *fakeTokens) Invalidate(tok string) {
	f.invalids.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.stuck && tok == fmt.Sprintf("tok-%d-secret", f.n) {
		f.n++
		f.fetches.Add(1)
	}
}

// verdicts a fake server gives a login.
const (
	accept = "accept"
	reject = "reject"
	temp   = "temp"
)

// fakeServer is a scripted IMAP, POP3 or SMTP server: it checks the
// XOAUTH2 or OAUTHBEARER login, runs the error challenge for rejected
// tokens, and after a login echoes every byte back.
type fakeServer struct {
	t     testing.TB
	proto Protocol
	mode  TLSMode
	mech  Mechanism
	// verdict decides a login; nil accepts every token.
	verdict func(user, token string) string
	saslIR  bool // the IMAP greeting shows SASL-IR
	// askIR: the SMTP server ignores an initial response and asks for
	// it with an empty 334.
	askIR bool
	// injectTLS: after its STARTTLS answer the server sends more in
	// plaintext (it must not be believed).
	injectTLS bool
	// reason is the text of a rejection; "" is a default.
	reason string

	ln       net.Listener
	wg       sync.WaitGroup
	open     sync.Map // net.Conn -> struct{}: closed at the test's end
	conns    atomic.Int64
	logins   atomic.Int64
	mu       sync.Mutex
	answers  []string // answers to error challenges
	users    []string
	tokens   []string
	lastEHLO string
}

const challengeJSON = `{"status":"401","schemes":"bearer","scope":"https://mail.example/"}`

func startFake(t testing.TB, f *fakeServer) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.t, f.ln = t, ln
	if f.mech == "" {
		f.mech = XOAUTH2
	}
	f.wg.Add(1)
	t.Cleanup(func() {
		ln.Close()
		f.open.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
		f.wg.Wait()
	})
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.conns.Add(1)
			f.open.Store(c, struct{}{})
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer f.open.Delete(c)
				f.serve(c)
			}()
		}
	}()
	return f
}

func (f *fakeServer) addr() string { return f.ln.Addr().String() }

func (f *fakeServer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if f.mode == Implicit {
		c = tls.Server(c, testCerts(f.t).serverConfig())
	}
	r := bufio.NewReader(c)
	w := func(lines ...string) {
		for _, l := range lines {
			io.WriteString(c, l+"\r\n")
		}
	}
	read := func() string {
		line, err := readLine(r, 1<<20)
		if err != nil {
			runtime.Goexit() // the deferred Close runs
		}
		return string(line)
	}
	upgrade := func() {
		if f.injectTLS {
			w("INJECTED")
		}
		c = tls.Server(c, testCerts(f.t).serverConfig())
		r = bufio.NewReader(c)
	}
	var loggedIn bool
	switch f.proto {
	case IMAP:
		caps := ""
		if f.saslIR {
			caps = "[CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] "
		}
		w("* OK " + caps + "fake ready")
		for !loggedIn {
			line := read()
			tag, cmd, _ := strings.Cut(line, " ")
			verb, arg, _ := strings.Cut(cmd, " ")
			switch strings.ToUpper(verb) {
			case "STARTTLS":
				w(tag + " OK Begin TLS")
				upgrade()
			case "AUTHENTICATE":
				mech, ir, hasIR := strings.Cut(arg, " ")
				if !strings.EqualFold(mech, string(f.mech)) {
					w(tag + " NO [CANNOT] unsupported mechanism")
					continue
				}
				if f.saslIR != hasIR {
					w(tag + " BAD initial response where SASL-IR is not offered, or none where it is")
					continue
				}
				if !hasIR {
					w("+ ")
					ir = read()
				}
				switch f.judge(ir) {
				case accept:
					w("* CAPABILITY IMAP4rev1 IDLE", tag+" OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
					loggedIn = true
				case temp:
					w(tag + " NO [UNAVAILABLE] Backend down, try later")
				default:
					w("+ " + b64(challengeJSON))
					f.answered(read())
					w(tag + " NO [AUTHENTICATIONFAILED] " + f.rejectText())
				}
			default:
				w(tag + " BAD unexpected")
			}
		}
	case POP3:
		w("+OK fake ready")
		for !loggedIn {
			line := read()
			verb, arg, _ := strings.Cut(line, " ")
			switch strings.ToUpper(verb) {
			case "STLS":
				w("+OK Begin TLS")
				upgrade()
			case "AUTH":
				if !strings.EqualFold(arg, string(f.mech)) {
					w("-ERR unsupported mechanism")
					continue
				}
				w("+ ")
				switch f.judge(read()) {
				case accept:
					w("+OK Logged in.")
					loggedIn = true
				case temp:
					w("-ERR [SYS/TEMP] Backend down, try later")
				default:
					w("+ " + b64(challengeJSON))
					f.answered(read())
					w("-ERR [AUTH] " + f.rejectText())
				}
			default:
				w("-ERR unexpected")
			}
		}
	case SMTP:
		w("220 fake ESMTP")
		tlsOn := f.mode == Implicit
		for !loggedIn {
			line := read()
			verb, arg, _ := strings.Cut(line, " ")
			switch strings.ToUpper(verb) {
			case "EHLO":
				f.mu.Lock()
				f.lastEHLO = arg
				f.mu.Unlock()
				if f.mode == StartTLS && !tlsOn {
					w("250-fake", "250 STARTTLS")
				} else {
					w("250-fake", "250 AUTH XOAUTH2 OAUTHBEARER")
				}
			case "STARTTLS":
				w("220 2.0.0 Ready")
				upgrade()
				tlsOn = true
			case "AUTH":
				mech, ir, _ := strings.Cut(arg, " ")
				if !strings.EqualFold(mech, string(f.mech)) {
					w("504 5.5.4 unsupported mechanism")
					continue
				}
				if f.askIR {
					w("334 ")
					ir = read()
				}
				switch f.judge(ir) {
				case accept:
					w("235 2.7.0 Authentication successful")
					loggedIn = true
				case temp:
					w("454 4.7.0 Backend down, try later")
				default:
					w("334 " + b64(challengeJSON))
					f.answered(read())
					w("535 5.7.8 " + f.rejectText())
				}
			default:
				w("502 5.5.2 unexpected")
			}
		}
	}
	// Logged in: echo.
	c.SetDeadline(time.Time{})
	io.Copy(c, r)
}

func (f *fakeServer) rejectText() string {
	if f.reason != "" {
		return f.reason
	}
	return "Invalid credentials (Failure)"
}

// judge decodes a login's response and decides it.
func (f *fakeServer) judge(ir string) string {
	f.logins.Add(1)
	raw, err := decodeBase64([]byte(ir))
	if err != nil {
		return reject
	}
	user, token := parseBearer(f.mech, string(raw))
	f.mu.Lock()
	f.users = append(f.users, user)
	f.tokens = append(f.tokens, token)
	f.mu.Unlock()
	if f.verdict == nil {
		return accept
	}
	return f.verdict(user, token)
}

func (f *fakeServer) answered(a string) {
	f.mu.Lock()
	f.answers = append(f.answers, a)
	f.mu.Unlock()
}

func (f *fakeServer) seen() (users, tokens, answers []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.users...), append([]string(nil), f.tokens...), append([]string(nil), f.answers...)
}

// parseBearer reads the user and token out of an XOAUTH2 or OAUTHBEARER
// response; "" when malformed.
func parseBearer(m Mechanism, raw string) (user, token string) {
	var kvs []string
	if m == OAUTHBEARER {
		gs2, rest, ok := strings.Cut(raw, "\x01")
		if !ok || !strings.HasPrefix(gs2, "n,a=") || !strings.HasSuffix(gs2, ",") {
			return "", ""
		}
		user = strings.NewReplacer("=2C", ",", "=3D", "=").Replace(strings.TrimSuffix(strings.TrimPrefix(gs2, "n,a="), ","))
		kvs = strings.Split(rest, "\x01")
	} else {
		kvs = strings.Split(raw, "\x01")
	}
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "user":
			user = v
		case "auth":
			token = strings.TrimPrefix(v, "Bearer ")
		}
	}
	if !strings.HasSuffix(raw, "\x01\x01") {
		return "", ""
	}
	return user, token
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// logBuffer collects a test's log lines, to check that no secret reached
// them.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proxyUnderTest is a Listener serving on a loopback port.
type proxyUnderTest struct {
	l        *Listener
	addr     string
	logs     *logBuffer
	outcomes chan *Outcome
}

const (
	testUser = "ops@example.com"
	testPass = "local pässword \"quoted\""
)

// startProxy serves l on a free loopback port; accounts default to
// testUser/testPass with tokens.
func startProxy(t testing.TB, l *Listener, tokens TokenSource) *proxyUnderTest {
	t.Helper()
	p := &proxyUnderTest{l: l, logs: &logBuffer{}, outcomes: make(chan *Outcome, 1000)}
	if l.Accounts == nil {
		l.Accounts = func(name string) (*Account, bool) {
			if name != testUser {
				return nil, false
			}
			return &Account{User: "box@example.com", Password: []byte(testPass), OAuth2: "test", Tokens: tokens}, true
		}
	}
	if l.Logger == nil {
		l.Logger = slog.New(slog.NewTextHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if l.FailureDelay == 0 {
		l.FailureDelay = -1
	}
	if l.Hostname == "" {
		l.Hostname = "proxy.test"
	}
	if l.ServerTLS.Config == nil && l.ServerTLS.Mode != NoTLS {
		l.ServerTLS.Config = testCerts(t).clientConfig()
	}
	l.Observe = func(o *Outcome) { p.outcomes <- o }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- l.Serve(ln) }()
	t.Cleanup(func() {
		l.Close()
		if err := <-served; !errors.Is(err, ErrListenerClosed) {
			t.Errorf("Serve = %v, want ErrListenerClosed", err)
		}
		logs := p.logs.String()
		for _, secret := range []string{testPass, "secret", "tok-", "Bearer", b64("\x00" + testUser + "\x00" + testPass)} {
			if strings.Contains(logs, secret) {
				t.Errorf("the log holds a secret (%q):\n%s", secret, logs)
			}
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs)
		}
	})
	return p
}

// outcome waits for the next session's outcome.
func (p *proxyUnderTest) outcome(t testing.TB) *Outcome {
	t.Helper()
	select {
	case o := <-p.outcomes:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("no session outcome within 10s")
		return nil
	}
}

// client is a test's mail client: lines out, lines in.
type client struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, r: bufio.NewReader(c)}
}

func (c *client) send(lines ...string) {
	c.t.Helper()
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l + "\r\n")
	}
	if _, err := io.WriteString(c.conn, b.String()); err != nil {
		c.t.Fatalf("sending: %v", err)
	}
}

func (c *client) line() string {
	c.t.Helper()
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading a line: %v (got %q)", err, line)
	}
	return strings.TrimRight(line, "\r\n")
}

// expect reads a line and checks its start.
func (c *client) expect(prefix string) string {
	c.t.Helper()
	line := c.line()
	if !strings.HasPrefix(line, prefix) {
		c.t.Fatalf("got %q, want a line starting %q", line, prefix)
	}
	return line
}

// until reads lines up to one starting with prefix, and returns it.
func (c *client) until(prefix string) string {
	c.t.Helper()
	for range 50 {
		if line := c.line(); strings.HasPrefix(line, prefix) {
			return line
		}
	}
	c.t.Fatalf("no line starting %q in 50", prefix)
	return ""
}

// closed checks that the proxy hung up.
func (c *client) closed() {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c.r)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) { // a reset: it closed with input unread
		c.t.Fatalf("want the connection closed, reading: %v (after %q)", err, rest)
	}
}

func (c *client) startTLS() {
	c.t.Helper()
	tc := tls.Client(c.conn, testCerts(c.t).clientConfig())
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake with the proxy: %v", err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
}
