package mail

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/template"
	"time"

	"go.uber.org/goleak"
)

// The real servers of the end-to-end tests: Dovecot (IMAP, POP3, and the
// SASL service Postfix asks) and Postfix (submission on 587 with STARTTLS
// and 465 with implicit TLS), started once for the package in a private
// directory on free loopback ports, as root with a config of their own.
// Dovecot checks tokens with passdb oauth2 against a token-info endpoint
// the test runs, so that a test decides which tokens the server takes.

// mailbox is the one mailbox the servers have.
const mailbox = "box@example.com"

type realServers struct {
	dir                      string
	imap, imaps, pop3, pop3s string
	submission, smtps        string
	maildir                  string // Dovecot's Maildir of mailbox
	delivered                string // where Postfix delivers (a Maildir)

	tokeninfo *httptest.Server
	hits      atomic.Int64 // token-info requests: one per login at the server
	mu        sync.Mutex
	valid     func(token string) bool

	procs []*exec.Cmd
	logs  []string // files to show when a test fails
}

// accept sets which tokens the servers take; nil takes any.
func (rs *realServers) accept(valid func(token string) bool) {
	rs.mu.Lock()
	rs.valid = valid
	rs.mu.Unlock()
}

var (
	serversOnce sync.Once
	servers     *realServers
	serversErr  error
)

// TestMain stops the real servers after the package's tests, and fails
// the package if a test left goroutines behind (a relay that never ends,
// a login stuck on a closed server).
func TestMain(m *testing.M) {
	code := m.Run()
	if servers != nil {
		servers.stop()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// needServers returns the running servers, starting them on first use.
// Without the binaries (or without root, which Postfix needs) the test is
// skipped, unless OAUTHPROXY_REQUIRE_SERVERS is set (as in CI): then it
// fails.
func needServers(t testing.TB) *realServers {
	t.Helper()
	var missing []string
	for _, bin := range []string{"dovecot", "postfix"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if _, err := os.Stat(postfixMaster); err != nil {
		missing = append(missing, postfixMaster)
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
	serversOnce.Do(func() { servers, serversErr = startServers() })
	if serversErr != nil {
		t.Fatalf("starting Dovecot and Postfix: %v", serversErr)
	}
	servers.accept(nil)
	t.Cleanup(func() {
		if t.Failed() {
			servers.showLogs(t)
		}
	})
	return servers
}

const postfixMaster = "/usr/lib/postfix/sbin/master"

func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func startServers() (rs *realServers, err error) {
	// A short directory: Dovecot's sockets live under it (108-byte limit).
	dir, err := os.MkdirTemp("", "mailtest")
	if err != nil {
		return nil, err
	}
	rs = &realServers{dir: dir}
	defer func() {
		if err != nil {
			rs.stop()
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil { // the servers' users traverse it
		return nil, err
	}
	rs.tokeninfo = httptest.NewServer(http.HandlerFunc(rs.serveTokeninfo))
	ports, err := freePorts(7)
	if err != nil {
		return nil, err
	}
	addr := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	rs.imap, rs.imaps, rs.pop3, rs.pop3s = addr(ports[0]), addr(ports[1]), addr(ports[2]), addr(ports[3])
	rs.submission, rs.smtps = addr(ports[4]), addr(ports[5])
	c := testCerts(nil)
	files := map[string][]byte{"cert.pem": c.certPEM, "key.pem": c.keyPEM}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return nil, err
		}
	}
	nobody := "nobody"
	for _, d := range []string{"mail", "vmail", "postfix/queue", "postfix/data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	chown := func(path, user string) error {
		out, err := exec.Command("chown", "-R", user, path).CombinedOutput()
		if err != nil {
			return fmt.Errorf("chown %s %s: %v: %s", user, path, err, out)
		}
		return nil
	}
	if err := chown(filepath.Join(dir, "mail"), nobody+":nogroup"); err != nil {
		return nil, err
	}
	if err := chown(filepath.Join(dir, "vmail"), nobody+":nogroup"); err != nil {
		return nil, err
	}
	if err := chown(filepath.Join(dir, "postfix/data"), "postfix"); err != nil {
		return nil, err
	}
	rs.maildir = filepath.Join(dir, "mail", mailbox)
	rs.delivered = filepath.Join(dir, "vmail", "box")
	vars := map[string]any{
		"Dir": dir, "Tokeninfo": rs.tokeninfo.URL,
		"IMAP": ports[0], "IMAPS": ports[1], "POP3": ports[2], "POP3S": ports[3],
		"Submission": ports[4], "SMTPS": ports[5], "Auth": ports[6],
	}
	for name, tmpl := range map[string]string{
		"dovecot.conf": "dovecot.conf.tmpl", "oauth2.conf": "oauth2.conf.tmpl",
		"postfix/main.cf": "postfix-main.cf.tmpl", "postfix/master.cf": "postfix-master.cf.tmpl",
	} {
		tp, err := template.ParseFiles(filepath.Join("testdata", tmpl))
		if err != nil {
			return nil, err
		}
		var b bytes.Buffer
		if err := tp.Execute(&b, vars); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			return nil, err
		}
	}

	dovecotLog := filepath.Join(dir, "dovecot.log")
	rs.logs = append(rs.logs, dovecotLog)
	if err := rs.run(dovecotLog, "dovecot", "-F", "-c", filepath.Join(dir, "dovecot.conf")); err != nil {
		return nil, err
	}
	for _, a := range []string{rs.imap, rs.imaps, rs.pop3, rs.pop3s, addr(ports[6])} {
		if err := waitListening(a); err != nil {
			return nil, fmt.Errorf("dovecot: %w", err)
		}
	}

	pfDir := filepath.Join(dir, "postfix")
	// "postfix check" makes the queue's directories with their owners.
	if out, err := exec.Command("postfix", "-c", pfDir, "check").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("postfix check: %v: %s", err, out)
	}
	postfixLog := filepath.Join(dir, "postfix.log")
	rs.logs = append(rs.logs, postfixLog)
	// master -d stays in the foreground, so the test owns it.
	if err := rs.run(postfixLog, postfixMaster, "-c", pfDir, "-d"); err != nil {
		return nil, err
	}
	for _, a := range []string{rs.submission, rs.smtps} {
		if err := waitListening(a); err != nil {
			return nil, fmt.Errorf("postfix: %w", err)
		}
	}
	return rs, nil
}

// run starts a server in the foreground, its output to logFile.
func (rs *realServers) run(logFile, name string, args ...string) error {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %w", name, err)
	}
	f.Close()
	rs.procs = append(rs.procs, cmd)
	return nil
}

// waitListening waits up to 15s for a server to take connections.
func waitListening(addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after 15s: %w", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (rs *realServers) stop() {
	for i := len(rs.procs) - 1; i >= 0; i-- {
		p := rs.procs[i]
		p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			// Its own process group only: the master and its children.
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	if rs.tokeninfo != nil {
		rs.tokeninfo.Close()
	}
	if os.Getenv("MAILTEST_KEEP") == "" { // keep the servers' logs and mail to look at
		os.RemoveAll(rs.dir)
	}
}

func (rs *realServers) showLogs(t testing.TB) {
	for _, f := range rs.logs {
		b, _ := os.ReadFile(f)
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		t.Logf("%s (end):\n%s", filepath.Base(f), b)
	}
}

// serveTokeninfo is the token-info endpoint Dovecot's passdb oauth2 asks:
// a valid token names the mailbox, any other gets 401.
func (rs *realServers) serveTokeninfo(w http.ResponseWriter, r *http.Request) {
	rs.hits.Add(1)
	tok := r.URL.Query().Get("access_token")
	rs.mu.Lock()
	valid := rs.valid
	rs.mu.Unlock()
	if tok == "" || valid != nil && !valid(tok) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{"email": mailbox})
}

// maildirFiles lists the messages in a Maildir's new and cur.
func maildirFiles(dir string) []string {
	var files []string
	for _, sub := range []string{"new", "cur"} {
		m, _ := filepath.Glob(filepath.Join(dir, sub, "*"))
		files = append(files, m...)
	}
	return files
}
