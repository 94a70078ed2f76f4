package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oauthproxy/oauthproxy/cmd/oauthproxy/internal/admin"
	"github.com/oauthproxy/oauthproxy/cmd/oauthproxy/internal/server"
	"github.com/oauthproxy/oauthproxy/proxy"
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
	log := newLogger(stderr, cfg.Log, scrub)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, log, scrub, nil); err != nil {
		log.Error("oauthproxy failed", "error", err)
		return 1
	}
	return 0
}

// app is what a running oauthproxy holds: the runtime in service, and the
// long-lived pieces runtimes are built for.
type app struct {
	log     *slog.Logger
	scrub   *tokencache.Scrubber
	tel     *telemetry
	tokens  *tokencache.Metrics
	handler *proxy.Handler
	rt      atomic.Pointer[upstreams.Runtime]
	serving atomic.Bool
}

// runtime returns the runtime in service.
func (a *app) runtime() *upstreams.Runtime { return a.rt.Load() }

// build builds cfg into a runtime, taking over what prev had that is unchanged.
func (a *app) build(cfg *upstreams.Config, prev *upstreams.Runtime) (*upstreams.Runtime, error) {
	return upstreams.Build(cfg, prev, upstreams.Options{
		Logger: a.log, Handler: a.handler, TokenMetrics: a.tokens, Scrub: a.scrub,
	})
}

// serve runs the proxy and admin listeners for cfg until ctx ends, then
// shuts down gracefully: /readyz turns 503, the listener stops accepting,
// and requests in flight get the shutdown grace period to finish.
// listening, if set, is told the addresses once both listen.
func serve(ctx context.Context, cfg *upstreams.Config, log *slog.Logger, scrub *tokencache.Scrubber, listening func(proxy, admin net.Addr)) error {
	for _, w := range cfg.Warnings {
		log.Warn("config: "+w.Msg, "file", w.File, "line", w.Line)
	}
	a := &app{log: log, scrub: scrub}
	var err error
	if a.tel, err = newTelemetry(metricLimit(cfg)); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	defer a.tel.shutdown()
	if a.tokens, err = tokencache.NewMetrics(a.tel.meter); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if a.handler, err = proxy.NewHandler(proxy.Options{Logger: log, Meter: a.tel.meter, BodyIdleTimeout: cfg.Server.BodyIdleTimeout}); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	rt, err := a.build(cfg, nil)
	if err != nil {
		return err
	}
	a.rt.Store(rt)
	a.handler.Swap(rt.Table)
	defer func() { a.runtime().Close() }()

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
	})
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	adminSrv, err := server.Listen(server.Config{
		Addr: cfg.AdminListen,
		Handler: admin.New(admin.Options{Runtime: a.runtime, Metrics: a.tel.handler, Serving: &a.serving,
			Loopback: upstreams.IsLoopbackListen(cfg.AdminListen), Scrub: scrub}),
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

	rt.Start() // fetch every token now, then renew each before it expires
	a.serving.Store(true)
	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errc <- s.Serve() }()
	}
	log.Info("oauthproxy serving", "version", versionString(), "config", cfg.File,
		"listen", proxySrv.Addr().String(), "admin", adminSrv.Addr().String(), "routes", len(cfg.Routes))
	if listening != nil {
		listening(proxySrv.Addr(), adminSrv.Addr())
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var serveErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-hup:
			log.Warn("SIGHUP: this version does not reload its config; restart it to apply changes")
		case serveErr = <-errc:
			break wait
		}
	}

	log.Info("shutting down", "grace", cfg.Server.ShutdownGrace.String())
	a.serving.Store(false)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownGrace)
	defer cancel()
	if err := proxySrv.Shutdown(sctx); err != nil {
		log.Warn("shutdown grace period over: closed the connections left", "error", err)
	}
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	defer acancel()
	adminSrv.Shutdown(actx)
	log.Info("stopped")
	return serveErr
}

// metricLimit is the OpenTelemetry cardinality limit: every series the
// config can make, so that none folds into otel_metric_overflow. A route
// answers a handful of status codes; an entry has three results.
func metricLimit(cfg *upstreams.Config) int {
	return 2000 + 16*len(cfg.Routes) + 4*len(cfg.OAuth2)
}
