package upstreams

import (
	"crypto/tls"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"

	"github.com/oauthproxy/oauthproxy/proxy/mail"
	"github.com/oauthproxy/oauthproxy/tokencache"
)

// Mail is the mail: section: IMAP, POP3 and SMTP listeners for clients
// that only know passwords, logging in to the real server with a token.
type Mail struct {
	// Accounts maps the login name a client sends to whose token opens
	// the mailbox.
	Accounts  map[string]*MailAccount `yaml:"accounts"`
	Listeners []*MailListener         `yaml:"listeners"`
	Pos       Positions               `yaml:"-"`
}

// MailAccount is one login name.
type MailAccount struct {
	OAuth2 string `yaml:"oauth2"`
	// Password is what the client must send; without one any password
	// is taken, on loopback listeners only.
	Password Secret `yaml:"password"`
	// User is the mailbox named to the server (default: the login name).
	User string    `yaml:"user"`
	Pos  Positions `yaml:"-"`
}

// MailListener is one listener and the server behind it.
type MailListener struct {
	Protocol  string         `yaml:"protocol"` // imap | pop3 | smtp
	Listen    string         `yaml:"listen"`
	Server    string         `yaml:"server"` // host:port
	ServerTLS *MailServerTLS `yaml:"server_tls"`
	Mechanism string         `yaml:"mechanism"` // xoauth2 (default) | oauthbearer
	// TLS is the TLS towards the client, for clients that insist.
	TLS *MailClientTLS `yaml:"tls"`
	Pos Positions      `yaml:"-"`

	server *TLS        // server_tls as outbound tls keys, checked
	client *tls.Config // tls, loaded
}

// MailServerTLS is the TLS towards the mail server: the outbound tls keys
// and how TLS starts.
type MailServerTLS struct {
	Mode               string     `yaml:"mode"` // implicit | starttls | none (loopback servers only)
	CAFile             string     `yaml:"ca_file"`
	CAOnly             bool       `yaml:"ca_only"`
	ServerName         string     `yaml:"server_name"` // default: the host of server
	MinVersion         TLSVersion `yaml:"min_version"`
	InsecureSkipVerify bool       `yaml:"insecure_skip_verify"`
	Pos                Positions  `yaml:"-"`
}

// MailClientTLS is the certificate the listener presents to clients.
type MailClientTLS struct {
	CertFile string    `yaml:"cert_file"`
	KeyFile  string    `yaml:"key_file"`
	Mode     string    `yaml:"mode"` // implicit | starttls (default)
	Pos      Positions `yaml:"-"`
}

// defaultMailMode is the usual TLS of a mail port.
func defaultMailMode(server string) string {
	_, port, _ := net.SplitHostPort(server)
	switch port {
	case "993", "995", "465":
		return "implicit"
	case "143", "110", "587", "25":
		return "starttls"
	}
	return ""
}

// mail checks the mail section.
func (v *validator) mail() {
	m := v.cfg.Mail
	if m == nil {
		return
	}
	for _, login := range slices.Sorted(maps.Keys(m.Accounts)) {
		a := m.Accounts[login]
		path := "mail.accounts." + login
		if a == nil {
			continue
		}
		if login == "" || strings.ContainsAny(login, " \t\r\n\"\\") {
			v.addAt(a.Pos[""], path, "a login name may not hold spaces, quotes or backslashes")
		}
		v.missing(a.Pos, path, "oauth2", a.OAuth2, "")
		if a.OAuth2 != "" {
			if _, ok := v.cfg.OAuth2[a.OAuth2]; !ok {
				v.addAt(at(a.Pos, "oauth2"), path+".oauth2", "%q is not defined (defined: %s)", a.OAuth2, strings.Join(slices.Sorted(maps.Keys(v.cfg.OAuth2)), ", "))
			}
		}
	}
	if len(m.Listeners) > 0 && len(m.Accounts) == 0 {
		v.addAt(at(m.Pos, "accounts"), "mail.accounts", "no accounts: the listeners would refuse every login")
	}
	seen := map[string]int{}
	for i, l := range m.Listeners {
		path := fmt.Sprintf("mail.listeners[%d]", i)
		if l == nil {
			continue
		}
		p := l.Pos
		if v.oneOf(p, path, "protocol", l.Protocol, "imap", "pop3", "smtp") {
			path = fmt.Sprintf("mail.listeners[%d] (%s %s)", i, l.Protocol, l.Listen)
		}
		v.missing(p, path, "listen", l.Listen, "")
		if host, ok := v.hostPortIf(p, path, "listen", l.Listen); ok {
			if j, dup := seen[l.Listen]; dup {
				v.addAt(at(p, "listen"), sub(path, "listen"), "mail.listeners[%d] listens there too", j)
			}
			seen[l.Listen] = i
			if sameListener(l.Listen, v.cfg.Listen) || sameListener(l.Listen, v.cfg.AdminListen) {
				v.addAt(at(p, "listen"), sub(path, "listen"), "%q takes the port of listen or admin_listen", l.Listen)
			}
			if !isLoopbackHost(host) {
				for _, login := range slices.Sorted(maps.Keys(m.Accounts)) {
					if a := m.Accounts[login]; a != nil && !a.Password.IsSet() {
						v.addAt(at(p, "listen"), sub(path, "listen"), "%q is reachable beyond this machine, and account %q has no password: anyone who reaches the port would open its mailbox (give every account a password, or listen on 127.0.0.1)", l.Listen, login)
						break
					}
				}
			}
		}
		v.missing(p, path, "server", l.Server, " (the real mail server, host:port)")
		serverHost, serverOK := v.hostPortIf(p, path, "server", l.Server)
		st := l.ServerTLS
		if st == nil {
			st = &MailServerTLS{Pos: Positions{"": p[""]}}
			l.ServerTLS = st
		}
		if st.Mode == "" {
			st.Mode = defaultMailMode(l.Server)
		}
		spath := sub(path, "server_tls")
		switch {
		case st.Mode == "" && serverOK:
			v.addAt(at(st.Pos, "mode"), spath+".mode", "missing: %q is on no usual mail port, so say implicit, starttls or none", l.Server)
		case st.Mode == "none" && serverOK && !isLoopbackHost(serverHost):
			v.addAt(at(st.Pos, "mode"), spath+".mode", "none sends tokens in clear: only for a server on this machine")
		case st.Mode != "":
			v.oneOf(st.Pos, spath, "mode", st.Mode, "implicit", "starttls", "none")
		}
		t := &TLS{CAFile: st.CAFile, CAOnly: st.CAOnly, ServerName: st.ServerName, MinVersion: st.MinVersion,
			InsecureSkipVerify: st.InsecureSkipVerify, Pos: st.Pos}
		if t.ServerName == "" {
			t.ServerName = serverHost
		}
		v.checkTLS(path+".server", t)
		l.server = t
		if l.Mechanism == "" {
			l.Mechanism = "xoauth2"
		}
		v.oneOf(p, path, "mechanism", l.Mechanism, "xoauth2", "oauthbearer")
		if ct := l.TLS; ct != nil {
			if ct.Mode == "" {
				ct.Mode = "starttls"
			}
			v.oneOf(ct.Pos, sub(path, "tls"), "mode", ct.Mode, "implicit", "starttls")
			v.missing(ct.Pos, sub(path, "tls"), "cert_file", ct.CertFile, "")
			v.missing(ct.Pos, sub(path, "tls"), "key_file", ct.KeyFile, "")
			if ct.CertFile != "" && ct.KeyFile != "" {
				kp, err := tokencache.LoadKeyPair(v.res.path(ct.KeyFile), v.res.path(ct.CertFile), tokencache.KeyPairOptions{})
				if err != nil {
					v.addAt(at(ct.Pos, "cert_file"), sub(path, "tls")+".cert_file", "%v", err)
				} else {
					l.client = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
						return kp.Current().TLSCertificate(), nil
					}}
				}
			}
		}
	}
}

// hostPortIf checks addr as host:port when it is set.
func (v *validator) hostPortIf(p Positions, path, key, addr string) (string, bool) {
	if addr == "" {
		return "", false
	}
	return v.hostPort(at(p, key), sub(path, key), addr)
}

// mailUses reports the oauth2 entries mail accounts use.
func (c *Config) mailUses() map[string]bool {
	out := map[string]bool{}
	if c.Mail != nil {
		for _, a := range c.Mail.Accounts {
			if a != nil {
				out[a.OAuth2] = true
			}
		}
	}
	return out
}

// MailListener builds the i-th mail listener, less what the caller
// supplies: Accounts, Logger, Meter, Observe.
func (c *Config) MailListener(i int) *mail.Listener {
	l := c.Mail.Listeners[i]
	out := &mail.Listener{
		Protocol:  mail.Protocol(l.Protocol),
		Name:      l.Listen,
		Server:    l.Server,
		ServerTLS: mail.ServerTLS{Mode: mail.TLSMode(l.ServerTLS.Mode)},
		Mechanism: mail.Mechanism(l.Mechanism),
	}
	if l.server != nil && l.server.ready != nil {
		out.ServerTLS.Config = l.server.ready.config
	}
	if l.client != nil {
		out.ClientTLS = &mail.ClientTLS{Mode: mail.TLSMode(l.TLS.Mode), Config: l.client}
	}
	return out
}

// mailAccounts builds the accounts of rt's config, with their token
// sources.
func (rt *Runtime) mailAccounts() map[string]*mail.Account {
	c := rt.Config
	if c.Mail == nil {
		return nil
	}
	out := make(map[string]*mail.Account, len(c.Mail.Accounts))
	for login, a := range c.Mail.Accounts {
		if a == nil {
			continue
		}
		acc := &mail.Account{User: a.User, OAuth2: a.OAuth2, Tokens: rt.Sources[a.OAuth2]}
		if a.Password.IsSet() {
			acc.Password = []byte(a.Password.Reveal())
		}
		out[strings.ToLower(login)] = acc
	}
	return out
}

// MailAccount looks a login name up in the runtime's accounts (names
// compare case-insensitively, as mail addresses do).
func (rt *Runtime) MailAccount(login string) (*mail.Account, bool) {
	a, ok := rt.mail[strings.ToLower(login)]
	return a, ok
}

// Settings describes what of the listener only a restart changes, the CA
// file's content included (a rotated CA is a change), never a secret.
func (l *MailListener) Settings() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s", l.Protocol, l.Listen, l.Server, l.Mechanism)
	if t := l.ServerTLS; t != nil {
		fmt.Fprintf(&b, " %s %s %v %s %s %v", t.Mode, t.CAFile, t.CAOnly, t.ServerName, t.MinVersion, t.InsecureSkipVerify)
	}
	if l.server != nil {
		b.WriteString(" " + l.server.CADigest)
	}
	if t := l.TLS; t != nil {
		fmt.Fprintf(&b, " %s %s %s", t.Mode, t.CertFile, t.KeyFile)
	}
	return b.String()
}
