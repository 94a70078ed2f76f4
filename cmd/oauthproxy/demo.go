package main

import (
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/oauthproxy/oauthproxy/cmd/oauthproxy/internal/demo"
	"github.com/oauthproxy/oauthproxy/tokencache"
	"github.com/oauthproxy/oauthproxy/upstreams"
)

//go:embed demo.yaml
var demoConfig []byte

// cmdDemo wires a built-in authorization server, an API that demands its
// tokens and the proxy together on loopback, and prints what to try.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	f := newFlags("demo", "[-listen ADDR] [-admin-listen ADDR]", stderr, false)
	listen := f.String("listen", "127.0.0.1:8080", "proxy `address` (a free port if this one is taken)")
	admin := f.String("admin-listen", "127.0.0.1:9090", "admin `address` (a free port if this one is taken)")
	ttl := f.Duration("token-ttl", 2*time.Minute, "lifetime of the tokens the demo server issues")
	if _, code := f.parse(args); code >= 0 {
		return code
	}

	secret := make([]byte, 16)
	rand.Read(secret)
	clientSecret := hex.EncodeToString(secret)
	idp, err := demo.NewIdP("demo-app", clientSecret, *ttl)
	if err != nil {
		fmt.Fprintf(stderr, "oauthproxy demo: %v\n", err)
		return 1
	}
	idpLn, err1 := net.Listen("tcp", "127.0.0.1:0")
	apiLn, err2 := net.Listen("tcp", "127.0.0.1:0")
	if err1 != nil || err2 != nil {
		fmt.Fprintf(stderr, "oauthproxy demo: cannot listen on loopback: %v %v\n", err1, err2)
		return 1
	}
	idpURL, apiURL := "http://"+idpLn.Addr().String(), "http://"+apiLn.Addr().String()
	idpSrv := &http.Server{Handler: idp.Handler(idpURL), ReadHeaderTimeout: 5 * time.Second}
	apiSrv := &http.Server{Handler: demo.EchoAPI(idp), ReadHeaderTimeout: 5 * time.Second}
	go idpSrv.Serve(idpLn)
	go apiSrv.Serve(apiLn)
	defer idpSrv.Close()
	defer apiSrv.Close()

	env := map[string]string{
		"DEMO_LISTEN": freeOr(*listen), "DEMO_ADMIN": freeOr(*admin),
		"DEMO_IDP": idpURL, "DEMO_API": apiURL, "DEMO_CLIENT_SECRET": clientSecret,
	}
	cfg, err := upstreams.Parse("demo.yaml (built in)", demoConfig, upstreams.Resolver{
		Getenv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	})
	if err != nil {
		fmt.Fprintf(stderr, "oauthproxy demo: the built-in config does not load:\n%v\n", err)
		return 1
	}
	scrub := tokencache.NewScrubber()
	cfg.AddSecrets(scrub)
	log := newLogger(stderr, cfg.Log, scrub)
	ctx, stop := stopOnSignal(log)
	defer stop()
	err = serve(ctx, cfg, log, scrub, serveOptions{listening: func(proxy, admin net.Addr) {
		p, a := "http://"+proxy.String(), "http://"+admin.String()
		fmt.Fprintf(stdout, `
oauthproxy demo: an authorization server, an API that demands its tokens,
and the proxy between them, all on loopback.

  admin page            %s/  <- open it: the token's state, Get token, Revoke

  authorization server  %s/token  (client "demo-app", client_credentials,
                        tokens live %s)
  echo API              %s/  (401 without a valid token)
  proxy                 %s/echo/ -> echo API, with a token

Try:
  curl -s %s/echo/hello?name=world        # the proxy adds the token
  curl -s %s/hello                          # the API alone refuses you
  curl -s %s/tokens                        # token state (never the token)
  curl -s %s/metrics | grep ^oauthproxy_
  curl -s %s/nowhere                       # a proxy error: JSON, with X-Oauthproxy-Error

Beyond this demo: sign-in grants (docs/signin.md), mail listeners that let
old IMAP/POP3/SMTP clients reach Microsoft 365 and Gmail (docs/mail.md),
replicas sharing tokens through Redis (docs/replicas.md).

Ctrl-C stops it.

`, a, idpURL, *ttl, apiURL, p, p, apiURL, a, a, p)
	}})
	if err != nil {
		log.Error("oauthproxy demo failed", "error", err)
		return 1
	}
	return 0
}

// freeOr returns addr if it can be listened on now, else a free port on
// the same host, so that the demo starts even where 8080 is taken.
func freeOr(addr string) string {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		ln.Close()
		return addr
	}
	host, _, _ := net.SplitHostPort(addr)
	return net.JoinHostPort(host, "0")
}
