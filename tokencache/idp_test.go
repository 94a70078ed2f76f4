package tokencache

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// fakeIdP is an in-memory token endpoint: an http.RoundTripper, so that the
// tests run inside a testing/synctest bubble, where time is virtual and
// "every goroutine is blocked" can be waited for. It counts requests and
// issues t1, t2, ... unless reply says otherwise.
type fakeIdP struct {
	hits  atomic.Int64
	mu    sync.Mutex
	reply func(n int64, r seen) (status int, body string)
	// gate, when set, holds every request until it is closed.
	gate chan struct{}
	// header is added to every answer.
	header map[string]string
	seen   []seen
}

// seen is what the fake IdP saw of one request.
type seen struct {
	method string
	url    *url.URL
	header http.Header
	form   url.Values
	json   map[string]string
	user   string
	pass   string
	basic  bool
}

func (f *fakeIdP) RoundTrip(r *http.Request) (*http.Response, error) {
	n := f.hits.Add(1)
	s := seen{method: r.Method, url: r.URL, header: r.Header.Clone()}
	s.user, s.pass, s.basic = r.BasicAuth()
	if r.Body != nil {
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			json.Unmarshal(body, &s.json)
		} else {
			s.form, _ = url.ParseQuery(string(body))
		}
	}
	if s.form == nil {
		s.form = r.URL.Query()
	}
	f.mu.Lock()
	f.seen = append(f.seen, s)
	gate, reply := f.gate, f.reply
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	status, body := 200, fmt.Sprintf(`{"access_token":"t%d","token_type":"Bearer","expires_in":3600}`, n)
	if reply != nil {
		status, body = reply(n, s)
	}
	h := http.Header{"Content-Type": {"application/json"}}
	for k, v := range f.header {
		h.Set(k, v)
	}
	return &http.Response{
		StatusCode: status,
		Header:     h,
		Body:       io.NopCloser(strings.NewReader(body)),
		Request:    r,
	}, nil
}

// requests returns what the IdP saw so far.
func (f *fakeIdP) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.seen...)
}

// grants lists the grant_type of every request so far.
func (f *fakeIdP) grants() []string {
	var out []string
	for _, s := range f.requests() {
		out = append(out, s.form.Get("grant_type"))
	}
	return out
}

const testTokenURL = "https://idp.test/token"

// testConfig is a client_credentials entry with Basic auth against idp.
func testConfig(idp http.RoundTripper) Config {
	return Config{
		Name:     "test",
		Client:   &Client{Name: "test", Auth: ClientSecretBasic{ClientID: "id", Secret: NewClientSecret("secret", nil)}, HTTP: NewHTTPClient(0, idp)},
		TokenURL: testTokenURL,
		Grant:    ClientCredentials{},
		Logger:   slog.New(slog.DiscardHandler),
	}
}

func newSource(t *testing.T, idp http.RoundTripper, mod func(*Config)) *Source {
	t.Helper()
	cfg := testConfig(idp)
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func mustToken(t *testing.T, s *Source) string {
	t.Helper()
	tok, err := s.Token(context.Background())
	if err != nil {
		t.Fatalf("Token(): %v", err)
	}
	return tok
}
