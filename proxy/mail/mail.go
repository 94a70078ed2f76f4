// Package mail lets clients that only know a name and a password use mail
// servers that want OAuth 2.0: it listens for IMAP, POP3 or SMTP, runs the
// pre-login part of the protocol itself, checks the client's password
// against the account's, logs in to the real server with SASL XOAUTH2 or
// OAUTHBEARER (RFC 7628) using the account's token, and from then on relays
// bytes both ways untouched.
//
// The package knows nothing of YAML or of how tokens are obtained: it asks
// a TokenSource, which tokencache.Source satisfies.
package mail

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// TokenSource is what a mail account needs of a token cache; it is the
// same as proxy.TokenSource, so one cache serves both.
type TokenSource interface {
	// Token returns the access token to log in with; it may wait for a
	// fetch. Its error's message may reach the log, never the token.
	Token(ctx context.Context) (string, error)
	// Invalidate drops token if it is still the current one: the server
	// rejected it.
	Invalidate(token string)
}

// Account is what a login name opens: whose token, for which mailbox.
type Account struct {
	// User is the mailbox named to the server; "" is the login name.
	User string
	// Password is what the client must send, compared in constant time.
	// Nil accepts any password, and only on a loopback address.
	Password []byte
	// OAuth2 names the token's oauth2 entry, for the log.
	OAuth2 string
	Tokens TokenSource
}

// Protocol is the mail protocol a Listener speaks.
type Protocol string

// The protocols: IMAP4rev1 (RFC 3501), POP3 (RFC 1939), SMTP submission
// (RFC 6409).
const (
	IMAP Protocol = "imap"
	POP3 Protocol = "pop3"
	SMTP Protocol = "smtp"
)

// TLSMode is how a side of the proxy starts TLS.
type TLSMode string

const (
	// Implicit: TLS from the first byte (IMAPS 993, POP3S 995, SMTPS 465).
	Implicit TLSMode = "implicit"
	// StartTLS: plaintext greeting, then STARTTLS (STLS in POP3).
	StartTLS TLSMode = "starttls"
	// NoTLS: plaintext throughout; to the server, loopback only.
	NoTLS TLSMode = "none"
)

// ServerTLS is how the proxy reaches the server.
type ServerTLS struct {
	Mode TLSMode // required
	// Config verifies the server's certificate; nil is the system roots.
	// An empty ServerName is the host of Listener.Server.
	Config *tls.Config
}

// ClientTLS is TLS towards clients, for the ones that insist.
type ClientTLS struct {
	Mode   TLSMode // Implicit or StartTLS
	Config *tls.Config
}

// Session results, for logs and oauthproxy_mail_sessions_total.
const (
	ResultOK          = "ok"          // logged in; bytes were relayed
	ResultDenied      = "denied"      // unknown account or wrong password: the server was not contacted
	ResultRejected    = "rejected"    // the server refused the token, twice or with no fresh one to try
	ResultUnavailable = "unavailable" // no token, server unreachable, TLS failed: a temporary failure
	ResultAbandoned   = "abandoned"   // the client left or misbehaved before logging in
)

// Outcome is what became of one client session, handed to
// Listener.Observe when it ends. It holds nothing secret.
type Outcome struct {
	Listener string
	Protocol Protocol
	Client   string // the client's address
	// Account is the login name when it names an account; a name that
	// does not is left out (people type passwords into name fields).
	Account string
	OAuth2  string
	Result  string
	// Reason says why, when Result is not ok; safe to log.
	Reason   string
	Start    time.Time
	Duration time.Duration
	// AuthDuration runs from the client's login to the server's verdict,
	// token waits included; 0 when no login reached the token source.
	AuthDuration time.Duration
	Retried      bool  // the server rejected a token and a fresh one was tried
	BytesIn      int64 // relayed from the client to the server after login
	BytesOut     int64 // relayed from the server to the client after login
}

// Listener serves one mail protocol on one or more net.Listeners, logging
// in to one server. Set its fields, then call Serve; do not change them
// after. Safe for concurrent use.
type Listener struct {
	Protocol Protocol
	// Name labels logs and metrics: the configured listen address.
	// "" is the net.Listener's address.
	Name      string
	Server    string // host:port
	ServerTLS ServerTLS
	Mechanism Mechanism // "" is XOAUTH2
	ClientTLS *ClientTLS
	// Accounts looks a login name up; it must be safe for concurrent use.
	Accounts func(login string) (*Account, bool)

	Logger *slog.Logger // nil: slog.Default()
	Meter  metric.Meter // nil: no metrics
	// Observe, when set, is handed every session's Outcome at its end.
	Observe func(*Outcome)

	// Hostname is the name in greetings and in EHLO to the server; ""
	// is the machine's host name.
	Hostname string
	// LoginTimeout bounds each client command before login, and the
	// whole login at the server (token wait included); 0 is 60s.
	LoginTimeout time.Duration
	// IdleTimeout closes a logged-in session with no bytes either way
	// for this long; 0 is 30 minutes (RFC 2177 asks at least 29 for IDLE).
	IdleTimeout time.Duration
	// DialTimeout bounds connecting to the server; 0 is 10s.
	DialTimeout time.Duration
	// FailureDelay is waited before answering a refused login, to slow
	// password guessing; 0 is 1s, negative is none.
	FailureDelay time.Duration

	initOnce sync.Once
	initErr  error
	log      *slog.Logger
	met      *metrics
	host     string // Server's host
	port     string
	toServer *tls.Config
	hostname string

	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	sessions map[*session]struct{}
	closing  bool
	done     chan struct{} // closed by Shutdown and Close
	wg       sync.WaitGroup
	active   atomic.Int64
}

// ErrListenerClosed is what Serve returns after Shutdown or Close.
var ErrListenerClosed = errors.New("mail: listener closed")

func (l *Listener) init() error {
	l.initOnce.Do(func() { l.initErr = l.setup() })
	return l.initErr
}

func (l *Listener) setup() error {
	switch l.Protocol {
	case IMAP, POP3, SMTP:
	default:
		return fmt.Errorf("mail listener: protocol %q is not imap, pop3 or smtp", l.Protocol)
	}
	switch l.Mechanism {
	case "":
		l.Mechanism = XOAUTH2
	case XOAUTH2, OAUTHBEARER:
	default:
		return fmt.Errorf("mail listener: mechanism %q is not xoauth2 or oauthbearer", l.Mechanism)
	}
	host, port, err := net.SplitHostPort(l.Server)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("mail listener: server %q is not host:port", l.Server)
	}
	l.host, l.port = host, port
	switch l.ServerTLS.Mode {
	case Implicit, StartTLS:
		cfg := &tls.Config{}
		if l.ServerTLS.Config != nil {
			cfg = l.ServerTLS.Config.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
		l.toServer = cfg
	case NoTLS:
		// A token in plaintext over a network is a token given away.
		if !isLoopbackHost(host) {
			return fmt.Errorf("mail listener: server_tls mode none is for loopback servers only, not %q", host)
		}
	default:
		return fmt.Errorf("mail listener: server_tls mode %q is not implicit, starttls or none", l.ServerTLS.Mode)
	}
	if c := l.ClientTLS; c != nil {
		if c.Mode != Implicit && c.Mode != StartTLS {
			return fmt.Errorf("mail listener: client tls mode %q is not implicit or starttls", c.Mode)
		}
		if c.Config == nil {
			return errors.New("mail listener: client tls without a certificate")
		}
	}
	if l.Accounts == nil {
		return errors.New("mail listener: no accounts")
	}
	l.log = l.Logger
	if l.log == nil {
		l.log = slog.Default()
	}
	if l.met, err = newMetrics(l.Meter); err != nil {
		return fmt.Errorf("mail listener: metrics: %w", err)
	}
	l.hostname = l.Hostname
	if l.hostname == "" {
		if l.hostname, _ = os.Hostname(); l.hostname == "" {
			l.hostname = "localhost"
		}
	}
	l.lns = map[net.Listener]struct{}{}
	l.sessions = map[*session]struct{}{}
	l.done = make(chan struct{})
	return nil
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

func (l *Listener) loginTimeout() time.Duration { return orDefault(l.LoginTimeout, 60*time.Second) }
func (l *Listener) idleTimeout() time.Duration  { return orDefault(l.IdleTimeout, 30*time.Minute) }
func (l *Listener) dialTimeout() time.Duration  { return orDefault(l.DialTimeout, 10*time.Second) }

func (l *Listener) failureDelay() time.Duration {
	if l.FailureDelay < 0 {
		return 0
	}
	return orDefault(l.FailureDelay, time.Second)
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Serve accepts connections on ln until Shutdown or Close, and then
// returns ErrListenerClosed; ln is closed when Serve returns. It may be
// called for several net.Listeners at once.
func (l *Listener) Serve(ln net.Listener) error {
	if err := l.init(); err != nil {
		ln.Close()
		return err
	}
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		ln.Close()
		return ErrListenerClosed
	}
	l.lns[ln] = struct{}{}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.lns, ln)
		l.mu.Unlock()
		ln.Close()
	}()
	name := l.Name
	if name == "" {
		name = ln.Addr().String()
	}
	var pause time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return ErrListenerClosed
			default:
			}
			// Out of file descriptors and the like: wait and go on,
			// as net/http does.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				l.log.Warn("mail: accepting a connection", "listener", name, "error", err, "retry_in", pause)
				select {
				case <-time.After(pause):
				case <-l.done:
					return ErrListenerClosed
				}
				continue
			}
			return fmt.Errorf("mail listener %s: accepting: %w", name, err)
		}
		pause = 0
		s := newSession(l, c, name)
		if !l.track(s) {
			c.Close()
			return ErrListenerClosed
		}
		go s.serve()
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// track registers a session; false when the listener is closing.
func (l *Listener) track(s *session) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return false
	}
	l.sessions[s] = struct{}{}
	l.wg.Add(1)
	l.active.Add(1)
	return true
}

func (l *Listener) untrack(s *session) {
	l.mu.Lock()
	delete(l.sessions, s)
	l.mu.Unlock()
	l.active.Add(-1)
	l.wg.Done()
}

// Sessions is the number of client sessions open now.
func (l *Listener) Sessions() int { return int(l.active.Load()) }

// Shutdown stops accepting, hangs up on clients that have not logged in
// (they are waiting for nothing the server has), and waits for logged-in
// sessions to end. When ctx ends first it closes them and returns
// ctx.Err().
func (l *Listener) Shutdown(ctx context.Context) error {
	if err := l.init(); err != nil {
		return err
	}
	l.stop()
	l.mu.Lock()
	for s := range l.sessions {
		s.stopIfIdle()
	}
	l.mu.Unlock()
	idle := make(chan struct{})
	go func() { l.wg.Wait(); close(idle) }()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		l.Close()
		<-idle
		return ctx.Err()
	}
}

// Close stops accepting and closes every session at once.
func (l *Listener) Close() error {
	if err := l.init(); err != nil {
		return err
	}
	l.stop()
	l.mu.Lock()
	for s := range l.sessions {
		s.close()
	}
	l.mu.Unlock()
	return nil
}

func (l *Listener) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closing {
		l.closing = true
		close(l.done)
	}
	for ln := range l.lns {
		ln.Close()
	}
}

// session is one client connection.
type session struct {
	l      *Listener
	conn   net.Conn      // to the client; a *tls.Conn once TLS is on
	r      *bufio.Reader // reads conn
	secure bool          // conn is TLS
	out    Outcome
	errs   int // malformed or refused commands so far

	mu       sync.Mutex
	server   net.Conn // once logged in
	loggedIn bool     // past the point where Shutdown waits
	stopped  bool     // Shutdown or Close ran
	hard     bool     // Close ran
	cancel   context.CancelFunc
}

func newSession(l *Listener, c net.Conn, name string) *session {
	s := &session{l: l, conn: c}
	s.out = Outcome{Listener: name, Protocol: l.Protocol, Client: c.RemoteAddr().String(), Start: time.Now(), Result: ResultAbandoned}
	return s
}

// stopIfIdle hangs up on a session that has not logged in, at once if it
// is waiting for the client (its read deadline is the wake-up), else as
// soon as it next waits.
func (s *session) stopIfIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if !s.loggedIn {
		s.conn.SetReadDeadline(time.Now())
	}
}

func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped, s.hard = true, true
	if s.cancel != nil {
		s.cancel()
	}
	s.conn.Close()
	if s.server != nil {
		s.server.Close()
	}
}

// awaitCommand sets the deadline for the client's next command, unless
// the listener is shutting down.
func (s *session) awaitCommand() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.conn.SetReadDeadline(time.Now().Add(s.l.loginTimeout()))
	return true
}

// shuttingDown tells a client waiting before login that the listener is
// going away, when it is.
func (s *session) shuttingDown(line string) {
	s.mu.Lock()
	stopped := s.stopped
	s.mu.Unlock()
	if stopped {
		s.reply(line)
	}
}

// serve runs the session to its end.
func (s *session) serve() {
	defer s.l.untrack(s)
	defer s.finish()
	defer func() {
		s.conn.Close()
		s.mu.Lock()
		if s.server != nil {
			s.server.Close()
		}
		s.mu.Unlock()
	}()
	if c := s.l.ClientTLS; c != nil && c.Mode == Implicit {
		if err := s.startTLS(); err != nil {
			s.out.Reason = err.Error()
			return
		}
	} else {
		s.r = bufio.NewReaderSize(s.conn, 4<<10)
	}
	var sc *serverConn
	switch s.l.Protocol {
	case IMAP:
		sc = s.imap()
	case POP3:
		sc = s.pop3()
	case SMTP:
		sc = s.smtp()
	}
	if sc != nil {
		s.relay(sc)
	}
}

// startTLS makes the client connection TLS. Whatever the client sent
// before the handshake is gone with the old reader: nothing read in
// plaintext is used after it (CVE-2011-0411).
func (s *session) startTLS() error {
	s.conn.SetDeadline(time.Now().Add(s.l.loginTimeout()))
	tc := tls.Server(s.conn, s.l.ClientTLS.Config)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake with the client: %w", err)
	}
	s.conn.SetDeadline(time.Time{})
	s.mu.Lock()
	s.conn = tc
	s.mu.Unlock()
	s.r = bufio.NewReaderSize(tc, 4<<10)
	s.secure = true
	return nil
}

// mayStartTLS: the client may ask for STARTTLS now.
func (s *session) mayStartTLS() bool {
	return s.l.ClientTLS != nil && s.l.ClientTLS.Mode == StartTLS && !s.secure
}

// loginDisabled: the listener wants TLS and the client has not started it,
// so a password must not cross yet.
func (s *session) loginDisabled() bool { return s.mayStartTLS() }

// reply sends lines to the client, each ended with CRLF.
func (s *session) reply(lines ...string) error {
	n := 0
	for _, ln := range lines {
		n += len(ln) + 2
	}
	b := make([]byte, 0, n)
	for _, ln := range lines {
		b = append(b, ln...)
		b = append(b, '\r', '\n')
	}
	s.conn.SetWriteDeadline(time.Now().Add(s.l.loginTimeout()))
	_, err := s.conn.Write(b)
	return err
}

// misbehaved counts a malformed or refused command; true when the client
// has had enough chances.
func (s *session) misbehaved() bool {
	s.errs++
	return s.errs >= maxClientErrors
}

// pipelinedTLS: the client sent more after its STARTTLS line, in
// plaintext; it is refused rather than discarded, as no honest client
// does it.
func (s *session) pipelinedTLS() bool { return s.r.Buffered() > 0 }

func (s *session) finish() {
	o := &s.out
	o.Duration = time.Since(o.Start)
	s.l.met.session(o.Listener, o.Result)
	attrs := []slog.Attr{
		slog.String("listener", o.Listener),
		slog.String("protocol", string(o.Protocol)),
		slog.String("client", o.Client),
		slog.String("result", o.Result),
		slog.Int64("duration_ms", o.Duration.Milliseconds()),
	}
	if o.Account != "" {
		attrs = append(attrs, slog.String("account", o.Account), slog.String("oauth2", o.OAuth2))
	}
	if o.AuthDuration > 0 {
		attrs = append(attrs, slog.Int64("auth_ms", o.AuthDuration.Milliseconds()), slog.Bool("retried", o.Retried))
	}
	if o.Result == ResultOK {
		attrs = append(attrs, slog.Int64("bytes_in", o.BytesIn), slog.Int64("bytes_out", o.BytesOut))
	}
	if o.Reason != "" {
		attrs = append(attrs, slog.String("reason", o.Reason))
	}
	level := slog.LevelInfo
	if o.Result == ResultUnavailable {
		level = slog.LevelWarn
	}
	s.l.log.LogAttrs(context.Background(), level, "mail session", attrs...)
	if s.l.Observe != nil {
		s.l.Observe(o)
	}
}
