package main

import (
	"io"
	"log/slog"

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
