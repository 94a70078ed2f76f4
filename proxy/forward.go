package proxy

import (
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// forward is the request path of every request that does not ask for a
// protocol upgrade: what httputil.ReverseProxy.ServeHTTP does, step for
// step, with the work a proxied request does not need left out. The
// outgoing request is built in one allocation with its headers filtered
// while they are copied (ReverseProxy clones them, then deletes a dozen
// keys one by one); response headers are handed over, not copied value by
// value; the token is attached without a round through an http.RoundTripper
// interface; copy buffers come from a pool that allocates nothing. Upgrade
// requests (WebSocket) keep going through rt.rp, whose hijack and tunnel
// code is not worth repeating.
//
// Each step names the ReverseProxy behaviour it keeps; the tests of the
// package run against both paths.
func (rt *route) forward(w http.ResponseWriter, in *http.Request, start time.Time, o *Outcome) {
	f := &fwdState{w: w}
	// 1xx responses (103 Early Hints) go to the client as they come.
	f.trace.Got1xxResponse = f.got1xx
	out := &f.req
	// As Request.Clone: a shallow copy, then what must not be shared.
	*out = *in.WithContext(httptrace.WithClientTrace(in.Context(), &f.trace))
	f.url = *in.URL
	if in.URL.User != nil {
		u := *in.URL.User
		f.url.User = &u
	}
	out.URL = &f.url
	out.Header = rt.outHeader(in.Header)
	out.Trailer = in.Trailer.Clone()
	if in.ContentLength == 0 {
		out.Body = nil // as ReverseProxy (Issue 16036): nil Body for Transport retries
	}
	if out.Body != nil {
		// The transport may close the body it is given when it fails; the
		// client's body must stay open (ReverseProxy's noopCloseReader).
		f.body.rc = out.Body
		out.Body = &f.body
		defer f.body.Close()
	}
	out.Close = false

	rt.setURL(in, out)
	if rt.ForwardedHeaders {
		(&httputil.ProxyRequest{In: in, Out: out}).SetXForwarded()
	}
	for k, v := range rt.set {
		out.Header[k] = v
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = emptyValue // no Go default User-Agent
	}

	res, err := rt.roundTrip(out, start, o)
	f.mu.Lock()
	f.done = true
	f.mu.Unlock()
	if err != nil {
		rt.handleError(w, out, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// Nothing asked for an upgrade (those requests go through rt.rp):
		// ReverseProxy refuses the switch the same way.
		if rt.modifyResponse(res) == nil {
			resUp := upgradeType(res.Header)
			if !isPrint(resUp) {
				err = fmt.Errorf("backend tried to switch to invalid protocol %q", resUp)
			} else {
				err = fmt.Errorf("backend tried to switch protocol %q when %q was requested", resUp, "")
			}
			rt.handleError(w, out, err)
		}
		return
	}
	removeHopByHop(res.Header)
	if err := rt.modifyResponse(res); err != nil {
		res.Body.Close()
		rt.handleError(w, out, err)
		return
	}

	h := w.Header()
	for k, vv := range res.Header {
		if len(h[k]) == 0 {
			h[k] = vv // the response is the proxy's to give away
		} else {
			h[k] = append(h[k], vv...)
		}
	}
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, len(res.Trailer))
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)

	if err := rt.copyResponse(w, res); err != nil {
		defer res.Body.Close()
		// As ReverseProxy (Issue 23643): abort the response, which has
		// started; the server recovers the panic.
		if in.Context().Value(http.ServerContextKey) == nil {
			rt.errLog.Printf("suppressing panic for copyResponse error in test; copy error: %v", err)
			return
		}
		panic(http.ErrAbortHandler)
	}
	res.Body.Close() // now, to fill res.Trailer

	if len(res.Trailer) > 0 {
		// Chunked, so that net/http adds no Content-Length to a short body.
		http.NewResponseController(w).Flush()
	}
	if len(res.Trailer) == announced {
		copyHeader(h, res.Trailer)
		return
	}
	for k, vv := range res.Trailer {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			h.Add(k, v)
		}
	}
}

// fwdState is the state of one forwarded request, allocated once.
type fwdState struct {
	req   http.Request
	url   url.URL
	body  noopCloseReader
	trace httptrace.ClientTrace
	w     http.ResponseWriter
	mu    sync.Mutex
	done  bool // RoundTrip has returned: 1xx may no longer touch w
}

func (f *fwdState) got1xx(code int, header textproto.MIMEHeader) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return nil
	}
	h := f.w.Header()
	copyHeader(h, http.Header(header))
	f.w.WriteHeader(code)
	clear(h) // WriteHeader does not for 1xx
	return nil
}

// noopCloseReader keeps the client's body open when the transport closes
// the outgoing request's.
type noopCloseReader struct {
	rc     io.ReadCloser
	closed atomic.Bool
}

func (r *noopCloseReader) Read(p []byte) (int, error) {
	if r.closed.Load() {
		return 0, errReadClosed
	}
	return r.rc.Read(p)
}

func (r *noopCloseReader) Close() error {
	r.closed.Store(true)
	return nil
}

var errReadClosed = fmt.Errorf("proxy: read of a request body after the request ended")

// emptyValue is a shared header value nothing writes to.
var emptyValue = []string{""}

// outHeader returns the headers of the outgoing request: in's, less the
// hop-by-hop ones (RFC 9110 §7.6.1: those Connection names and the usual
// list), the client's forwarding claims and what sanitize drops. Values
// are shared with in: neither side changes a value in place.
func (rt *route) outHeader(in http.Header) http.Header {
	out := make(http.Header, len(in)+len(rt.set)+3) // room for User-Agent, Te, X-Forwarded-*
	for k, v := range in {
		if !hopByHop(k) && !rt.drop(k) {
			out[k] = v
		}
	}
	for _, f := range in["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				out.Del(sf)
			}
		}
	}
	// Issue 21096: the upstream learns that trailers get through when the
	// client said it takes them.
	if hasToken(in["Te"], "trailers") && !rt.drop("Te") {
		out["Te"] = teTrailers
	}
	return out
}

var teTrailers = []string{"trailers"}

// hopByHop reports the hop-by-hop headers ReverseProxy removes (RFC 2616
// §13.5.1, kept by RFC 9110's Connection rule).
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// removeHopByHop removes the hop-by-hop headers of a response.
func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for k := range h {
		if hopByHop(k) {
			delete(h, k)
		}
	}
}

// hasToken reports whether a comma-separated list among values holds
// token, case-insensitively (httpguts.HeaderValuesContainsToken).
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.Trim(t, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// upgradeType is the protocol h asks to switch to, or "".
func upgradeType(h http.Header) string {
	if !hasToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

func isPrint(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// copyResponse copies the body as ReverseProxy does: streamed responses
// (no Content-Length, or Server-Sent Events) are flushed at every write,
// headers first.
func (rt *route) copyResponse(w http.ResponseWriter, res *http.Response) error {
	var dst io.Writer = w
	if streamed(res) {
		fw := &flushEach{w: w, rc: http.NewResponseController(w)}
		fw.rc.Flush()
		dst = fw
	}
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	for {
		nr, rerr := res.Body.Read(*buf)
		if rerr != nil && rerr != io.EOF && rerr != context.Canceled {
			rt.errLog.Printf("httputil: ReverseProxy read error during body copy: %v", rerr)
		}
		if nr > 0 {
			nw, werr := dst.Write((*buf)[:nr])
			if werr != nil {
				return werr
			}
			if nr != nw {
				return io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
	}
}

// streamed reports whether a response is flushed as it comes (ReverseProxy's
// flushInterval -1).
func streamed(res *http.Response) bool {
	if res.ContentLength == -1 {
		return true
	}
	ct := res.Header.Get("Content-Type")
	if len(ct) < len("text/event-stream") || !containsFold(ct, "event-stream") {
		return false // ParseMediaType allocates: only when it could say yes
	}
	base, _, _ := mime.ParseMediaType(ct)
	return base == "text/event-stream"
}

func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// flushEach flushes after every write.
type flushEach struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushEach) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	f.rc.Flush()
	return n, err
}

// copyBufs are the 32 KiB buffers bodies are copied with; a *[]byte, so
// that Put allocates nothing.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
