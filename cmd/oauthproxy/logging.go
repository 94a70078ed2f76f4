package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// newLogger returns the process logger. Secrets are a type that redacts
// itself; as a second line of defence, any configured secret that shows up
// in a log value anyway (an IdP echoing it in an error, say) is replaced.
func newLogger(w io.Writer, level, format string, secrets []tokencache.Secret) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	scrub := scrubber(secrets)
	opts := &slog.HandlerOptions{
		Level: lv,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Value.Kind() {
			case slog.KindString:
				if s := a.Value.String(); scrub != nil {
					a.Value = slog.StringValue(scrub.Replace(s))
				}
			case slog.KindAny:
				if err, ok := a.Value.Any().(error); ok && scrub != nil {
					a.Value = slog.StringValue(scrub.Replace(err.Error()))
				}
			}
			return a
		},
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

func scrubber(secrets []tokencache.Secret) *strings.Replacer {
	if len(secrets) == 0 {
		return nil
	}
	pairs := make([]string, 0, 2*len(secrets))
	for _, s := range secrets {
		pairs = append(pairs, s.Reveal(), "[redacted]")
	}
	return strings.NewReplacer(pairs...)
}
