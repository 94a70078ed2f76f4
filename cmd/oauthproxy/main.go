// Command oauthproxy lets software that cannot do OAuth2 call APIs that
// demand it: apps send plain HTTP to it, and it forwards each request to
// the configured upstream with a bearer token it obtains and keeps fresh.
//
//	oauthproxy [run] -config FILE       serve
//	oauthproxy check -config FILE       validate a config
//	oauthproxy token NAME -config FILE  fetch a token now and describe it
//	oauthproxy login NAME -config FILE  sign in once (authorization_code, device_code)
//	oauthproxy revoke NAME -config FILE revoke the entry's tokens (RFC 7009)
//	oauthproxy demo                     a built-in IdP, API and proxy, wired together
//	oauthproxy version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/oauthproxy/oauthproxy/upstreams"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

const usage = `oauthproxy lets software that cannot do OAuth2 call APIs that demand it.

Usage:
  oauthproxy [run] -config FILE        serve the routes of FILE
  oauthproxy check -config FILE        validate FILE: every problem as FILE:LINE:COL: message
  oauthproxy token NAME -config FILE   fetch a token for oauth2 entry NAME now; print its type,
                                       expiry, scopes and JWT claims (the token only with -show)
  oauthproxy login NAME -config FILE   authorization_code / device_code: sign in once and store
                                       the refresh token in the entry's store
  oauthproxy revoke NAME -config FILE  revoke the entry's tokens at its revoke_url (RFC 7009): the
                                       stored ones, or through the running proxy's admin listener
  oauthproxy demo                      start a built-in authorization server, an API that
                                       demands its tokens, and the proxy; print curl lines to try
  oauthproxy healthcheck [-admin ADDR] exit 0 if the admin listener's /healthz answers 200 within 5s
  oauthproxy version                   print the version

-config defaults to $OAUTHPROXY_CONFIG. Exit codes: 0 ok, 1 bad config or
failed command, 2 usage. Docs: docs/ in the source, or README.md.
`

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

// runMain dispatches a command line and returns the exit code.
func runMain(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return cmdRun(args, stderr)
	case "check":
		return cmdCheck(args, stdout, stderr)
	case "token":
		return cmdToken(args, stdout, stderr)
	case "login":
		return cmdLogin(args, stdout, stderr)
	case "revoke":
		return cmdRevoke(args, stdout, stderr)
	case "demo":
		return cmdDemo(args, stdout, stderr)
	case "healthcheck":
		return cmdHealthcheck(args, stderr)
	case "version":
		fmt.Fprintf(stdout, "oauthproxy %s (%s %s/%s)\n", versionString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "oauthproxy: unknown command %q\n\n%s", cmd, usage)
	return 2
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// flags is a command's flag set; parse accepts flags after positional
// arguments too (oauthproxy token NAME -config FILE).
type flags struct {
	*flag.FlagSet
	config *string
}

func newFlags(name, args string, stderr io.Writer, withConfig bool) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &flags{FlagSet: fs}
	if withConfig {
		f.config = fs.String("config", os.Getenv("OAUTHPROXY_CONFIG"), "config `file` (default $OAUTHPROXY_CONFIG)")
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: oauthproxy %s %s\n", name, args)
		fs.PrintDefaults()
	}
	return f
}

// load parses a command that takes -config and no arguments, and loads
// the config; problems go to w. It returns an exit code when it fails.
func (f *flags) load(args []string, w io.Writer) (*upstreams.Config, int) {
	pos, code := f.parse(args)
	if code >= 0 {
		return nil, code
	}
	if len(pos) > 0 {
		fmt.Fprintf(f.Output(), "oauthproxy %s: unexpected argument %q\n", f.Name(), pos[0])
		return nil, 2
	}
	cfg, ok := loadConfig(*f.config, w)
	if !ok {
		return nil, 1
	}
	return cfg, -1
}

// parse returns the positional arguments, or an exit code for a usage error.
func (f *flags) parse(args []string) ([]string, int) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, 0
			}
			return nil, 2
		}
		args = f.Args()
		if len(args) == 0 {
			break
		}
		pos, args = append(pos, args[0]), args[1:]
	}
	if f.config != nil && *f.config == "" {
		fmt.Fprintf(f.Output(), "oauthproxy %s: no config: pass -config FILE or set OAUTHPROXY_CONFIG\n", f.Name())
		return nil, 2
	}
	return pos, -1
}
