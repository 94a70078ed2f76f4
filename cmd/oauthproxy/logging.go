package main

import (
	"io"
	"log/slog"
	"os"

	"github.com/oauthproxy/oauthproxy/proxy"
	"github.com/oauthproxy/oauthproxy/tokencache"
	"github.com/oauthproxy/oauthproxy/upstreams"
)

// newLogger returns the process logger. Secrets are a type that redacts
// itself; as a second line of defence, every secret the scrubber knows
// (the config's, in every encoding the proxy sends them in, and the tokens
// held) is removed from every logged value.
func newLogger(w io.Writer, cfg upstreams.Log, scrub *tokencache.Scrubber) *slog.Logger {
	lv := new(slog.LevelVar)
	lv.Set(logLevel(cfg))
	return newLeveledLogger(w, cfg, scrub, lv)
}

// logLevel is cfg's level (one of debug, info, warn, error: validated).
func logLevel(cfg upstreams.Log) slog.Level {
	var lv slog.Level
	lv.UnmarshalText([]byte(cfg.Level))
	return lv
}

// newLeveledLogger is newLogger with a level that a reload can change.
func newLeveledLogger(w io.Writer, cfg upstreams.Log, scrub *tokencache.Scrubber, lv *slog.LevelVar) *slog.Logger {
	opts := &slog.HandlerOptions{
		Level: lv,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Value.Kind() {
			case slog.KindString:
				a.Value = slog.StringValue(scrub.Scrub(a.Value.String()))
			case slog.KindAny:
				switch v := a.Value.Any().(type) {
				case error:
					a.Value = slog.StringValue(scrub.Scrub(v.Error()))
				case interface{ String() string }:
					a.Value = slog.StringValue(scrub.Scrub(v.String()))
				}
			}
			return a
		},
	}
	if cfg.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// newAccessLog starts the access log of log.access on w (nil: stderr): one
// line per request, in the process log's format and with its redaction,
// whatever log.level says. It returns the handler's observer, nil when
// the access log is off so that requests pay nothing for it, and a func
// that flushes what is buffered, which the caller runs at exit.
func newAccessLog(w io.Writer, cfg upstreams.Log, scrub *tokencache.Scrubber) (observe func(*proxy.Outcome), flush func()) {
	if !cfg.Access {
		return nil, func() {}
	}
	if w == nil {
		w = os.Stderr
	}
	lines := upstreams.Log{Level: "info", Format: cfg.Format}
	acc := proxy.NewAccessLog(w, proxy.AccessLogOptions{
		Query:   cfg.AccessQuery,
		Handler: func(w io.Writer) slog.Handler { return newLogger(w, lines, scrub).Handler() },
	})
	return acc.Observe, func() { acc.Close() }
}
