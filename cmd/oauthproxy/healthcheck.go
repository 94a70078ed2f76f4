package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/oauthproxy/oauthproxy/upstreams"
)

// healthcheckTimeout bounds one health check, connection included: the
// contract says /healthz must answer within 5 s.
const healthcheckTimeout = 5 * time.Second

// cmdHealthcheck asks a running proxy's admin listener for /healthz, for
// container images that have no curl (Docker's HEALTHCHECK, an exec
// probe). Every failure exits 1, usage errors included: Docker reserves
// exit code 2 of a health check, and a health check that cannot run has
// not seen the proxy healthy.
func cmdHealthcheck(args []string, stderr io.Writer) int {
	f := newFlags("healthcheck", "[-admin ADDR]", stderr, false)
	def := os.Getenv("OAUTHPROXY_ADMIN")
	if def == "" {
		def = upstreams.DefaultAdminListen
	}
	admin := f.String("admin", def, "the admin listener's `address`: host:port or unix:/path; $OAUTHPROXY_ADMIN, else "+upstreams.DefaultAdminListen)
	pos, code := f.parse(args)
	switch {
	case code == 0:
		return 0
	case code > 0:
		return 1
	case len(pos) > 0:
		fmt.Fprintf(stderr, "oauthproxy healthcheck: unexpected argument %q\n", pos[0])
		return 1
	}
	if err := healthcheck(*admin, healthcheckTimeout); err != nil {
		fmt.Fprintf(stderr, "oauthproxy healthcheck: %v\n", err)
		return 1
	}
	return 0
}

// healthcheck returns nil when GET /healthz on the admin listener addr
// answers 200 within timeout, else an error of one line saying why.
func healthcheck(addr string, timeout time.Duration) error {
	u, dial, err := healthzURL(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// A transport of its own: no HTTP_PROXY (the admin listener is never
	// behind a proxy), no keep-alive to leave behind.
	tr := &http.Transport{DisableKeepAlives: true}
	if dial != nil {
		tr.DialContext = dial
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport: tr,
		// A redirect is not /healthz answering.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	resp, err := client.Do(req)
	if err == nil {
		// Read the (short) body so that a server that sends its status
		// and then hangs is not taken as healthy either.
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("GET %s: no answer within %s", u, timeout)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its message repeats the method and URL
		}
		return fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return nil
}

// healthzURL is the /healthz URL of an admin listen address, and for a
// unix socket the dialer that reaches it. A wildcard host (0.0.0.0:9090,
// :9090, the address manifests listen on) is dialled on loopback.
func healthzURL(addr string) (string, func(context.Context, string, string) (net.Conn, error), error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return "", nil, fmt.Errorf("-admin %q: no socket path (unix:/run/oauthproxy/admin.sock)", addr)
		}
		var d net.Dialer
		dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		}
		return "http://localhost/healthz", dial, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return "", nil, fmt.Errorf("-admin %q: want host:port or unix:/path (the config's admin_listen)", addr)
	}
	switch ip := net.ParseIP(host); {
	case host == "" || ip != nil && ip.Equal(net.IPv4zero):
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil, nil
}
