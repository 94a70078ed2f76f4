package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
	"github.com/oauthproxy/oauthproxy/upstreams"
)

// cmdToken is the "Get token" button of integration platforms: it asks the
// token endpoint of one oauth2 entry for a token now and describes it.
func cmdToken(args []string, stdout, stderr io.Writer) int {
	f := newFlags("token", "NAME -config FILE [-show]", stderr, true)
	show := f.Bool("show", false, "also print the access token itself")
	pos, code := f.parse(args)
	if code >= 0 {
		return code
	}
	if len(pos) != 1 {
		f.Usage()
		return 2
	}
	name := pos[0]
	cfg, ok := loadConfig(*f.config, stderr)
	if !ok {
		return 1
	}
	if _, ok := cfg.OAuth2[name]; !ok {
		names := slices.Sorted(maps.Keys(cfg.OAuth2))
		fmt.Fprintf(stderr, "oauthproxy token: no oauth2 entry %q in %s (defined: %s)\n", name, cfg.File, strings.Join(names, ", "))
		return 1
	}
	quiet := slog.New(slog.DiscardHandler)
	scrub := tokencache.NewScrubber()
	src, err := upstreams.NewSource(cfg, name, upstreams.Options{Logger: quiet, Scrub: scrub})
	if err != nil {
		fmt.Fprintf(stderr, "oauthproxy token: %v\n", err)
		return 1
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.OAuth2[name].Timeout+5*time.Second)
	defer cancel()
	st := src.Status()
	tok, err := src.Fetch(ctx)
	if err != nil {
		msg := err.Error()
		var te *tokencache.Error
		if errors.As(err, &te) {
			msg = te.Detail()
		}
		fmt.Fprintf(stderr, "oauthproxy token %s: %s\n", name, scrub.Scrub(msg))
		return 1
	}
	describeToken(stdout, name, st.TokenURL, tok, *show, scrub)
	return 0
}

func describeToken(w io.Writer, name, tokenURL string, tok *tokencache.Token, show bool, scrub *tokencache.Scrubber) {
	fmt.Fprintf(w, "oauth2:       %s\n", name)
	fmt.Fprintf(w, "token_url:    %s\n", tokenURL)
	fmt.Fprintf(w, "token_type:   %s\n", tok.Type)
	life := tok.Expiry.Sub(tok.Obtained).Round(time.Second)
	fmt.Fprintf(w, "expires_in:   %s (at %s, from %s)\n", life, tok.Expiry.UTC().Format(time.RFC3339), tok.ExpirySource)
	scopes := "(none returned)"
	if len(tok.Scopes) > 0 {
		scopes = scrub.Scrub(strings.Join(tok.Scopes, " "))
	}
	fmt.Fprintf(w, "scopes:       %s\n", scopes)
	if claims, ok := tokencache.JWTClaims(tok.AccessToken.Reveal()); ok {
		out, _ := json.MarshalIndent(claims, "  ", "  ")
		fmt.Fprintf(w, "jwt claims (decoded, NOT verified):\n  %s\n", scrub.Scrub(string(out)))
	} else {
		fmt.Fprintf(w, "jwt claims:   none (an opaque token)\n")
	}
	if show {
		fmt.Fprintf(w, "access_token: %s\n", tok.AccessToken.Reveal())
	} else {
		fmt.Fprintf(w, "access_token: (%d characters; -show prints it)\n", len(tok.AccessToken.Reveal()))
	}
}
