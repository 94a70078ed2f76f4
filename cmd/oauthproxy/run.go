package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oauthproxy/oauthproxy/cmd/oauthproxy/internal/acme"
	"github.com/oauthproxy/oauthproxy/cmd/oauthproxy/internal/admin"
	"github.com/oauthproxy/oauthproxy/cmd/oauthproxy/internal/server"
	"github.com/oauthproxy/oauthproxy/proxy"
	"github.com/oauthproxy/oauthproxy/proxy/mail"
	"github.com/oauthproxy/oauthproxy/tokencache"
	"github.com/oauthproxy/oauthproxy/upstreams"
)

func cmdRun(args []string, stderr io.Writer) int {
	cfg, code := newFlags("run", "-config FILE", stderr, true).load(args, stderr)
	if cfg == nil {
		return code
	}
	scrub := tokencache.NewScrubber()
	cfg.AddSecrets(scrub)
	level := new(slog.LevelVar)
	level.Set(logLevel(cfg.Log))
	log := newLeveledLogger(stderr, cfg.Log, scrub, level)
	ctx, stop := stopOnSignal(log)
	defer stop()
	if err := serve(ctx, cfg, log, scrub, serveOptions{level: level, reload: true, logOut: stderr}); err != nil {
		log.Error("oauthproxy failed", "error", err)
		return 1
	}
	return 0
}

// stopOnSignal returns a context that ends at the first SIGTERM or
// SIGINT; a second one exits at once with code 1, for an operator who
// does not want to wait for the drain.
func stopOnSignal(log *slog.Logger) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		log.Info("signal: shutting down; a second signal exits at once", "signal", s.String())
		cancel()
		s = <-sig
		log.Warn("second signal: exiting now", "signal", s.String())
		os.Exit(1)
	}()
	return ctx, func() { signal.Stop(sig); cancel() }
}

// serveOptions are what differs between `run` and `demo`.
type serveOptions struct {
	// listening, if set, is told the addresses once both listen.
	listening func(proxy, admin net.Addr)
	// level is the log level, which a reload sets; nil: fixed.
	level *slog.LevelVar
	// reload enables SIGHUP and the file watcher (a config from a file).
	reload bool
	// logOut is where the log goes, and the access log; nil: stderr.
	logOut io.Writer
}

// app is what a running oauthproxy holds: the runtime in service, and the
// long-lived pieces runtimes are built for.
type app struct {
	log      *slog.Logger
	level    *slog.LevelVar
	scrub    *tokencache.Scrubber
	tel      *telemetry
	tokens   *tokencache.Metrics
	reloads  *reloadMetrics
	cache    *cacheMetrics
	handler  *proxy.Handler
	rt       atomic.Pointer[upstreams.Runtime]
	serving  atomic.Bool
	reloadMu sync.Mutex // one reload at a time
	closed   bool       // under reloadMu: shut down, no more reloads
}

// runtime returns the runtime in service.
func (a *app) runtime() *upstreams.Runtime { return a.rt.Load() }

// build builds cfg into a runtime, taking over what prev had that is unchanged.
func (a *app) build(cfg *upstreams.Config, prev *upstreams.Runtime) (*upstreams.Runtime, error) {
	cfg.SetLogger(a.log) // rotations of key and certificate files are logged
	return upstreams.Build(cfg, prev, upstreams.Options{
		Logger: a.log, Handler: a.handler, TokenMetrics: a.tokens, Scrub: a.scrub,
		CacheObserve: a.cache.observe,
	})
}

// serve runs the proxy and admin listeners for cfg until ctx ends, then
// shuts down gracefully: /readyz turns 503 at once; after
// server.shutdown_delay the listener stops accepting; requests in flight
// get server.shutdown_timeout to finish, and what is still open then
// (streams, WebSockets) is closed.
func serve(ctx context.Context, cfg *upstreams.Config, log *slog.Logger, scrub *tokencache.Scrubber, opts serveOptions) error {
	for _, w := range cfg.Warnings {
		log.Warn("config: "+w.Msg, "file", w.File, "line", w.Line)
	}
	if opts.level == nil {
		opts.level = new(slog.LevelVar)
		opts.level.Set(logLevel(cfg.Log))
	}
	a := &app{log: log, level: opts.level, scrub: scrub}
	var err error
	if a.tel, err = newTelemetry(metricLimit(cfg), log); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	defer a.tel.shutdown()
	if a.tokens, err = tokencache.NewMetrics(a.tel.meter); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if a.reloads, err = newReloadMetrics(a.tel.meter); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if a.cache, err = newCacheMetrics(a.tel.meter); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	observe, flushAccess := newAccessLog(opts.logOut, cfg.Log, scrub)
	defer flushAccess() // after the drain: the last requests' lines too
	if a.handler, err = proxy.NewHandler(proxy.Options{Logger: log, Meter: a.tel.meter, BodyIdleTimeout: cfg.Server.BodyIdleTimeout, BodyBufferDir: cfg.Server.BodyBufferDir,
		Observe: observe, TracerProvider: a.tel.tracerProvider()}); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	rt, err := a.build(cfg, nil)
	if err != nil {
		return err
	}
	a.rt.Store(rt)
	a.handler.Swap(rt.Table)
	returnLoadMemory(cfg)
	defer func() {
		a.reloadMu.Lock() // no reload builds after this
		a.closed = true
		a.runtime().Close()
		a.reloadMu.Unlock()
	}()

	certs, err := acme.New(cfg, log) // nil without tls.acme
	if err != nil {
		return err
	}
	defer certs.Stop()
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	proxySrv, err := server.Listen(server.Config{
		Addr:              cfg.Listen,
		SocketMode:        os.FileMode(cfg.SocketMode),
		Handler:           a.handler,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    int(cfg.Server.MaxHeaderBytes),
		MaxConns:          cfg.Server.MaxConnections,
		ErrorLog:          errLog,
		TLS:               certs.TLSConfig(cfg.ListenTLSConfig()),
	})
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := certs.Start(ctx, proxySrv.Addr()); err != nil {
		proxySrv.Shutdown(context.Background())
		return err
	}
	adminSrv, err := server.Listen(server.Config{
		Addr: cfg.AdminListen,
		Handler: admin.New(admin.Options{Runtime: a.runtime, Metrics: a.tel.handler, Serving: &a.serving,
			Loopback: upstreams.IsLoopbackListen(cfg.AdminListen), ClientCerts: cfg.AdminClientCerts(), Scrub: scrub}),
		TLS:               cfg.AdminTLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		MaxConns:          64,
		ErrorLog:          errLog,
	})
	if err != nil {
		proxySrv.Shutdown(context.Background())
		return fmt.Errorf("admin_listen: %w", err)
	}
	servers := []*server.Server{proxySrv, adminSrv}
	mails, err := a.listenMail(cfg)
	if err != nil {
		proxySrv.Shutdown(context.Background())
		adminSrv.Shutdown(context.Background())
		return err
	}

	rt.Start() // fetch every token now, then renew each before it expires
	a.serving.Store(true)
	errc := make(chan error, len(servers)+len(mails))
	for _, s := range servers {
		go func() { errc <- s.Serve() }()
	}
	for _, m := range mails {
		go func() {
			if err := m.l.Serve(m.ln); !errors.Is(err, mail.ErrListenerClosed) {
				errc <- fmt.Errorf("mail listener %s: %w", m.l.Name, err)
			}
		}()
	}
	log.Info("oauthproxy serving", "version", versionString(), "config", cfg.File,
		"listen", proxySrv.Addr().String(), "admin", adminSrv.Addr().String(), "routes", len(cfg.Routes), "mail_listeners", mailAddrs(mails))
	if opts.listening != nil {
		opts.listening(proxySrv.Addr(), adminSrv.Addr())
	}

	hup := make(chan os.Signal, 1)
	if opts.reload {
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		go a.watch(wctx, func(why string) { a.reload(why) })
	}
	var serveErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-hup:
			go a.reload("SIGHUP") // a slow store or file must not hold up signals
		case serveErr = <-errc:
			break wait
		}
	}

	log.Info("shutting down", "delay", cfg.Server.ShutdownDelay.String(), "timeout", cfg.Server.ShutdownTimeout.String())
	a.serving.Store(false) // /readyz: 503 from now on
	if d := cfg.Server.ShutdownDelay; d > 0 && serveErr == nil {
		time.Sleep(d) // still accepting: the load balancer is told by /readyz first
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, m := range mails { // logged-in sessions are relays: they get the same deadline
		wg.Go(func() { m.l.Shutdown(sctx) })
	}
	if err := proxySrv.Shutdown(sctx); err != nil {
		log.Warn("shutdown timeout over: closed the connections left", "error", err)
	}
	wg.Wait()
	a.revokeOnShutdown()
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	defer acancel()
	adminSrv.Shutdown(actx)
	log.Info("stopped")
	return serveErr
}

// mailListener is a mail listener and its socket.
type mailListener struct {
	l  *mail.Listener
	ln net.Listener
}

// listenMail opens the mail listeners of cfg. Their accounts are looked up
// in the runtime in service, so that a reload changes them at once; the
// listeners themselves change with a restart.
func (a *app) listenMail(cfg *upstreams.Config) ([]mailListener, error) {
	if cfg.Mail == nil {
		return nil, nil
	}
	var out []mailListener
	for i := range cfg.Mail.Listeners {
		l := cfg.MailListener(i)
		l.Accounts = func(login string) (*mail.Account, bool) { return a.runtime().MailAccount(login) }
		l.Logger, l.Meter = a.log, a.tel.meter
		ln, err := net.Listen("tcp", l.Name)
		if err != nil {
			for _, m := range out {
				m.ln.Close()
			}
			return nil, fmt.Errorf("mail.listeners[%d] %s: %w", i, l.Protocol, err)
		}
		out = append(out, mailListener{l, ln})
	}
	return out, nil
}

func mailAddrs(ms []mailListener) []string {
	var out []string
	for _, m := range ms {
		out = append(out, string(m.l.Protocol)+" "+m.ln.Addr().String())
	}
	return out
}

// returnLoadMemory gives the memory a large config's loading used (the
// YAML tree, decoding) back to the OS at once: otherwise a table of 10,000
// routes holds three times the RSS of one route until the scavenger gets
// to it. Small configs skip it; it costs one GC.
//
// A large table is also most of the live heap, and the GC lets the heap
// grow by GOGC percent of it between cycles: at the default 100, 13 MiB
// of routes would carry 13 MiB of headroom for a request path that needs
// little. Unless GOGC is set, such a process runs at 50 (measured: 10,000
// routes at 1.9x the RSS of one route instead of 2.3x, the same req/s;
// docs/benchmarks.md).
func returnLoadMemory(cfg *upstreams.Config) {
	if len(cfg.Routes) < largeTable {
		return
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	debug.FreeOSMemory()
}

// largeTable is the route count from which the table dominates the heap.
const largeTable = 1000

// revokeOnShutdown revokes the access tokens of the entries that ask for
// it (revoke_on_shutdown: client_credentials and password), bounded by a
// few seconds in all: a token nobody will use again should not outlive
// the process.
func (a *app) revokeOnShutdown() {
	rt := a.runtime()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for name, src := range rt.Sources {
		if o := rt.Config.OAuth2[name]; o == nil || !o.RevokeOnShutdown {
			continue
		}
		wg.Go(func() {
			if _, err := src.Revoke(ctx, true); err != nil && !errors.Is(err, tokencache.ErrNothingToRevoke) {
				a.log.Warn("revoking on shutdown failed", "oauth2", name, "error", err)
			}
		})
	}
	wg.Wait()
}

// metricLimit is the OpenTelemetry cardinality limit: every series the
// config can make, so that none folds into otel_metric_overflow. A route
// answers a handful of status codes; an entry has three results.
func metricLimit(cfg *upstreams.Config) int {
	return 2000 + 16*len(cfg.Routes) + 4*len(cfg.OAuth2)
}
