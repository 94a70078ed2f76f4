package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSpilledBodiesKeepHeapFlat sends 16 concurrent 1 MiB POSTs whose
// first attempt the upstream rejects with 401 once all 16 are in, so that
// every body is held for its retry at the same moment. The proxy's heap
// must then hold their 64 KiB heads, not 16 MiB, and each retry must carry
// the exact bytes of the first attempt, read back from the file.
func TestSpilledBodiesKeepHeapFlat(t *testing.T) {
	const clients, size = 16, 1 << 20
	for _, tc := range []struct {
		name     string
		dir      func(t *testing.T) string
		maxGrowM uint64 // heap growth allowed while all bodies are held, MiB; 0: not checked
	}{
		{"spilled to a directory", func(t *testing.T) string { return t.TempDir() }, 8},
		// A directory that cannot take files: bodies stay in memory, as
		// without spilling, and are replayed all the same.
		{"no usable directory", func(t *testing.T) string { return filepath.Join(t.TempDir(), "missing") }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			body := make([]byte, size)
			rand.Read(body)
			want := sha256.Sum256(body)

			var (
				mu       sync.Mutex
				got      = map[string]int{} // attempt token -> bodies with the right hash
				arrived  = make(chan struct{}, clients)
				release  = make(chan struct{})
				heapPeak uint64
			)
			// Hashes bodies as they stream: it keeps none in memory.
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tok := r.Header.Get("Authorization")
				hash := sha256.New()
				io.Copy(hash, r.Body)
				mu.Lock()
				if bytes.Equal(hash.Sum(nil), want[:]) {
					got[tok]++
				}
				mu.Unlock()
				if tok == "Bearer tok1" {
					arrived <- struct{}{}
					<-release
					w.WriteHeader(http.StatusUnauthorized)
				}
			}))
			t.Cleanup(up.Close)
			rt := testRoute(t, "/api/", up.URL+"/")
			rt.Transport = NewTransport(TransportOptions{ResponseHeaderTimeout: 30 * time.Second})
			rt.Tokens = &fakeTokens{}
			h := newHandler(t, Options{BodyBufferDir: dir, Logger: slog.New(slog.DiscardHandler)}, Inbound{}, rt)
			srv := newTestServer(t, h)

			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			base := ms.HeapAlloc

			var wg sync.WaitGroup
			statuses := make(chan int, clients)
			for range clients {
				wg.Go(func() {
					req, _ := http.NewRequest("POST", srv+"/api/upload", bytes.NewReader(body))
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					statuses <- resp.StatusCode
				})
			}
			for range clients { // every body is buffered in the proxy now
				<-arrived
			}
			runtime.GC()
			runtime.ReadMemStats(&ms)
			heapPeak = ms.HeapAlloc
			if tc.maxGrowM > 0 {
				if entries, _ := os.ReadDir(dir); len(entries) != 0 {
					t.Errorf("%d files left in %s while held: they should be unlinked at once", len(entries), dir)
				}
				if n := openIn(t, dir); n != clients {
					t.Errorf("%d open files in %s while 16 bodies are held, want 16", n, dir)
				}
			}
			close(release)
			wg.Wait()
			close(statuses)
			for s := range statuses {
				if s != 200 {
					t.Errorf("status %d, want 200 after the retry", s)
				}
			}
			mu.Lock()
			if got["Bearer tok1"] != clients || got["Bearer tok2"] != clients {
				t.Errorf("bodies with the right bytes: %v, want %d on each attempt", got, clients)
			}
			mu.Unlock()
			growth := (int64(heapPeak) - int64(base)) >> 20
			t.Logf("heap growth with %d bodies of 1 MiB held: %d MiB", clients, growth)
			if tc.maxGrowM > 0 && growth > int64(tc.maxGrowM) {
				t.Errorf("heap grew by %d MiB with %d bodies held, want at most %d", growth, clients, tc.maxGrowM)
			}
			if tc.maxGrowM > 0 {
				waitClosed(t, dir, h)
				if n := len(h.spill.idle); n == 0 || n > cap(h.spill.idle) {
					t.Errorf("%d files kept for reuse, want 1 to %d", n, cap(h.spill.idle))
				}
			}
		})
	}
}

// TestSpilledBodyOverLimitStreams: a chunked body larger than the limit
// (and than the in-memory head) reaches the upstream whole, spilled part
// included, and is not retried.
func TestSpilledBodyOverLimitStreams(t *testing.T) {
	body := make([]byte, 300<<10)
	rand.Read(body)
	var attempts int
	var mu sync.Mutex
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, b []byte) {
		mu.Lock()
		attempts++
		mu.Unlock()
		if !bytes.Equal(b, body) {
			t.Errorf("upstream got %d bytes, not the %d sent", len(b), len(body))
		}
		w.WriteHeader(http.StatusUnauthorized)
	})
	rt := testRoute(t, "/api/", up.URL+"/")
	rt.RetryBodyLimit = 200 << 10
	dir := t.TempDir()
	rt.Transport = NewTransport(TransportOptions{})
	rt.Tokens = &fakeTokens{}
	h := newHandler(t, Options{BodyBufferDir: dir, Logger: slog.New(slog.DiscardHandler)}, Inbound{}, rt)
	srv := newTestServer(t, h)
	req, _ := http.NewRequest("POST", srv+"/api/x", io.MultiReader(bytes.NewReader(body))) // no length: chunked
	resp, _ := do(t, req)
	if resp.StatusCode != 401 || attempts != 1 {
		t.Errorf("status %d after %d attempts, want the upstream's 401 after 1", resp.StatusCode, attempts)
	}
	waitClosed(t, dir, h)
}

func newTestServer(t *testing.T, h http.Handler) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// openIn counts this process's open files under dir (Linux: -1 elsewhere).
func openIn(t *testing.T, dir string) int {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(l, dir+"/") {
			n++
		}
	}
	return n
}

// waitClosed waits for every body file under dir to be closed or back in
// h's pool of idle files: the transport may close a request's body just
// after its response is back.
func waitClosed(t *testing.T, dir string, h *Handler) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := openIn(t, dir) - len(h.spill.idle)
		if n <= 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d body files under %s still open after the requests", n, dir)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
