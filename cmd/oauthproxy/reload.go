package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/oauthproxy/oauthproxy/upstreams"
)

// Reloading: SIGHUP, or a change to any file the config was read from
// (the file itself, ${file:...} secrets, .ionapi files). Files are polled
// by content rather than watched with inotify: a poll sees an edit in
// place, a rename over the file and a Kubernetes ConfigMap's ..data
// symlink swap alike, follows symlinks by nature, and needs no
// dependency. A change is applied once two polls agree, so that an
// editor's burst of writes is one reload.
const (
	pollInterval = 500 * time.Millisecond
)

// fileSet is the content digest of each file a config was read from.
type fileSet map[string][32]byte

func digestFiles(paths []string) fileSet {
	fs := make(fileSet, len(paths))
	for _, p := range paths {
		var sum [32]byte
		if f, err := os.Open(p); err == nil {
			h := sha256.New()
			io.Copy(h, io.LimitReader(f, 64<<20))
			f.Close()
			copy(sum[:], h.Sum(nil))
		} // a missing file digests as zeros: its return is a change too
		fs[p] = sum
	}
	return fs
}

func (a fileSet) equal(b fileSet) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || v != w {
			return false
		}
	}
	return true
}

// watch polls the files of the config in service and calls reload when
// their content changes and holds still, until ctx ends.
func (a *app) watch(ctx context.Context, reload func(why string)) {
	files := a.files()
	seen := digestFiles(files)
	var pending fileSet // a change seen once, waiting to hold still
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if cur := a.files(); !slices.Equal(cur, files) { // a reload changed the list
			files, seen, pending = cur, digestFiles(cur), nil
			continue
		}
		now := digestFiles(files)
		switch {
		case now.equal(seen):
			pending = nil
		case pending != nil && now.equal(pending):
			seen, pending = now, nil
			reload("a config file changed")
			files = a.files()
			seen = digestFiles(files)
		default:
			pending = now
		}
	}
}

// files lists the files of the config in service.
func (a *app) files() []string {
	return slices.Clone(a.runtime().Config.Files)
}

// reload loads the config file again and, if it is valid and builds,
// puts it in service: the new route table is swapped in atomically,
// tokens of entries whose settings did not change are kept, and what the
// old runtime had that the new one does not is stopped. A config that
// fails is refused whole and the old one keeps serving.
func (a *app) reload(why string) error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	if a.closed {
		return errors.New("shutting down")
	}
	prev := a.runtime()
	path := prev.Config.File
	cfg, err := upstreams.Load(path)
	if err != nil {
		var probs upstreams.Problems
		if errors.As(err, &probs) {
			for _, p := range probs {
				a.log.Error("config reload refused: "+p.Msg, "file", p.File, "line", p.Line, "col", p.Col)
			}
		} else {
			a.log.Error("config reload refused", "error", err)
		}
		a.reloads.reloaded(false)
		return err
	}
	for _, w := range cfg.Warnings {
		a.log.Warn("config: "+w.Msg, "file", w.File, "line", w.Line)
	}
	// What only a restart changes is reported, and the rest applies.
	for _, c := range []struct{ key, old, new string }{
		{"listen", prev.Config.Listen, cfg.Listen},
		{"admin_listen", prev.Config.AdminListen, cfg.AdminListen},
		{"server", fmtServer(prev.Config.Server), fmtServer(cfg.Server)},
		{"mail.listeners", fmtMail(prev.Config), fmtMail(cfg)},
		{"tls, admin_tls", fmt.Sprintf("%+v %+v", tlsFiles(prev.Config.TLS), tlsFiles(prev.Config.AdminTLS)), fmt.Sprintf("%+v %+v", tlsFiles(cfg.TLS), tlsFiles(cfg.AdminTLS))},
		{"log.format, log.access, log.access_query", fmt.Sprint(prev.Config.Log.Format, prev.Config.Log.Access, prev.Config.Log.AccessQuery),
			fmt.Sprint(cfg.Log.Format, cfg.Log.Access, cfg.Log.AccessQuery)},
	} {
		if c.old != c.new {
			a.log.Warn("config: "+c.key+" changed; that applies after a restart", "key", c.key)
		}
	}
	next, err := a.build(cfg, prev)
	if err != nil {
		a.log.Error("config reload refused: building it failed", "error", err)
		a.reloads.reloaded(false)
		return err
	}
	a.rt.Store(next)
	a.handler.Swap(next.Table)
	next.Start()
	prev.Retire(next)
	returnLoadMemory(cfg)
	a.level.Set(logLevel(cfg.Log))
	kept, fresh := 0, 0
	for name, s := range next.Sources {
		if prev.Sources[name] == s {
			kept++
		} else {
			fresh++
		}
	}
	a.log.Info("config reloaded", "why", why, "routes", len(cfg.Routes), "oauth2_kept", kept, "oauth2_new", fresh)
	a.reloads.reloaded(true)
	return nil
}

func fmtServer(s upstreams.Server) string {
	s.Pos = nil
	return fmt.Sprintf("%+v", s)
}

// fmtMail is what of the mail listeners a restart changes: all of them
// but the accounts.
func fmtMail(c *upstreams.Config) string {
	if c.Mail == nil {
		return ""
	}
	var b strings.Builder
	for _, l := range c.Mail.Listeners {
		if l != nil {
			b.WriteString(l.Settings())
			b.WriteString(";")
		}
	}
	return b.String()
}

// tlsFiles is what of a listener's tls section a restart changes (the
// certificate files' contents are re-read without one).
func tlsFiles(t *upstreams.ListenTLS) string {
	if t == nil {
		return ""
	}
	s := fmt.Sprint(t.CertFile, t.KeyFile, t.ClientCAFile, t.ClientCADigest, t.RequireClientCert, t.MinVersion)
	if a := t.ACME; a != nil {
		s += fmt.Sprint(a.Domains, a.Email, a.CA, a.Storage, a.Challenge, a.HTTPListen)
	}
	return s
}
