package mail

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// relay copies bytes both ways between the logged-in client and server,
// untouched, until both sides are done or neither has sent anything for
// IdleTimeout. Bytes the client pipelined after its login and the server
// sent after its success are in the readers' buffers and go first.
func (s *session) relay(sc *serverConn) {
	s.out.Result, s.out.Reason = ResultOK, ""
	rl := &relayer{client: s.conn, server: sc.conn, idle: s.l.idleTimeout()}
	rl.touch(true)
	s.conn.SetWriteDeadline(time.Time{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		rl.copy(sc.conn, s.r, &s.out.BytesIn, true)
	}()
	go func() {
		defer wg.Done()
		rl.copy(s.conn, sc.r, &s.out.BytesOut, false)
	}()
	wg.Wait()
	if rl.timedOut.Load() {
		s.out.Reason = "idle timeout"
	}
}

type relayer struct {
	client, server net.Conn
	idle           time.Duration
	last           atomic.Int64 // when deadlines were last pushed, unix ns
	timedOut       atomic.Bool
	closeOnce      sync.Once
}

// touch pushes both read deadlines out: traffic either way keeps the
// session alive (an IMAP IDLE client only ever reads). To keep the cost
// off the copy loop it does so at most once a second.
func (rl *relayer) touch(force bool) {
	now := time.Now()
	if !force && now.UnixNano()-rl.last.Load() < int64(time.Second) {
		return
	}
	rl.last.Store(now.UnixNano())
	d := now.Add(rl.idle)
	rl.client.SetReadDeadline(d)
	rl.server.SetReadDeadline(d)
}

// copy moves bytes from src to dst. When the client ends its side
// (halfClose) the server's side is shut for writing, so that the server
// can still answer (a POP3 client that sends QUIT and shuts its side
// still gets +OK). When the server ends its side, or on any failure, both
// connections are closed, which also ends the other direction: a mail
// server that has hung up will not answer again.
//
// A session spends most of its life idle (IMAP IDLE waits for 30 minutes),
// blocked in a Read: it does so with a small buffer of its own, and takes
// a large pooled one only while a read fills the small one (a message
// flowing), giving it back at the first short read.
func (rl *relayer) copy(dst net.Conn, src io.Reader, n *int64, halfClose bool) {
	var small [2 << 10]byte
	buf := small[:]
	var big *[]byte
	defer func() {
		if big != nil {
			bigBuffers.Put(big)
		}
	}()
	for {
		nr, err := src.Read(buf)
		if nr > 0 {
			rl.touch(false)
			nw, werr := dst.Write(buf[:nr])
			atomic.AddInt64(n, int64(nw))
			if werr != nil {
				rl.closeBoth()
				return
			}
		}
		switch {
		case big == nil && nr == len(buf):
			big = bigBuffers.Get().(*[]byte)
			buf = *big
		case big != nil && nr < len(small):
			bigBuffers.Put(big)
			big, buf = nil, small[:]
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) && halfClose {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				return
			}
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			rl.timedOut.Store(true)
		}
		rl.closeBoth()
		return
	}
}

// bigBuffers are the relay's buffers for data in flight.
var bigBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (rl *relayer) closeBoth() {
	rl.closeOnce.Do(func() {
		rl.client.Close()
		rl.server.Close()
	})
}
