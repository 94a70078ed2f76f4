package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
)

// Buffers for replayable bodies come from pools by size class, so that a
// steady stream of POSTs does not churn the heap.
var bodyClasses = [...]int{4 << 10, 32 << 10, 64 << 10, spillChunk, 1 << 20, 4 << 20, 16 << 20}

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

// spillHead is how much of a replayable body stays in memory; the rest
// goes to a temporary file (as nginx's client_body_buffer_size), so that
// concurrent large uploads cost disk cache, not heap.
const spillHead = 64 << 10

// replay holds a request body that can be sent again: its first spillHead
// bytes in memory, the rest (if any) in an unlinked temporary file. It is
// shared by the readers of every attempt and by the transport that decides
// on retries, and is released when the last of them lets go: the
// transport may close an attempt's body after RoundTrip has returned.
type replay struct {
	buf   *[]byte
	file  *os.File // nil: all in buf
	fsize int64
	files *spillFiles // where file goes back
	refs  atomic.Int32
}

// bufferBody reads req's body up to limit bytes. If it all fits, req gets a
// replayable body (and GetBody) and bufferBody returns its replay. If not,
// req gets a body that streams the part read and then the rest, and the
// replay is nil: that request cannot be retried. Past spillHead bytes the
// body goes to a temporary file of files.
func bufferBody(req *http.Request, limit int64, files *spillFiles) (*replay, error) {
	if req.ContentLength > limit {
		return nil, nil
	}
	// With a Content-Length the server's body reader ends the body there;
	// without one, one byte more than the limit tells "exactly limit" from "more".
	max, first := int(limit)+1, 32<<10
	if req.ContentLength >= 0 {
		max, first = int(req.ContentLength), int(req.ContentLength)
	}
	head := min(max, spillHead)
	b, err := readUpTo(req.Body, getBuf(min(first, head)), head)
	if err != nil {
		putBuf(b)
		req.Body.Close()
		return nil, err
	}
	rp := &replay{buf: b}
	if len(*b) == head && head < max { // more may follow
		if err := rp.spill(req.Body, files, max-head); err != nil {
			rp.free()
			req.Body.Close()
			return nil, err
		}
	}
	n := rp.size()
	if n > limit { // too large to keep: send what was read, then the rest
		// Nothing goes back to a pool: the transport may still read the
		// prefix after giving up on the request. The file is closed with
		// the body; a read after that fails rather than reading reused memory.
		rest := req.Body
		req.Body = &prefixedBody{Reader: io.MultiReader(rp.parts(), rest), rest: rest, rp: rp}
		req.GetBody = nil
		return nil, nil
	}
	req.Body.Close()
	rp.refs.Store(1) // the caller's reference, dropped by done
	req.Body = rp.reader()
	req.GetBody = func() (io.ReadCloser, error) {
		if r := rp.reader(); r != nil {
			return r, nil
		}
		return nil, errors.New("proxy: request body already released")
	}
	req.ContentLength = n
	return rp, nil
}

// spill copies up to max more bytes of r to a temporary file. Without a
// file (none can be created, or writing fails: a full disk) the body stays
// in memory, as it would without spilling. Only a failure reading r, the
// client's body, is an error.
func (rp *replay) spill(r io.Reader, files *spillFiles, max int) error {
	f, err := files.get()
	if err != nil {
		rp.buf, err = readUpTo(r, rp.buf, len(*rp.buf)+max)
		return err
	}
	rp.file, rp.files = f, files
	// Large reads: a socket read and a file write per 256 KiB, not per 32.
	buf := getBuf(spillChunk)
	defer putBuf(buf)
	chunk := (*buf)[:spillChunk]
	for rp.fsize < int64(max) {
		nr, rerr := r.Read(chunk[:min(len(chunk), max-int(rp.fsize))])
		if nr > 0 {
			nw, werr := f.WriteAt(chunk[:nr], rp.fsize)
			rp.fsize += int64(nw)
			if werr != nil {
				// Back to memory: what the file holds, the rest of this
				// read, the rest of the body.
				all := io.MultiReader(rp.parts(), bytes.NewReader(chunk[nw:nr]), r)
				total := len(*rp.buf) + max
				b, err := readUpTo(all, getBuf(min(total, 2*len(*rp.buf))), total)
				rp.files, rp.file, rp.fsize = nil, nil, 0
				f.Close() // not reused: it failed
				putBuf(rp.buf)
				rp.buf = b
				return err
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
	return nil
}

const spillChunk = 256 << 10

// spillFiles are the temporary files of one directory that replayable
// bodies spill to. A file is unlinked as soon as it is created, so that
// nothing is left behind, even by a crash; once a body is done with it, it
// waits for the next body, whose bytes overwrite the pages the kernel
// already holds for it: allocating page cache for every upload costs more
// than the copy itself. At most cap(idle) files wait; more are closed.
type spillFiles struct {
	dir  string // "": os.TempDir()
	idle chan *os.File
}

func newSpillFiles(dir string) *spillFiles {
	return &spillFiles{dir: dir, idle: make(chan *os.File, 16)}
}

func (s *spillFiles) get() (*os.File, error) {
	select {
	case f := <-s.idle:
		return f, nil
	default:
	}
	f, err := os.CreateTemp(s.dir, "oauthproxy-body-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		// Open files cannot be removed everywhere (Windows): the body
		// stays in memory there.
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return f, nil
}

// put takes a file back; size is how much of it the body used.
func (s *spillFiles) put(f *os.File, size int64) {
	if size > 4<<20 { // do not keep the pages of an outsized body
		f.Truncate(0)
	}
	select {
	case s.idle <- f:
	default:
		f.Close()
	}
}

// size is the number of bytes held.
func (rp *replay) size() int64 { return int64(len(*rp.buf)) + rp.fsize }

// parts returns a new reader of the bytes held.
func (rp *replay) parts() io.Reader {
	head := bytes.NewReader(*rp.buf)
	if rp.file == nil {
		return head
	}
	return io.MultiReader(head, io.NewSectionReader(rp.file, 0, rp.fsize))
}

// closeFile gives the file back for the next body.
func (rp *replay) closeFile() {
	if rp.file != nil {
		rp.files.put(rp.file, rp.fsize)
		rp.file, rp.fsize = nil, 0
	}
}

// free gives back what rp holds.
func (rp *replay) free() {
	rp.closeFile()
	putBuf(rp.buf)
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
			return &replayReader{r: rp.parts(), rp: rp}
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
		rp.free()
	}
}

// replayReader reads a replay. Read and Close exclude each other: a
// transport may close a body from another goroutine while reading it, and
// the buffer must not go back to the pool, to be refilled with another
// request's bytes, under a Read.
type replayReader struct {
	mu     sync.Mutex
	r      io.Reader
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
	rp   *replay // its file is closed with the body; its buffer is left to the GC
	once sync.Once
}

func (p *prefixedBody) Close() error {
	// Not back to the pool: the transport may still read the prefix.
	p.once.Do(func() {
		if p.rp.file != nil {
			p.rp.file.Close()
		}
	})
	return p.rest.Close()
}
