package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// The mail listeners of the built binary against a real Dovecot (IMAP,
// POP3, and the SASL service Postfix asks) and a real Postfix submission
// service, both started once by TestMail in a private directory on free
// loopback ports, as root with configs of their own (testdata/mail).
// Dovecot checks every token with passdb oauth2 against a token-info
// endpoint the test runs, which takes only tokens the test's token servers
// issued, and of those only the ones the test lets through.

// mailBox is the one mailbox the servers have; every account opens it.
const mailBox = "box@example.com"

// mailIdP is a token server for one oauth2 entry, and what the mail
// server makes of its tokens.
type mailIdP struct {
	*tokenServer
	// reject: "" takes every token it issued, "first" refuses the first
	// one the server sees, "all" refuses them all.
	reject string

	mu      sync.Mutex
	first   string
	checked int // logins at the server with one of its tokens
}

// take says whether the server accepts tok, and counts the login.
func (m *mailIdP) take(tok string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checked++
	if m.first == "" {
		m.first = tok
	}
	switch m.reject {
	case "first":
		return tok != m.first
	case "all":
		return false
	}
	return true
}

func (m *mailIdP) logins() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.checked
}

// mailServers are the running Dovecot and Postfix.
type mailServers struct {
	dir                      string
	imap, imaps, pop3, pop3s string
	submission, smtps        string
	delivered                string // where Postfix delivers (a Maildir)
	caFile                   string // the CA of the servers' certificate

	tokeninfo *httptest.Server
	mu        sync.Mutex
	idps      []*mailIdP

	procs []*exec.Cmd
	logs  []string
}

// newIdP is a token server whose tokens the mail servers judge by reject.
func (ms *mailServers) newIdP(t *testing.T, reject string) *mailIdP {
	m := &mailIdP{tokenServer: newTokenServer(t, nil), reject: reject}
	ms.mu.Lock()
	ms.idps = append(ms.idps, m)
	ms.mu.Unlock()
	return m
}

// serveTokeninfo is the endpoint Dovecot's passdb oauth2 asks about every
// token: one a test's token server issued and the test lets through names
// the mailbox; any other gets 401.
func (ms *mailServers) serveTokeninfo(w http.ResponseWriter, r *http.Request) {
	tok := r.URL.Query().Get("access_token")
	// The XOAUTH2 string of mailBox puts the token at a multiple of three
	// bytes, so its base64 holds the token's own: that must not be logged
	// either.
	addCanary(base64.StdEncoding.EncodeToString([]byte(tok[:len(tok)/3*3])))
	ms.mu.Lock()
	idps := ms.idps
	ms.mu.Unlock()
	for _, m := range idps {
		if tok != "" && m.verify(tok) == nil {
			if m.take(tok) {
				w.Header().Set("Content-Type", "application/json")
				json.NewEncoder(w).Encode(map[string]string{"email": mailBox})
				return
			}
			break
		}
	}
	w.WriteHeader(http.StatusUnauthorized)
}

const postfixMasterBin = "/usr/lib/postfix/sbin/master"

// startMailServers starts Dovecot and Postfix for t and its subtests.
// Without the binaries (or without root, which Postfix needs) it skips,
// unless OAUTHPROXY_REQUIRE_SERVERS is set (as in CI): then it fails.
func startMailServers(t *testing.T) *mailServers {
	t.Helper()
	var missing []string
	for _, bin := range []string{"dovecot", "postfix"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if _, err := os.Stat(postfixMasterBin); err != nil {
		missing = append(missing, postfixMasterBin)
	}
	why := ""
	switch {
	case len(missing) > 0:
		why = "not installed: " + strings.Join(missing, ", ") + " (apt-get install dovecot-imapd dovecot-pop3d postfix)"
	case os.Geteuid() != 0:
		why = "Dovecot and Postfix test instances must be started as root"
	}
	if why != "" {
		if os.Getenv("OAUTHPROXY_REQUIRE_SERVERS") != "" {
			t.Fatalf("real mail servers required (OAUTHPROXY_REQUIRE_SERVERS is set): %s", why)
		}
		t.Skipf("skipping: %s; set OAUTHPROXY_REQUIRE_SERVERS to make this fail", why)
	}

	// A short directory: Dovecot's sockets live under it (108-byte limit).
	dir, err := os.MkdirTemp("", "e2email")
	if err != nil {
		t.Fatal(err)
	}
	ms := &mailServers{dir: dir}
	t.Cleanup(func() {
		if t.Failed() {
			ms.showLogs(t)
		}
		ms.stop()
	})
	if err := os.Chmod(dir, 0o755); err != nil { // the servers' users traverse it
		t.Fatal(err)
	}
	ms.tokeninfo = httptest.NewServer(http.HandlerFunc(ms.serveTokeninfo))

	ca := newPKI(t, "mail test CA")
	ms.caFile = ca.file
	certFile, keyFile, _ := ca.issue(t, "dovecot", nil, "127.0.0.1")
	for name, from := range map[string]string{"cert.pem": certFile, "key.pem": keyFile} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var ports []int
	for range 7 {
		ports = append(ports, freePort(t))
	}
	addr := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	ms.imap, ms.imaps, ms.pop3, ms.pop3s = addr(ports[0]), addr(ports[1]), addr(ports[2]), addr(ports[3])
	ms.submission, ms.smtps = addr(ports[4]), addr(ports[5])
	for _, d := range []string{"mail", "vmail", "postfix/queue", "postfix/data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for path, owner := range map[string]string{"mail": "nobody:nogroup", "vmail": "nobody:nogroup", "postfix/data": "postfix"} {
		if out, err := exec.Command("chown", "-R", owner, filepath.Join(dir, path)).CombinedOutput(); err != nil {
			t.Fatalf("chown %s %s: %v: %s", owner, path, err, out)
		}
	}
	ms.delivered = filepath.Join(dir, "vmail", "box")
	vars := map[string]any{
		"Dir": dir, "Tokeninfo": ms.tokeninfo.URL,
		"IMAP": ports[0], "IMAPS": ports[1], "POP3": ports[2], "POP3S": ports[3],
		"Submission": ports[4], "SMTPS": ports[5], "Auth": ports[6],
	}
	for name, tmpl := range map[string]string{
		"dovecot.conf": "dovecot.conf.tmpl", "oauth2.conf": "oauth2.conf.tmpl",
		"postfix/main.cf": "postfix-main.cf.tmpl", "postfix/master.cf": "postfix-master.cf.tmpl",
	} {
		tp, err := template.ParseFiles(filepath.Join("testdata", "mail", tmpl))
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := tp.Execute(&b, vars); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	ms.run(t, filepath.Join(dir, "dovecot.log"), "dovecot", "-F", "-c", filepath.Join(dir, "dovecot.conf"))
	for _, a := range []string{ms.imap, ms.imaps, ms.pop3, ms.pop3s, addr(ports[6])} {
		waitListening(t, "dovecot", a)
	}
	pfDir := filepath.Join(dir, "postfix")
	// "postfix check" makes the queue's directories with their owners.
	if out, err := exec.Command("postfix", "-c", pfDir, "check").CombinedOutput(); err != nil {
		t.Fatalf("postfix check: %v: %s", err, out)
	}
	// master -d stays in the foreground, so the test owns it.
	ms.run(t, filepath.Join(dir, "postfix.log"), postfixMasterBin, "-c", pfDir, "-d")
	for _, a := range []string{ms.submission, ms.smtps} {
		waitListening(t, "postfix", a)
	}
	return ms
}

// run starts a server in the foreground in a process group of its own,
// its output to logFile.
func (ms *mailServers) run(t *testing.T, logFile, name string, args ...string) {
	t.Helper()
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ms.logs = append(ms.logs, logFile)
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	ms.procs = append(ms.procs, cmd)
}

func waitListening(t *testing.T, what, addr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: nothing listens on %s after 15s: %v", what, addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (ms *mailServers) stop() {
	for i := len(ms.procs) - 1; i >= 0; i-- {
		p := ms.procs[i]
		p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL) // its own group: the master and its children
			<-done
		}
	}
	if ms.tokeninfo != nil {
		ms.tokeninfo.Close()
	}
	if os.Getenv("MAILTEST_KEEP") == "" { // keep the servers' logs and mail to look at
		os.RemoveAll(ms.dir)
	}
}

func (ms *mailServers) showLogs(t *testing.T) {
	for _, f := range ms.logs {
		b, _ := os.ReadFile(f)
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		t.Logf("%s (end):\n%s", filepath.Base(f), b)
	}
}

// dovecotLog is Dovecot's log so far.
func (ms *mailServers) dovecotLog() string {
	b, _ := os.ReadFile(filepath.Join(ms.dir, "dovecot.log"))
	return string(b)
}

// waitDelivered waits up to 15s for Postfix to deliver the message with id.
func (ms *mailServers) waitDelivered(t *testing.T, id string) []byte {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, sub := range []string{"new", "cur"} {
			files, _ := filepath.Glob(filepath.Join(ms.delivered, sub, "*"))
			for _, f := range files {
				if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte("<"+id+"@test>")) {
					return b
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s not delivered within 15s", id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// trap is a loopback "mail server" that counts connections and says
// nothing: the listeners in front of it must never reach it.
type trap struct {
	ln    net.Listener
	conns atomic.Int64
}

func newTrap(t *testing.T) *trap {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := &trap{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tr.conns.Add(1)
			c.Close()
		}
	}()
	return tr
}

// mailConn is a client of a mail listener.
type mailConn struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialMail(t *testing.T, addr string) *mailConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { conn.Close() })
	return &mailConn{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *mailConn) send(lines ...string) {
	c.t.Helper()
	for _, l := range lines {
		if _, err := io.WriteString(c.conn, l+"\r\n"); err != nil {
			c.t.Fatalf("sending: %v", err)
		}
	}
}

func (c *mailConn) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading (after %q): %v", l, err)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// expect reads a line that must start with prefix.
func (c *mailConn) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want %q...", l, prefix)
	}
	return l
}

// until reads lines up to the first one starting with prefix.
func (c *mailConn) until(prefix string) string {
	c.t.Helper()
	for {
		if l := c.line(); strings.HasPrefix(l, prefix) {
			return l
		}
	}
}

// closed reads what is left and fails unless the connection then ends.
func (c *mailConn) closed() {
	c.t.Helper()
	if _, err := io.Copy(io.Discard, c.r); err != nil {
		c.t.Fatalf("waiting for the end of the connection: %v", err)
	}
}

// imapDo sends a tagged command and returns its lines; the tagged answer
// must be OK.
func (c *mailConn) imapDo(tag, cmd string) []string {
	c.t.Helper()
	c.send(tag + " " + cmd)
	var lines []string
	for {
		l := c.line()
		lines = append(lines, l)
		if strings.HasPrefix(l, tag+" ") {
			if !strings.HasPrefix(l, tag+" OK") {
				c.t.Fatalf("%s: %q", cmd, l)
			}
			return lines
		}
	}
}

func saslPlain(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

// mailLogin greets, logs in the simplest way the protocol has (IMAP
// LOGIN, POP3 USER/PASS, SMTP AUTH PLAIN) and returns the verdict line.
func mailLogin(c *mailConn, proto, user, pass string) string {
	c.t.Helper()
	got, err := loginOn(c.conn, c.r, proto, user, pass)
	if err != nil {
		c.t.Fatalf("%s login: %v", proto, err)
	}
	return got
}

// loginOn is mailLogin on a connection, for goroutines that may not fail
// the test themselves.
func loginOn(conn net.Conn, r *bufio.Reader, proto, user, pass string) (string, error) {
	read := func(prefix string) (string, error) {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return l, fmt.Errorf("reading (after %q): %w", l, err)
			}
			if l = strings.TrimSuffix(l, "\r\n"); strings.HasPrefix(l, prefix) {
				return l, nil
			}
		}
	}
	steps := map[string][][2]string{ // what to send, and the line to read up to
		"imap": {{"", "* OK"}, {fmt.Sprintf("a1 LOGIN %q %q", user, pass), "a1 "}},
		"pop3": {{"", "+OK"}, {"USER " + user, "+OK"}, {"PASS " + pass, ""}},
		"smtp": {{"", "220 "}, {"EHLO client.test", "250 "}, {"AUTH PLAIN " + saslPlain(user, pass), ""}},
	}[proto]
	if steps == nil {
		return "", fmt.Errorf("no protocol %q", proto)
	}
	var l string
	for _, st := range steps {
		if st[0] != "" {
			if _, err := io.WriteString(conn, st[0]+"\r\n"); err != nil {
				return "", err
			}
		}
		var err error
		if l, err = read(st[1]); err != nil {
			return "", err
		}
	}
	return l, nil
}

// tryMailLogin dials addr, logs in and out, and returns the verdict.
func tryMailLogin(addr, proto, user, pass string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(conn)
	got, err := loginOn(conn, r, proto, user, pass)
	if err == nil && proto == "imap" && strings.HasPrefix(got, "a1 OK") {
		io.WriteString(conn, "z LOGOUT\r\n")
		io.Copy(io.Discard, r)
	}
	return got, err
}

// concurrently runs f n times at once and returns its answers.
func concurrently(n int, f func(i int) (string, error)) []string {
	out := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			got, err := f(i)
			if err != nil {
				got = "error: " + err.Error()
			}
			out[i] = got
		})
	}
	wg.Wait()
	return out
}

// mailAnswers are the verdict lines of each protocol: success, the
// credentials' failure, a temporary failure.
var mailAnswers = map[string]struct{ ok, auth, temp string }{
	"imap": {"a1 OK", "a1 NO [AUTHENTICATIONFAILED]", "a1 NO [UNAVAILABLE]"},
	"pop3": {"+OK", "-ERR [AUTH]", "-ERR [SYS/TEMP]"},
	"smtp": {"235 ", "535 5.7.8", "454 4.7.0"},
}

// mailMessage is a message with CRLF line ends, none starting with a dot.
func mailMessage(id string, bodyLines int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: box@example.com\r\nTo: box@example.com\r\nDate: Mon, 1 Jun 2026 10:00:00 +0000\r\nSubject: test %s\r\nMessage-ID: <%s@test>\r\n\r\n", id, id)
	for i := range bodyLines {
		fmt.Fprintf(&b, "line %d of %s: \xc3\xa4 8-bit and some padding ......\r\n", i, id)
	}
	return b.Bytes()
}

// bigMailMessage is a message like mailMessage of exactly size bytes.
func bigMailMessage(id string, size int) []byte {
	b := bytes.NewBuffer(mailMessage(id, 0))
	b.Grow(size - b.Len())
	for i := 0; b.Len() < size; i++ {
		line := fmt.Sprintf("line %d of %s: \xc3\xa4 8-bit and some padding ......", i, id)
		// The last line takes what is left, two lines' worth at most, so
		// that no line is left with room for less than its CRLF.
		if rest := size - b.Len(); rest < 2*len(line)+4 {
			line = strings.Repeat("x", rest-2)
		}
		b.WriteString(line + "\r\n")
	}
	return b.Bytes()
}

// sameBytes fails unless got is want, naming the first difference rather
// than printing megabytes.
func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Fatalf("%s: %d bytes, want %d; they differ from byte %d: %q, want %q", what, len(got), len(want), i,
		got[i:min(len(got), i+64)], want[i:min(len(want), i+64)])
}

// imapAppendFetch appends msg to INBOX, fetches it back byte for byte and
// returns its UID.
func imapAppendFetch(c *mailConn, msg []byte) int {
	t := c.t
	t.Helper()
	c.imapDo("s1", "SELECT INBOX")
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
	sameBytes(t, "the message fetched", got, msg)
	c.until("s3 OK")
	return uid
}

// mailListen is one listener of a test's config.
type mailListen struct {
	proto, listen, server, mode, mech string
	ca                                bool   // server_tls.ca_file: the test CA
	clientTLS                         string // the keys of tls (towards the client), "" for none
}

func (l mailListen) yaml(caFile string) string {
	tlsKeys := "mode: " + l.mode
	if l.ca {
		tlsKeys += ", ca_file: " + caFile
	}
	client := ""
	if l.clientTLS != "" {
		client = ", tls: {" + l.clientTLS + "}"
	}
	return fmt.Sprintf("    - {protocol: %s, listen: %s, server: %s, server_tls: {%s}, mechanism: %s%s}\n",
		l.proto, l.listen, l.server, tlsKeys, l.mech, client)
}

// mailConfig is a config with no routes: oauth2 entries (name -> token
// URL), accounts (login -> "entry" or "entry user") sharing one password,
// and listeners.
func mailConfig(caFile, secret, password string, entries map[string]string, accounts map[string]string, listeners []mailListen) string {
	var b strings.Builder
	b.WriteString("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nlog: {level: debug, format: json}\nserver: {shutdown_timeout: 10s}\noauth2:\n")
	for name, url := range entries {
		fmt.Fprintf(&b, "  %s: {token_url: %s/t, client_id: %s, client_secret: %s}\n", name, url, name, secret)
	}
	b.WriteString("mail:\n  accounts:\n")
	for login, spec := range accounts {
		entry, user, _ := strings.Cut(spec, " ")
		fmt.Fprintf(&b, "    %s: {oauth2: %s, password: %q", login, entry, password)
		if user != "" {
			fmt.Fprintf(&b, ", user: %s", user)
		}
		b.WriteString("}\n")
	}
	b.WriteString("  listeners:\n")
	for _, l := range listeners {
		b.WriteString(l.yaml(caFile))
	}
	return b.String()
}

// mailMetric is the value of a mail series whose labels include labels
// ("listener=...", "result=..."), -1 when absent.
func mailMetric(exposition, name string, labels ...string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{([^}]*)\} (\S+)$`)
next:
	for _, m := range re.FindAllStringSubmatch(exposition, -1) {
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			if !strings.Contains(","+m[1]+",", fmt.Sprintf(",%s=%q,", k, v)) {
				continue next
			}
		}
		f, _ := strconv.ParseFloat(m[2], 64)
		return f
	}
	return -1
}

// TestMail: the mail section of a config, served by the built binary in
// front of real Dovecot and Postfix. The servers are shared by all
// subtests; the accounts that count token requests have entries of their
// own, since an entry renews a rejected token at most once every 5 s.
func TestMail(t *testing.T) {
	ms := startMailServers(t)
	secret := randomString("cs-mail-")
	password := randomString("pw-mail-")
	addCanary(secret, password, saslPlain(mailBox, password))

	idps := map[string]*mailIdP{
		"mail":       ms.newIdP(t, ""),
		"once":       ms.newIdP(t, "first"),
		"never_imap": ms.newIdP(t, "all"),
		"never_pop3": ms.newIdP(t, "all"),
		"never_smtp": ms.newIdP(t, "all"),
		"burst":      ms.newIdP(t, "first"),
		"pipelined":  ms.newIdP(t, ""),
	}
	entries := map[string]string{}
	accounts := map[string]string{mailBox: "mail"}
	for name, idp := range idps {
		entries[name] = idp.URL
		if name != "mail" {
			accounts[strings.ReplaceAll(name, "_", "-")+"@example.com"] = name + " " + mailBox
		}
	}
	tr := newTrap(t)
	// TLS towards the client, with a certificate of a CA of its own.
	clientCA := newPKI(t, "mail listener CA")
	certFile, keyFile, _ := clientCA.issue(t, "mail listener", nil, "127.0.0.1")
	clientTLS := fmt.Sprintf("cert_file: %s, key_file: %s, mode: starttls", certFile, keyFile)
	ls := map[string]mailListen{
		"imaps":      {"imap", freeAddr(t), ms.imaps, "implicit", "xoauth2", true, ""},
		"imap":       {"imap", freeAddr(t), ms.imap, "starttls", "oauthbearer", true, ""},
		"pop3s":      {"pop3", freeAddr(t), ms.pop3s, "implicit", "oauthbearer", true, ""},
		"pop3":       {"pop3", freeAddr(t), ms.pop3, "starttls", "xoauth2", true, ""},
		"submission": {"smtp", freeAddr(t), ms.submission, "starttls", "xoauth2", true, ""},
		"smtps":      {"smtp", freeAddr(t), ms.smtps, "implicit", "oauthbearer", true, ""},
		// The system roots do not know the test CA.
		"untrusted":     {"imap", freeAddr(t), ms.imaps, "implicit", "xoauth2", false, ""},
		"trap-imap":     {"imap", freeAddr(t), tr.ln.Addr().String(), "none", "xoauth2", false, ""},
		"trap-pop3":     {"pop3", freeAddr(t), tr.ln.Addr().String(), "none", "xoauth2", false, ""},
		"trap-smtp":     {"smtp", freeAddr(t), tr.ln.Addr().String(), "none", "xoauth2", false, ""},
		"starttls-imap": {"imap", freeAddr(t), ms.imaps, "implicit", "xoauth2", true, clientTLS},
		"starttls-pop3": {"pop3", freeAddr(t), ms.pop3s, "implicit", "xoauth2", true, clientTLS},
		"starttls-smtp": {"smtp", freeAddr(t), ms.smtps, "implicit", "xoauth2", true, clientTLS},
	}
	var list []mailListen
	for _, l := range ls {
		list = append(list, l)
	}
	p := startProxy(t, mailConfig(ms.caFile, secret, password, entries, accounts, list), quickExit()...)
	addr := func(name string) string { return ls[name].listen }

	t.Run("only mail listeners, no routes", func(t *testing.T) {
		serving := p.logLines("oauthproxy serving")
		if len(serving) != 1 {
			t.Fatalf("%d serving lines", len(serving))
		}
		if n, _ := serving[0]["routes"].(float64); n != 0 {
			t.Errorf("routes = %v, want 0", serving[0]["routes"])
		}
		got := fmt.Sprint(serving[0]["mail_listeners"])
		for name, l := range ls {
			if !strings.Contains(got, l.proto+" "+l.listen) {
				t.Errorf("mail_listeners %s does not name %s (%s %s)", got, name, l.proto, l.listen)
			}
		}
	})

	t.Run("IMAP", func(t *testing.T) {
		tests := []struct {
			name     string
			listener string
			login    func(c *mailConn)
		}{
			{"implicit TLS, XOAUTH2, LOGIN", "imaps", func(c *mailConn) {
				c.send(fmt.Sprintf("a1 LOGIN %q %q", mailBox, password))
			}},
			{"STARTTLS, OAUTHBEARER, AUTHENTICATE PLAIN", "imap", func(c *mailConn) {
				c.send("a1 AUTHENTICATE PLAIN " + saslPlain(mailBox, password))
			}},
			{"implicit TLS, XOAUTH2, LOGIN with literals", "imaps", func(c *mailConn) {
				c.send(fmt.Sprintf("a1 LOGIN {%d}", len(mailBox)))
				c.expect("+ ")
				c.send(fmt.Sprintf("%s {%d+}", mailBox, len(password)), password)
			}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := dialMail(t, addr(tc.listener))
				c.expect("* OK [CAPABILITY ")
				tc.login(c)
				if ok := c.until("a1 "); !strings.HasPrefix(ok, "a1 OK") {
					t.Fatalf("login: %q", ok)
				}
				imapAppendFetch(c, mailMessage(randomString(""), 20))
				c.imapDo("z", "LOGOUT")
				c.closed()
			})
		}
	})

	t.Run("20 MiB message", func(t *testing.T) {
		c := dialMail(t, addr("imaps"))
		c.conn.SetDeadline(time.Now().Add(2 * time.Minute)) // a slow machine under -race
		if ok := mailLogin(c, "imap", mailBox, password); !strings.HasPrefix(ok, "a1 OK") {
			t.Fatalf("login: %q", ok)
		}
		uid := imapAppendFetch(c, bigMailMessage(randomString(""), 20<<20))
		// Gone again: the POP3 test reads the whole mailbox.
		c.imapDo("d1", fmt.Sprintf(`UID STORE %d +FLAGS.SILENT (\Deleted)`, uid))
		c.imapDo("d2", fmt.Sprintf("UID EXPUNGE %d", uid))
		c.imapDo("z", "LOGOUT")
		c.closed()
	})

	t.Run("POP3", func(t *testing.T) {
		// A message to retrieve, put there through IMAP.
		ic := dialMail(t, addr("imaps"))
		if ok := mailLogin(ic, "imap", mailBox, password); !strings.HasPrefix(ok, "a1 OK") {
			t.Fatalf("IMAP login: %q", ok)
		}
		msg := mailMessage(randomString(""), 40)
		imapAppendFetch(ic, msg)
		ic.imapDo("z", "LOGOUT")

		tests := []struct {
			name     string
			listener string
			login    func(c *mailConn)
		}{
			{"implicit TLS, OAUTHBEARER, USER/PASS", "pop3s", func(c *mailConn) {
				c.send("USER "+mailBox, "PASS "+password)
				c.expect("+OK")
			}},
			{"STARTTLS, XOAUTH2, AUTH PLAIN", "pop3", func(c *mailConn) {
				c.send("AUTH PLAIN " + saslPlain(mailBox, password))
			}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := dialMail(t, addr(tc.listener))
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
					l := c.line()
					if l == "." {
						break
					}
					got.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
				}
				if !bytes.Equal(got.Bytes(), msg) {
					t.Fatalf("RETR: %d bytes, want the %d appended:\n%q", got.Len(), len(msg), got.Bytes())
				}
				c.send("QUIT")
				c.expect("+OK")
				c.closed()
			})
		}
	})

	t.Run("SMTP", func(t *testing.T) {
		tests := []struct {
			name     string
			listener string
			login    func(c *mailConn)
		}{
			{"STARTTLS, XOAUTH2, AUTH PLAIN", "submission", func(c *mailConn) {
				c.send("AUTH PLAIN " + saslPlain(mailBox, password))
			}},
			{"implicit TLS, OAUTHBEARER, AUTH LOGIN", "smtps", func(c *mailConn) {
				c.send("AUTH LOGIN")
				c.expect("334 ")
				c.send(base64.StdEncoding.EncodeToString([]byte(mailBox)))
				c.expect("334 ")
				c.send(base64.StdEncoding.EncodeToString([]byte(password)))
			}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := dialMail(t, addr(tc.listener))
				c.expect("220 ")
				c.send("EHLO client.test")
				c.until("250 ")
				tc.login(c)
				c.expect("235 ")
				id := randomString("")
				msg := mailMessage(id, 30)
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
				if got := ms.waitDelivered(t, id); !bytes.HasSuffix(got, want) {
					t.Fatalf("delivered message does not end with the one sent:\n%s", got)
				}
			})
		}
	})

	t.Run("both mechanisms reached Dovecot", func(t *testing.T) {
		log := ms.dovecotLog()
		for _, want := range []string{"imap-login: Info: Login: user=<box@example.com>, method=XOAUTH2",
			"imap-login: Info: Login: user=<box@example.com>, method=OAUTHBEARER",
			"pop3-login: Info: Login: user=<box@example.com>, method=XOAUTH2",
			"pop3-login: Info: Login: user=<box@example.com>, method=OAUTHBEARER"} {
			if !strings.Contains(log, want) {
				t.Errorf("dovecot.log has no %q", want)
			}
		}
	})

	t.Run("server certificate verified", func(t *testing.T) {
		c := dialMail(t, addr("untrusted"))
		if got := mailLogin(c, "imap", mailBox, password); !strings.HasPrefix(got, mailAnswers["imap"].temp) {
			t.Fatalf("login through a listener without the CA: %q, want %q...", got, mailAnswers["imap"].temp)
		}
	})

	t.Run("token rejected once", func(t *testing.T) {
		idp := idps["once"]
		if got, err := tryMailLogin(addr("imaps"), "imap", "once@example.com", password); err != nil || !strings.HasPrefix(got, "a1 OK") {
			t.Fatalf("login: %q %v", got, err)
		}
		if n := idp.hits.Load(); n != 2 {
			t.Errorf("token requests = %d, want 2 (one, then one after the rejection)", n)
		}
		if n := idp.logins(); n != 2 {
			t.Errorf("logins at the server = %d, want 2", n)
		}
		// The session's line comes once the proxy has seen both ends close.
		deadline := time.Now().Add(5 * time.Second)
		for !slices.ContainsFunc(p.logLines("mail session"), func(rec map[string]any) bool {
			return rec["account"] == "once@example.com" && rec["result"] == "ok" && rec["retried"] == true
		}) {
			if time.Now().After(deadline) {
				t.Fatalf("no mail session line for once@example.com with result ok and retried true")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("token rejected twice", func(t *testing.T) {
		protos := []string{"imap", "pop3", "smtp"}
		listener := map[string]string{"imap": "imaps", "pop3": "pop3", "smtp": "submission"}
		answers := concurrently(len(protos), func(i int) (string, error) {
			proto := protos[i]
			return tryMailLogin(addr(listener[proto]), proto, "never-"+proto+"@example.com", password)
		})
		for i, proto := range protos {
			idp := idps["never_"+proto]
			if got := answers[i]; !strings.HasPrefix(got, mailAnswers[proto].auth) {
				t.Errorf("%s: login answer = %q, want %q...", proto, got, mailAnswers[proto].auth)
			} else if strings.Contains(got, "eyJ") { // the base64 JSON challenge
				t.Errorf("%s: the answer %q holds the server's challenge", proto, got)
			}
			if n := idp.hits.Load(); n != 2 {
				t.Errorf("%s: token requests = %d, want 2", proto, n)
			}
			if n := idp.logins(); n != 2 {
				t.Errorf("%s: logins at the server = %d, want 2", proto, n)
			}
		}
	})

	t.Run("refused before the server", func(t *testing.T) {
		tokenRequests := func() (n int64) {
			for _, idp := range idps {
				n += idp.hits.Load()
			}
			return n
		}
		serverLogins := func() (n int) {
			for _, idp := range idps {
				n += idp.logins()
			}
			return n
		}
		beforeTokens, beforeLogins := tokenRequests(), serverLogins()
		unknown := randomString("nobody-") + "@example.com"
		addCanary(unknown) // a name that is no account may be a password typed into the wrong field
		type attempt struct{ proto, what, user, pass string }
		var tries []attempt
		for _, proto := range []string{"imap", "pop3", "smtp"} {
			tries = append(tries, attempt{proto, "wrong password", mailBox, password + "x"},
				attempt{proto, "unknown account", unknown, password})
		}
		// At once: each waits out the failure delay.
		start := time.Now()
		answers := concurrently(len(tries), func(i int) (string, error) {
			a := tries[i]
			return tryMailLogin(addr("trap-"+a.proto), a.proto, a.user, a.pass)
		})
		if d := time.Since(start); d < 900*time.Millisecond {
			t.Errorf("refused after %v, want the failure delay (1 s) first", d)
		}
		for i, a := range tries {
			if !strings.HasPrefix(answers[i], mailAnswers[a.proto].auth) {
				t.Errorf("%s, %s: login answer = %q, want %q...", a.proto, a.what, answers[i], mailAnswers[a.proto].auth)
			}
		}
		if n := tr.conns.Load(); n != 0 {
			t.Errorf("the server behind the listeners was connected to %d times, want 0", n)
		}
		if n := tokenRequests() - beforeTokens; n != 0 {
			t.Errorf("%d token requests, want 0", n)
		}
		if n := serverLogins() - beforeLogins; n != 0 {
			t.Errorf("%d logins at the server, want 0", n)
		}
	})

	t.Run("nothing pipelined after STARTTLS is executed", func(t *testing.T) {
		testMailPipelinedSTARTTLS(t, p, idps["pipelined"], password, clientCA, map[string]string{
			"imap": addr("starttls-imap"), "pop3": addr("starttls-pop3"), "smtp": addr("starttls-smtp")})
	})

	t.Run("100 concurrent logins, one token request", func(t *testing.T) {
		// Every login's first token is rejected: 100 sessions invalidate
		// it at once, and exactly one new token is fetched for all.
		idp := idps["burst"]
		const n = 100
		answers := concurrently(n, func(int) (string, error) {
			return tryMailLogin(addr("imaps"), "imap", "burst@example.com", password)
		})
		ok := 0
		for _, a := range answers {
			if strings.HasPrefix(a, "a1 OK") {
				ok++
			} else {
				t.Errorf("login: %q", a)
			}
		}
		if ok != n {
			t.Errorf("%d of %d logins succeeded", ok, n)
		}
		if got := idp.hits.Load(); got != 2 {
			t.Errorf("token requests = %d, want 2: the one before, and one for all %d rejections", got, n)
		}
		if got := idp.logins(); got < n+1 {
			t.Errorf("logins at the server = %d, want at least %d", got, n+1)
		}
	})

	// Sessions are counted and logged once the proxy has seen both ends
	// close, a moment after the client has.
	t.Run("metrics", func(t *testing.T) {
		var m string
		eventually(t, func() (problems []string) {
			m = get(t, p.admin+"/metrics").body
			for _, c := range []struct {
				series string
				labels []string
				want   float64 // -1: no such series
			}{
				// imaps: 2 IMAP tests, 20 MiB, the POP3 test's message, once, 100 of burst.
				{"oauthproxy_mail_sessions_total", []string{"listener=" + addr("imaps"), "result=ok"}, 105},
				{"oauthproxy_mail_sessions_total", []string{"listener=" + addr("imaps"), "result=rejected"}, 1},
				{"oauthproxy_mail_sessions_total", []string{"listener=" + addr("untrusted"), "result=unavailable"}, 1},
				{"oauthproxy_mail_sessions_total", []string{"listener=" + addr("trap-imap"), "result=denied"}, 2},
				{"oauthproxy_mail_sessions_total", []string{"listener=" + addr("submission"), "result=ok"}, 1},
				{"oauthproxy_mail_auth_duration_seconds_count", []string{"listener=" + addr("imaps")}, 106},
				{"oauthproxy_mail_auth_duration_seconds_count", []string{"listener=" + addr("pop3s")}, 1},
				{"oauthproxy_mail_auth_duration_seconds_bucket", []string{"listener=" + addr("imaps"), "le=+Inf"}, 106},
				// Each STARTTLS listener: one login after the handshake, and
				// the pipelined session that never got to one.
				{"oauthproxy_mail_sessions_total", []string{"listener=" + addr("starttls-smtp"), "result=ok"}, 1},
				{"oauthproxy_mail_sessions_total", []string{"listener=" + addr("starttls-smtp"), "result=abandoned"}, 1},
				// A refused login never reaches the token source.
				{"oauthproxy_mail_auth_duration_seconds_count", []string{"listener=" + addr("trap-imap")}, -1},
			} {
				if v := mailMetric(m, c.series, c.labels...); v != c.want {
					problems = append(problems, fmt.Sprintf("%s%v = %v, want %v", c.series, c.labels, v, c.want))
				}
			}
			return problems
		})
		if t.Failed() {
			t.Logf("metrics:\n%s", grepLines(m, "oauthproxy_mail_"))
		}
	})

	t.Run("session log and canaries", func(t *testing.T) {
		eventually(t, func() (problems []string) {
			var ok, denied int
			for _, rec := range p.logLines("mail session") {
				for _, k := range []string{"listener", "protocol", "client", "result", "duration_ms"} {
					if _, has := rec[k]; !has {
						problems = append(problems, fmt.Sprintf("mail session line without %s: %v", k, rec))
					}
				}
				switch rec["result"] {
				case "ok":
					ok++
					if _, has := rec["bytes_in"]; !has {
						problems = append(problems, fmt.Sprintf("ok session without bytes_in: %v", rec))
					}
				case "denied":
					denied++
					if rec["account"] != nil && rec["account"] != mailBox {
						problems = append(problems, fmt.Sprintf("a denied session names account %v", rec["account"]))
					}
				}
			}
			if ok != 113 || denied != 6 {
				problems = append(problems, fmt.Sprintf("%d ok and %d denied session lines, want 113 and 6", ok, denied))
			}
			return problems
		})
		noLeak(t, "the proxy's output", p.out.String())
	})

	t.Run("reload and drain", func(t *testing.T) {
		testMailReloadDrain(t, ms, idps["mail"])
	})
}

// eventually retries check for up to 5 s until it finds no problem, and
// fails with the problems it found last.
func eventually(t *testing.T, check func() []string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		problems := check()
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range problems {
				t.Error(p)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// testMailReloadDrain runs a proxy of its own on a config file: a changed
// password applies at once on SIGHUP, a changed listener is reported as
// needing a restart, and SIGTERM lets a logged-in session finish.
func testMailReloadDrain(t *testing.T, ms *mailServers, idp *mailIdP) {
	secret := randomString("cs-mail-")
	pw1, pw2 := randomString("pw-mail-1-"), randomString("pw-mail-2-")
	addCanary(secret, pw1, pw2)
	l := mailListen{"imap", freeAddr(t), ms.imaps, "implicit", "xoauth2", true, ""}
	write := func(pw, mech string) string {
		l := l
		l.mech = mech
		cfg := mailConfig(ms.caFile, secret, pw, map[string]string{"mail": idp.URL},
			map[string]string{mailBox: "mail"}, []mailListen{l})
		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	path := write(pw1, "xoauth2")
	p := start(t, quickExit(), "run", "-config", path)
	p.waitServing()
	// Later configs replace the file whole, as an editor's rename does.
	replace := func(pw, mech string) {
		if err := os.Rename(write(pw, mech), path); err != nil {
			t.Fatal(err)
		}
	}
	login := func(pw string) string {
		c := dialMail(t, l.listen)
		got := mailLogin(c, "imap", mailBox, pw)
		if strings.HasPrefix(got, "a1 OK") {
			c.imapDo("z", "LOGOUT")
		}
		return got
	}
	waitLines := func(msg string, n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(p.logLines(msg)) < n {
			if time.Now().After(deadline) {
				t.Fatalf("no log line %q within 10s", msg)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// A session logged in before everything that follows.
	kept := dialMail(t, l.listen)
	if got := mailLogin(kept, "imap", mailBox, pw1); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("login: %q", got)
	}

	// A new password applies without a restart.
	reloads := len(p.logLines("config reloaded"))
	replace(pw2, "xoauth2")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitLines("config reloaded", reloads+1)
	if got := login(pw1); !strings.HasPrefix(got, "a1 NO [AUTHENTICATIONFAILED]") {
		t.Errorf("the old password after the reload: %q", got)
	}
	if got := login(pw2); !strings.HasPrefix(got, "a1 OK") {
		t.Errorf("the new password after the reload: %q", got)
	}

	// A changed listener is reported; the running one goes on as it was.
	replace(pw2, "oauthbearer")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitLines("config: mail.listeners changed; that applies after a restart", 1)
	if got := login(pw2); !strings.HasPrefix(got, "a1 OK") {
		t.Errorf("login after a listener change: %q", got)
	}

	// SIGTERM: no new sessions, one waiting for a login is hung up on,
	// the logged-in one is served to its end, then the process exits.
	waiting := dialMail(t, l.listen)
	waiting.expect("* OK")
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitLines("shutting down", 1)
	waiting.until("* BYE")
	waiting.closed()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", l.listen, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("%s still takes connections 5s after SIGTERM", l.listen)
		}
		time.Sleep(20 * time.Millisecond)
	}
	kept.imapDo("n1", "NOOP")
	select {
	case <-p.done:
		t.Fatalf("oauthproxy exited with a session still logged in")
	default:
	}
	kept.imapDo("z", "LOGOUT")
	kept.closed()
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code %d after the drain, want 0", code)
	}
	if len(p.logLines("stopped")) != 1 {
		t.Errorf("no \"stopped\" log line")
	}
	noLeak(t, "the proxy's output", p.out.String())
}

// testMailPipelinedSTARTTLS: a client that sends its login in the same
// packet as STARTTLS (the CVE-2011-0411 class: a man in the middle injects
// the plaintext, the server runs it as if it came over TLS) is refused and
// hung up on, with no token fetched and nothing sent to the server; the
// same account then logs in after a proper handshake. addrs are STARTTLS
// listeners (towards the client) by protocol.
func testMailPipelinedSTARTTLS(t *testing.T, p *proc, idp *mailIdP, password string, ca *pki, addrs map[string]string) {
	const user = "pipelined@example.com"
	type step struct{ send, want string }
	tests := []struct {
		proto     string
		greet     []step // before STARTTLS
		starttls  string
		ready     string // the answer that starts the handshake
		pipelined string // what follows STARTTLS in the same write
		refused   string
		reason    string
		login     []step // after the handshake; the last one logs in
		quit      string
	}{
		{
			proto: "imap", greet: []step{{"", "* OK"}}, starttls: "a STARTTLS", ready: "a OK",
			pipelined: fmt.Sprintf("b LOGIN %q %q", user, password),
			refused:   "a BAD ", reason: "client: command pipelined after STARTTLS",
			login: []step{{fmt.Sprintf("b LOGIN %q %q", user, password), "b OK"}}, quit: "z LOGOUT",
		},
		{
			proto: "pop3", greet: []step{{"", "+OK"}}, starttls: "STLS", ready: "+OK",
			pipelined: "USER " + user + "\r\nPASS " + password,
			refused:   "-ERR ", reason: "client: command pipelined after STLS",
			login: []step{{"USER " + user, "+OK"}, {"PASS " + password, "+OK"}}, quit: "QUIT",
		},
		{
			proto: "smtp", greet: []step{{"", "220 "}, {"EHLO client.test", "250 "}}, starttls: "STARTTLS", ready: "220 ",
			pipelined: "AUTH PLAIN " + saslPlain(user, password),
			refused:   "554 ", reason: "client: command pipelined after STARTTLS",
			login: []step{{"EHLO client.test", "250 "}, {"AUTH PLAIN " + saslPlain(user, password), "235 "}}, quit: "QUIT",
		},
	}
	// run sends each step's line and reads its answer, which must start
	// with want; SMTP continuation lines and IMAP untagged ones come first.
	run := func(c *mailConn, steps []step) {
		c.t.Helper()
		for _, st := range steps {
			if st.send != "" {
				c.send(st.send)
			}
			for {
				l := c.line()
				if len(l) > 3 && l[0] >= '2' && l[0] <= '5' && l[3] == '-' ||
					strings.HasPrefix(l, "* ") && !strings.HasPrefix(st.want, "* ") {
					continue
				}
				if !strings.HasPrefix(l, st.want) {
					c.t.Fatalf("after %q: %q, want %q...", strings.Fields(st.send + " greeting")[0], l, st.want)
				}
				break
			}
		}
	}

	// The proxy fetched the entry's token at start-up; logins use it.
	tokens, logins := idp.hits.Load(), idp.logins()
	for _, tc := range tests {
		t.Run(tc.proto+" pipelined", func(t *testing.T) {
			c := dialMail(t, addrs[tc.proto])
			run(c, tc.greet)
			if _, err := io.WriteString(c.conn, tc.starttls+"\r\n"+tc.pipelined+"\r\n"); err != nil {
				t.Fatal(err)
			}
			c.expect(tc.refused)
			// Nothing more: no TLS, and no answer to the login.
			rest, err := io.ReadAll(c.r)
			if err != nil {
				t.Fatalf("waiting for the end of the connection: %v", err)
			}
			if len(rest) > 0 {
				t.Fatalf("after the refusal the proxy sent %q, want nothing and a hang-up", rest)
			}
		})
	}
	if n := idp.logins() - logins; n != 0 {
		t.Errorf("logins at the server after the pipelined ones = %d, want 0", n)
	}
	eventually(t, func() (problems []string) {
		for _, tc := range tests {
			if !slices.ContainsFunc(p.logLines("mail session"), func(rec map[string]any) bool {
				return rec["listener"] == addrs[tc.proto] && rec["result"] == "abandoned" && rec["reason"] == tc.reason
			}) {
				problems = append(problems, fmt.Sprintf("%s: no mail session line with result abandoned and reason %q", tc.proto, tc.reason))
			}
		}
		return problems
	})

	// The listeners and the account work: STARTTLS, the handshake, then
	// the login.
	for _, tc := range tests {
		t.Run(tc.proto+" after the handshake", func(t *testing.T) {
			c := dialMail(t, addrs[tc.proto])
			run(c, tc.greet)
			c.send(tc.starttls)
			c.expect(tc.ready)
			tc2 := tls.Client(c.conn, &tls.Config{RootCAs: ca.pool(), ServerName: "127.0.0.1"})
			if err := tc2.Handshake(); err != nil {
				t.Fatalf("TLS handshake after %s: %v", tc.starttls, err)
			}
			c = &mailConn{t: t, conn: tc2, r: bufio.NewReader(tc2)}
			run(c, tc.login)
			c.send(tc.quit)
			c.closed()
		})
	}
	if n := idp.logins() - logins; n != 3 {
		t.Errorf("logins at the server = %d, want 3: those after a handshake", n)
	}
	if n := idp.hits.Load() - tokens; n != 0 {
		t.Errorf("token requests = %d, want 0: the token fetched at start-up serves all", n)
	}
}

// TestMailBench measures the mail listeners of the built binary against
// the same servers straight (docs/benchmarks.md, "Mail"): a 20 MiB IMAP
// FETCH and a 20 MiB SMTP DATA, in alternating order for several rounds,
// and the proxy's resident memory with 100 idle logged-in IMAP sessions.
// A benchmark, so only on request, and without -race:
//
//	OAUTHPROXY_REQUIRE_SERVERS=1 OAUTHPROXY_MAIL_BENCH=1 go test ./e2e -run TestMailBench -count=1 -v
func TestMailBench(t *testing.T) {
	if os.Getenv("OAUTHPROXY_MAIL_BENCH") == "" {
		t.Skip("a benchmark: set OAUTHPROXY_MAIL_BENCH=1 to run it")
	}
	if raceEnabled {
		t.Skip("a benchmark: run it without -race")
	}
	const rounds, size, sessions = 15, 20 << 20, 100
	ms := startMailServers(t)
	idp := ms.newIdP(t, "")
	secret, password := randomString("cs-mail-"), randomString("pw-mail-")
	addCanary(secret, password)
	config := func(ls ...mailListen) string {
		// As shipped: info, not the debug of the other tests.
		return strings.Replace(mailConfig(ms.caFile, secret, password, map[string]string{"mail": idp.URL},
			map[string]string{mailBox: "mail"}, ls), "level: debug", "level: info", 1)
	}
	imapL := mailListen{"imap", freeAddr(t), ms.imaps, "implicit", "xoauth2", true, ""}
	smtpL := mailListen{"smtp", freeAddr(t), ms.smtps, "implicit", "xoauth2", true, ""}
	p := startProxy(t, config(imapL, smtpL))

	caPEM, err := os.ReadFile(ms.caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	ir := base64.StdEncoding.EncodeToString([]byte("user=" + mailBox + "\x01auth=Bearer " + idp.issue() + "\x01\x01"))
	// direct logs in at the server itself, over TLS as the proxy does.
	direct := func(proto string) *mailConn {
		conn, err := tls.Dial("tcp", map[string]string{"imap": ms.imaps, "smtp": ms.smtps}[proto], &tls.Config{RootCAs: roots})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		c := &mailConn{t: t, conn: conn, r: bufio.NewReader(conn)}
		if proto == "imap" {
			c.expect("* OK")
			c.send("a1 AUTHENTICATE XOAUTH2 " + ir)
			c.expect("a1 OK")
		} else {
			c.expect("220 ")
			c.send("EHLO bench.test")
			c.until("250 ")
			c.send("AUTH XOAUTH2 " + ir)
			c.expect("235 ")
		}
		return c
	}
	// proxied logs in through the listener, with no TLS on loopback as
	// the clients the listeners are for.
	proxied := func(l mailListen) *mailConn {
		c := dialMail(t, l.listen)
		if got := mailLogin(c, l.proto, mailBox, password); !strings.HasPrefix(got, mailAnswers[l.proto].ok) {
			t.Fatalf("%s login through the proxy: %q", l.proto, got)
		}
		return c
	}

	msg := bigMailMessage(randomString(""), size)
	setup := direct("imap")
	setup.conn.SetDeadline(time.Now().Add(10 * time.Minute))
	uid := imapAppendFetch(setup, msg)
	fetch := func(c *mailConn, tag string) {
		c.send(fmt.Sprintf("%s UID FETCH %d BODY.PEEK[]", tag, uid))
		head := c.expect("* ")
		var n int64
		if _, err := fmt.Sscanf(head[max(strings.LastIndexByte(head, '{'), 0):], "{%d}", &n); err != nil || n != size {
			t.Fatalf("FETCH answer %q: %d bytes, %v", head, n, err)
		}
		if _, err := io.CopyN(io.Discard, c.r, n); err != nil {
			t.Fatal(err)
		}
		c.until(tag + " OK")
	}
	delivered := 0
	data := func(c *mailConn, _ string) {
		c.send("MAIL FROM:<box@example.com>", "RCPT TO:<box@example.com>", "DATA")
		c.expect("250 ")
		c.expect("250 ")
		c.expect("354 ")
		if _, err := c.conn.Write(append(msg, ".\r\n"...)); err != nil {
			t.Fatal(err)
		}
		c.expect("250 ")
		// Postfix delivers after its 250: wait for that, so that the
		// next round does not share the machine with it.
		delivered++
		deadline := time.Now().Add(time.Minute)
		for {
			files, _ := filepath.Glob(filepath.Join(ms.delivered, "new", "*"))
			if len(files) >= delivered {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("message %d not delivered within a minute", delivered)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	for _, bench := range []struct {
		name string
		l    mailListen
		op   func(c *mailConn, tag string)
	}{
		{"IMAP FETCH 20 MiB", imapL, fetch},
		{"SMTP DATA 20 MiB", smtpL, data},
	} {
		// A second direct session is the control: how far it lands from
		// the first is the noise of the run.
		conns := []*mailConn{direct(bench.l.proto), proxied(bench.l), direct(bench.l.proto)}
		for _, c := range conns {
			c.conn.SetDeadline(time.Now().Add(10 * time.Minute))
			if bench.l.proto == "imap" {
				c.imapDo("s", "SELECT INBOX")
			}
			bench.op(c, "w") // warm up: caches, TLS, buffers
		}
		secs := make([][]float64, len(conns))    // by connection, by round
		cpu := make([]time.Duration, len(conns)) // this process and oauthproxy, all rounds
		var proxy, control []float64             // per-round ratios to the first direct session
		for i := range rounds {
			for k := range conns { // each goes first in turn
				j := (i + k) % len(conns)
				cpu0 := cpuTime(t, os.Getpid()) + cpuTime(t, p.cmd.Process.Pid)
				start := time.Now()
				bench.op(conns[j], fmt.Sprintf("f%d", i))
				secs[j] = append(secs[j], time.Since(start).Seconds())
				cpu[j] += cpuTime(t, os.Getpid()) + cpuTime(t, p.cmd.Process.Pid) - cpu0
			}
			proxy = append(proxy, secs[1][i]/secs[0][i])
			control = append(control, secs[2][i]/secs[0][i])
		}
		t.Logf("%s, %d rounds: medians direct %.0f ms, proxy %.0f ms, direct again %.0f ms; per-round ratios to direct: proxy %.2f [%.2f..%.2f], direct again %.2f [%.2f..%.2f]",
			bench.name, rounds, 1000*median(secs[0]), 1000*median(secs[1]), 1000*median(secs[2]),
			median(proxy), slices.Min(proxy), slices.Max(proxy), median(control), slices.Min(control), slices.Max(control))
		// CPU does not depend on who else has the cores: the client's and
		// the proxy's, Dovecot's and Postfix's left out (the same either way).
		t.Logf("%s: CPU per operation, client and oauthproxy: direct %.0f ms, proxy %.0f ms, direct again %.0f ms",
			bench.name, millis(cpu[0])/rounds, millis(cpu[1])/rounds, millis(cpu[2])/rounds)
	}

	// Memory: a fresh process with one listener, as after a restart.
	ml := mailListen{"imap", freeAddr(t), ms.imaps, "implicit", "xoauth2", true, ""}
	mp := startProxy(t, config(ml))
	if got, err := tryMailLogin(ml.listen, "imap", mailBox, password); err != nil || !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("login: %q %v", got, err)
	}
	before := vmKiB(t, mp.cmd.Process.Pid, "VmRSS")
	conns := make([]net.Conn, sessions)
	answers := concurrently(sessions, func(i int) (string, error) {
		conn, err := net.DialTimeout("tcp", ml.listen, 5*time.Second)
		if err != nil {
			return "", err
		}
		conns[i] = conn
		conn.SetDeadline(time.Now().Add(time.Minute))
		r := bufio.NewReader(conn)
		got, err := loginOn(conn, r, "imap", mailBox, password)
		if err == nil && strings.HasPrefix(got, "a1 OK") {
			io.WriteString(conn, "s SELECT INBOX\r\n")
			for err == nil && !strings.HasPrefix(got, "s ") {
				got, err = r.ReadString('\n')
			}
		}
		return got, err
	})
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	for _, a := range answers {
		if !strings.HasPrefix(a, "s OK") {
			t.Fatalf("an idle session did not get to SELECT: %q", a)
		}
	}
	time.Sleep(2 * time.Second) // idle: whatever the logins left behind settles
	after := vmKiB(t, mp.cmd.Process.Pid, "VmRSS")
	pid := mp.cmd.Process.Pid
	t.Logf("RSS of oauthproxy: %.1f MiB with no session, %.1f MiB with %d idle logged-in IMAP sessions (%.0f KiB each; anonymous %.1f MiB, file %.1f MiB); peak %.1f MiB",
		float64(before)/1024, float64(after)/1024, sessions, float64(after-before)/sessions,
		float64(vmKiB(t, pid, "RssAnon"))/1024, float64(vmKiB(t, pid, "RssFile"))/1024, float64(vmKiB(t, pid, "VmHWM"))/1024)
	t.Logf("%s, %d CPUs, load %s", runtime.Version(), runtime.NumCPU(), loadAvg())
}

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// vmKiB is a line of /proc/PID/status in kB (VmRSS, VmHWM, RssAnon), in KiB.
func vmKiB(t *testing.T, pid int, key string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatalf("%s: %q: %v", key, l, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cpuTime is the user and system CPU time process pid has used, all its
// threads, to the clock tick (10 ms).
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are the 12th and 13th.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
