package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// TestWebSocketUpgrade: an upgrade request gets the token, and bytes flow
// both ways once the upstream switches protocols.
func TestWebSocketUpgrade(t *testing.T) {
	gotAuth := make(chan string, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth <- r.Header.Get("Authorization")
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "no upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo: " + line)
		brw.Flush()
	}))
	defer up.Close()
	base, _ := newProxy(t, Inbound{}, testRoute(t, "/ws/", up.URL))

	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nAuthorization: Bearer forged\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if auth := <-gotAuth; auth != "Bearer tok1" {
		t.Errorf("upstream Authorization = %q", auth)
	}
	fmt.Fprint(conn, "hello\n")
	if line, err := br.ReadString('\n'); err != nil || line != "echo: hello\n" {
		t.Errorf("through the upgraded connection: %q %v", line, err)
	}
}

func TestTrailersAnd1xxPass(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Set("Trailer", "X-Checksum")
		w.WriteHeader(200)
		io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc123")
	}))
	defer up.Close()
	base, _ := newProxy(t, Inbound{}, testRoute(t, "/t/", up.URL))
	var early []int
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		early = append(early, code)
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", base+"/t/x", nil)
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "body" || resp.Trailer.Get("X-Checksum") != "abc123" {
		t.Errorf("body %q, trailer %v", body, resp.Trailer)
	}
	if len(early) != 1 || early[0] != 103 {
		t.Errorf("1xx responses = %v, want [103]", early)
	}
}

// TestExpectContinueEarlyAnswer: a client that waits for 100 Continue and
// an upstream that answers before reading the body: nobody hangs.
func TestExpectContinueEarlyAnswer(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden) // refuses without reading the body
	}))
	defer up.Close()
	buffered := testRoute(t, "/buffered/", up.URL)
	streamed := testRoute(t, "/streamed/", up.URL)
	streamed.RetryOn = nil
	base, _ := newProxy(t, Inbound{}, buffered, streamed)
	client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: 10 * time.Second, TLSClientConfig: &tls.Config{}}}
	for _, path := range []string{"/buffered/x", "/streamed/x"} {
		req, _ := http.NewRequest("POST", base+path, bytes.NewReader(make([]byte, 64<<10)))
		req.Header.Set("Expect", "100-continue")
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 || time.Since(start) > 3*time.Second {
			t.Errorf("%s: %d after %v", path, resp.StatusCode, time.Since(start))
		}
	}
}

// TestConnectionHeaderCannotStripTheToken: "Connection: Authorization"
// names a header as hop-by-hop; the token is set after that removal.
func TestConnectionHeaderCannotStripTheToken(t *testing.T) {
	up := newUpstream(t, nil)
	base, _ := newProxy(t, Inbound{}, testRoute(t, "/c/", up.URL))
	status, _, _ := rawGet(t, base, "/c/x", "Connection: Authorization, X-Keep\r\n", "X-Keep: 1\r\n")
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	r, _ := up.last(t)
	if r.Header.Get("Authorization") != "Bearer tok1" {
		t.Errorf("Authorization = %q", r.Header.Get("Authorization"))
	}
	if r.Header.Get("X-Keep") != "" {
		t.Error("a header named in Connection was forwarded")
	}
}

func TestCompressionPassesThrough(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("X-Got-Accept-Encoding", r.Header.Get("Accept-Encoding"))
		w.Write([]byte("\x1f\x8bnot really gzip"))
	})
	base, _ := newProxy(t, Inbound{}, testRoute(t, "/z/", up.URL))
	resp, body := get(t, base+"/z/x", "Accept-Encoding", "gzip, br")
	if resp.Header.Get("Content-Encoding") != "gzip" || resp.Header.Get("X-Got-Accept-Encoding") != "gzip, br" || string(body) != "\x1f\x8bnot really gzip" {
		t.Errorf("encoding %q, upstream saw %q, body %q", resp.Header.Get("Content-Encoding"), resp.Header.Get("X-Got-Accept-Encoding"), body)
	}
}
