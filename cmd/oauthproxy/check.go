package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/oauthproxy/oauthproxy/upstreams"
)

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	cfg, code := newFlags("check", "-config FILE", stderr, true).load(args, stdout)
	if cfg == nil {
		return code
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(stdout, "%s:%d:%d: warning: %s\n", w.File, w.Line, w.Col, w.Msg)
	}
	names := slices.Sorted(maps.Keys(cfg.OAuth2))
	fmt.Fprintf(stdout, "%s: ok: %d routes, %d oauth2 entries (%s)\n", cfg.File, len(cfg.Routes), len(cfg.OAuth2), strings.Join(names, ", "))
	return 0
}

// loadConfig loads a config and prints its problems, one per line.
func loadConfig(path string, w io.Writer) (*upstreams.Config, bool) {
	cfg, err := upstreams.Load(path)
	if err == nil {
		return cfg, true
	}
	var ps upstreams.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintln(w, p.Error())
		}
		fmt.Fprintf(w, "%s: %d problem%s\n", path, len(ps), plural(len(ps)))
	} else {
		fmt.Fprintf(w, "oauthproxy: %v\n", err)
	}
	return nil, false
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
