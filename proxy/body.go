package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
)

// Buffers for replayable bodies come from pools by size class, so that a
// steady stream of POSTs does not churn the heap.
var bodyClasses = [...]int{4 << 10, 32 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20}

var bodyPools [len(bodyClasses)]sync.Pool

func getBuf(n int) *[]byte {
	for i, c := range bodyClasses {
		if n <= c {
			if b, ok := bodyPools[i].Get().(*[]byte); ok {
				*b = (*b)[:0]
				return b
			}
			b := make([]byte, 0, c)
			return &b
		}
	}
	b := make([]byte, 0, n)
	return &b
}

func putBuf(b *[]byte) {
	for i, c := range bodyClasses {
		if cap(*b) == c {
			bodyPools[i].Put(b)
			return
		}
	}
}

// replay holds a request body that can be sent again. It is shared by the
// readers of every attempt and by the transport that decides on retries,
// and goes back to its pool when the last of them lets go: the transport
// may close an attempt's body after RoundTrip has returned.
type replay struct {
	buf  *[]byte
	refs atomic.Int32
}

// bufferBody reads req's body up to limit bytes. If it all fits, req gets a
// replayable body (and GetBody) and bufferBody returns its replay. If not,
// req gets a body that streams the part read and then the rest, and the
// replay is nil: that request cannot be retried.
func bufferBody(req *http.Request, limit int64) (*replay, error) {
	if req.ContentLength > limit {
		return nil, nil
	}
	// With a Content-Length the server's body reader ends the body there;
	// without one, one byte more than the limit tells "exactly limit" from "more".
	max, first := int(limit)+1, 32<<10
	if req.ContentLength >= 0 {
		max, first = int(req.ContentLength), int(req.ContentLength)
	}
	b, err := readUpTo(req.Body, getBuf(min(first, max)), max)
	n := len(*b)
	if err != nil {
		putBuf(b)
		req.Body.Close()
		return nil, err
	}
	if n > int(limit) { // too large to keep: send what was read, then the rest
		// The prefix is not pooled: the transport may still read it after
		// giving up on the request.
		rest := req.Body
		req.Body = &prefixedBody{Reader: io.MultiReader(bytes.NewReader(*b), rest), rest: rest}
		req.GetBody = nil
		return nil, nil
	}
	req.Body.Close()
	rp := &replay{buf: b}
	rp.refs.Store(1) // the caller's reference, dropped by done
	req.Body = rp.reader()
	req.GetBody = func() (io.ReadCloser, error) {
		if r := rp.reader(); r != nil {
			return r, nil
		}
		return nil, errors.New("proxy: request body already released")
	}
	req.ContentLength = int64(n)
	return rp, nil
}

// readUpTo appends from r to *b until EOF or max bytes, moving to a larger
// pooled buffer as needed; it returns the buffer that holds the bytes.
func readUpTo(r io.Reader, b *[]byte, max int) (*[]byte, error) {
	for len(*b) < max {
		if len(*b) == cap(*b) {
			nb := getBuf(min(2*cap(*b), max))
			*nb = append(*nb, *b...)
			putBuf(b)
			b = nb
		}
		buf := *b
		n, err := r.Read(buf[len(buf):min(cap(buf), max)])
		*b = buf[:len(buf)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
	return b, nil
}

// reader returns a new reader of the body, or nil once released.
func (rp *replay) reader() io.ReadCloser {
	for {
		n := rp.refs.Load()
		if n <= 0 {
			return nil
		}
		if rp.refs.CompareAndSwap(n, n+1) {
			return &replayReader{r: bytes.NewReader(*rp.buf), rp: rp}
		}
	}
}

// done drops the caller's reference. A nil replay is fine.
func (rp *replay) done() {
	if rp != nil {
		rp.release()
	}
}

func (rp *replay) release() {
	if rp.refs.Add(-1) == 0 {
		putBuf(rp.buf)
	}
}

// replayReader reads a replay. Read and Close exclude each other: a
// transport may close a body from another goroutine while reading it, and
// the buffer must not go back to the pool, to be refilled with another
// request's bytes, under a Read.
type replayReader struct {
	mu     sync.Mutex
	r      *bytes.Reader
	rp     *replay
	closed bool
}

func (r *replayReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errors.New("proxy: read of a closed request body")
	}
	return r.r.Read(p)
}

func (r *replayReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		r.rp.release()
	}
	return nil
}

type prefixedBody struct {
	io.Reader
	rest io.ReadCloser
}

func (p *prefixedBody) Close() error { return p.rest.Close() }
