package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oauthproxy/oauthproxy/cmd/oauthproxy/internal/server"
	"github.com/oauthproxy/oauthproxy/tokencache"
	"github.com/oauthproxy/oauthproxy/upstreams"
)

func cmdRun(args []string, stderr io.Writer) int {
	cfg, code := newFlags("run", "-config FILE", stderr, true).load(args, stderr)
	if cfg == nil {
		return code
	}
	log, err := newLogger(stderr, cfg.Log.Level, cfg.Log.Format, cfg.Secrets())
	if err != nil {
		fmt.Fprintf(stderr, "oauthproxy: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, log, nil); err != nil {
		log.Error("oauthproxy failed", "error", err)
		return 1
	}
	return 0
}

// serve runs the proxy and admin listeners for cfg until ctx ends, then
// shuts down gracefully: /readyz turns 503, the listener stops accepting,
// and requests in flight get the shutdown grace period to finish.
// listening, if set, is told the addresses once both listen.
func serve(ctx context.Context, cfg *upstreams.Config, log *slog.Logger, listening func(proxy, admin net.Addr)) error {
	for _, w := range cfg.Warnings {
		log.Warn("config: "+w.Msg, "file", w.File, "line", w.Line)
	}
	tel, err := newTelemetry()
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	defer tel.shutdown()
	tm, err := tokencache.NewMetrics(tel.meter)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	rt, err := upstreams.Build(cfg, upstreams.Options{Logger: log, Meter: tel.meter, TokenMetrics: tm})
	if err != nil {
		return err
	}
	defer rt.Close()

	mode, _ := strconv.ParseUint(cfg.SocketMode, 8, 32) // validated
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	proxySrv, err := server.Listen(server.Config{
		Addr:              cfg.Listen,
		SocketMode:        os.FileMode(mode),
		Handler:           rt.Handler,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    int(cfg.Server.MaxHeaderBytes),
		MaxConns:          cfg.Server.MaxConnections,
		ErrorLog:          errLog,
	})
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var serving atomic.Bool
	adminSrv, err := server.Listen(server.Config{
		Addr:              cfg.AdminListen,
		Handler:           adminHandler(rt.Sources, tel.handler, &serving),
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

	rt.Start() // fetch every token now, then renew each before it expires
	serving.Store(true)
	errc := make(chan error, 2)
	go func() { errc <- proxySrv.Serve() }()
	go func() { errc <- adminSrv.Serve() }()
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
	serving.Store(false)
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
