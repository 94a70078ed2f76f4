package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func randomString(prefix string) string {
	b := make([]byte, 12)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// tokenRequest is what the fault-injecting token endpoint saw.
type tokenRequest struct {
	contentType string
	params      map[string]string
	basicUser   string
	basicPass   string
	header      http.Header
}

// tokenServer is a Go token endpoint whose answers a test scripts: the
// error paths a certified server will not produce on demand.
type tokenServer struct {
	*httptest.Server
	hits  atomic.Int64
	mu    sync.Mutex
	reqs  []tokenRequest
	valid map[string]bool
	// reply answers the n-th request (from 1); nil issues a token valid an hour.
	reply func(n int64, req tokenRequest) (status int, header map[string]string, body string)
	delay time.Duration
}

func newTokenServer(t *testing.T, reply func(n int64, req tokenRequest) (int, map[string]string, string)) *tokenServer {
	s := &tokenServer{valid: map[string]bool{}, reply: reply}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *tokenServer) serve(w http.ResponseWriter, r *http.Request) {
	n := s.hits.Add(1)
	req := tokenRequest{contentType: r.Header.Get("Content-Type"), params: map[string]string{}, header: r.Header.Clone()}
	req.basicUser, req.basicPass, _ = r.BasicAuth()
	req.basicUser, _ = url.QueryUnescape(req.basicUser)
	req.basicPass, _ = url.QueryUnescape(req.basicPass)
	body, _ := io.ReadAll(r.Body)
	if strings.HasPrefix(req.contentType, "application/json") {
		json.Unmarshal(body, &req.params)
	} else {
		form, _ := url.ParseQuery(string(body))
		for k := range form {
			req.params[k] = form.Get(k)
		}
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	reply, delay := s.reply, s.delay
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	status, hdr, out := 200, map[string]string{}, ""
	if reply != nil {
		status, hdr, out = reply(n, req)
	} else {
		out = s.okBody(s.issue(), 3600, "")
	}
	if _, set := hdr["Content-Type"]; !set {
		w.Header().Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		w.Header().Set(k, v)
	}
	w.WriteHeader(status)
	io.WriteString(w, out)
}

// issue makes a token this server will vouch for (and that must never
// reach a log).
func (s *tokenServer) issue() string {
	tok := randomString("e2e-token-")
	s.mu.Lock()
	s.valid[tok] = true
	s.mu.Unlock()
	addCanary(tok)
	return tok
}

func (s *tokenServer) okBody(tok string, expiresIn int, extra string) string {
	return fmt.Sprintf(`{"access_token":%q,"token_type":"Bearer","expires_in":%d%s}`, tok, expiresIn, extra)
}

func (s *tokenServer) verify(tok string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.valid[tok] {
		return errors.New("unknown token")
	}
	return nil
}

func (s *tokenServer) requests() []tokenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]tokenRequest(nil), s.reqs...)
}

// apiRequest is what the upstream API saw.
type apiRequest struct {
	method string
	uri    string
	host   string
	header http.Header
	body   []byte
	token  string
}

// api is an upstream that demands a valid bearer token.
type api struct {
	*httptest.Server
	verify func(tok string) error
	// reject, when set, answers 401 to the n-th request (from 1) whatever its token.
	reject func(n int64, tok string) bool
	delay  time.Duration
	hits   atomic.Int64
	mu     sync.Mutex
	seen   []apiRequest
}

func newAPI(t *testing.T, verify func(string) error) *api {
	a := &api{verify: verify}
	a.Server = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.Close)
	return a
}

func (a *api) serve(w http.ResponseWriter, r *http.Request) {
	n := a.hits.Add(1)
	body, _ := io.ReadAll(r.Body)
	auth := r.Header.Values("Authorization")
	tok := ""
	if len(auth) == 1 {
		tok, _ = strings.CutPrefix(auth[0], "Bearer ")
	}
	addCanary(tok)
	a.mu.Lock()
	a.seen = append(a.seen, apiRequest{r.Method, r.RequestURI, r.Host, r.Header.Clone(), body, tok})
	reject, delay := a.reject, a.delay
	a.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if len(auth) != 1 || a.verify(tok) != nil || (reject != nil && reject(n, tok)) {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":"invalid_token"}`)
		return
	}
	sum := sha256.Sum256(body)
	json.NewEncoder(w).Encode(map[string]any{"ok": true, "uri": r.RequestURI, "body_sha256": hex.EncodeToString(sum[:]), "body_len": len(body)})
}

func (a *api) requests() []apiRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]apiRequest(nil), a.seen...)
}

func (a *api) last(t *testing.T) apiRequest {
	t.Helper()
	reqs := a.requests()
	if len(reqs) == 0 {
		t.Fatal("nothing reached the upstream")
	}
	return reqs[len(reqs)-1]
}

// config is a minimal proxy config: one oauth2 entry and one route to
// upstream under /api/. entry holds the oauth2 entry's keys, indented by 4.
func config(upstream, entry string, routeExtra ...string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
log: {level: debug, format: json}
oauth2:
  e2e:
%s
routes:
  - prefix: /api/
    upstream: %s/
    oauth2: e2e
%s`, entry, upstream, strings.Join(routeExtra, "\n"))
}
