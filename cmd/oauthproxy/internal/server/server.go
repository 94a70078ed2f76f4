// Package server runs an http.Server the way oauthproxy needs it: on TCP
// or a unix socket, with a cap on open connections, and a shutdown that
// also closes the connections http.Server.Shutdown does not wait for
// (hijacked ones: WebSockets).
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Config describes one listener.
type Config struct {
	Addr              string      // host:port, or unix:/path
	SocketMode        os.FileMode // for unix sockets
	Handler           http.Handler
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	MaxConns          int // 0: no cap
	ErrorLog          *log.Logger
	// TLS, when set, serves HTTPS; its NextProtos offer HTTP/2.
	TLS *tls.Config
}

// Server is a listening http.Server.
type Server struct {
	srv    *http.Server
	ln     net.Listener
	socket string // unix socket path to remove at exit
	conns  *connSet
}

// Listen opens the listener; Serve starts answering on it.
func Listen(cfg Config) (*Server, error) {
	s := &Server{conns: &connSet{m: map[*trackedConn]struct{}{}}}
	var ln net.Listener
	var err error
	if path, ok := strings.CutPrefix(cfg.Addr, "unix:"); ok {
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
		if ln, err = net.Listen("unix", path); err != nil {
			return nil, err
		}
		if err := os.Chmod(path, cfg.SocketMode); err != nil {
			ln.Close()
			return nil, fmt.Errorf("setting the mode of %s: %w", path, err)
		}
		s.socket = path
	} else if ln, err = net.Listen("tcp", cfg.Addr); err != nil {
		return nil, err
	}
	var sem chan struct{}
	if cfg.MaxConns > 0 {
		sem = make(chan struct{}, cfg.MaxConns)
	}
	s.ln = &limitListener{Listener: ln, sem: sem, conns: s.conns, closed: make(chan struct{})}
	if cfg.TLS != nil {
		// Over the limit listener: a connection counts from its handshake,
		// and closing the raw connections still closes everything.
		s.ln = tls.NewListener(s.ln, cfg.TLS)
	}
	s.srv = &http.Server{
		Handler:           cfg.Handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          cfg.ErrorLog,
		// OPTIONS * goes to the handler, through its inbound checks, rather
		// than being answered 200 by net/http itself.
		DisableGeneralOptionsHandler: true,
	}
	return s, nil
}

// Addr is where the server listens.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve answers requests until Shutdown. It returns nil after Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting, lets in-flight requests finish until ctx ends,
// then closes every connection left, hijacked ones included, and removes
// the unix socket.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	s.conns.closeAll()
	if err != nil {
		s.srv.Close()
	}
	if s.socket != "" {
		os.Remove(s.socket)
	}
	return err
}

// removeStaleSocket removes a socket file that nobody serves on any more
// (a crash leaves one behind). It never removes anything else.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; not replacing it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("another process is serving on %s", path)
	}
	return os.Remove(path)
}

// limitListener caps open connections (accepting waits while at the cap)
// and tracks them all.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	conns     *connSet
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *limitListener) Accept() (net.Conn, error) {
	if l.sem != nil {
		select {
		case l.sem <- struct{}{}:
		case <-l.closed:
			return nil, net.ErrClosed
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		if l.sem != nil {
			<-l.sem
		}
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns.add(tc)
	return tc, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

type trackedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.conns.remove(c)
		if c.l.sem != nil {
			<-c.l.sem
		}
	})
	return err
}

type connSet struct {
	mu sync.Mutex
	m  map[*trackedConn]struct{}
}

func (s *connSet) add(c *trackedConn) {
	s.mu.Lock()
	s.m[c] = struct{}{}
	s.mu.Unlock()
}

func (s *connSet) remove(c *trackedConn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.m))
	for c := range s.m {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}
