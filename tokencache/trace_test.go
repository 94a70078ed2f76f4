package tokencache

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func newRecorder() (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	sr := tracetest.NewSpanRecorder()
	return sr, sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
}

func spansNamed(sr *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, key attribute.Key) attribute.Value {
	for _, a := range s.Attributes() {
		if a.Key == key {
			return a.Value
		}
	}
	return attribute.Value{}
}

// noSecretIn fails if any attribute, event, link attribute or status of
// the spans holds one of secrets.
func noSecretIn(t *testing.T, spans []sdktrace.ReadOnlySpan, secrets ...string) {
	t.Helper()
	for _, s := range spans {
		text := []string{s.Name(), s.Status().Description}
		for _, a := range s.Attributes() {
			text = append(text, a.Value.Emit())
		}
		for _, e := range s.Events() {
			text = append(text, e.Name)
			for _, a := range e.Attributes {
				text = append(text, a.Value.Emit())
			}
		}
		for _, sec := range secrets {
			for _, x := range text {
				if strings.Contains(x, sec) {
					t.Errorf("span %q holds the secret %q: %q", s.Name(), sec, x)
				}
			}
		}
	}
}

// TestFetchSpans: three traced requests wait on one fetch. The fetch is a
// child of the wait span of the request that started it; the other two
// wait spans link to it; the token endpoint gets the fetch's context in
// traceparent.
func TestFetchSpans(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sr, tp := newRecorder()
		idp := &fakeIdP{gate: make(chan struct{})}
		s := newSource(t, idp, nil) // no TracerProvider: the requests' own is used
		tracer := tp.Tracer("test")
		const n = 3
		requests := make([]trace.Span, n)
		errs := make(chan error, n)
		for i := range n {
			ctx, sp := tracer.Start(context.Background(), fmt.Sprintf("request %d", i))
			requests[i] = sp
			go func() {
				_, err := s.Token(ctx)
				sp.End()
				errs <- err
			}()
			synctest.Wait() // the first starts the fetch; the others join it
		}
		close(idp.gate)
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		fetches := spansNamed(sr, "oauth2 token fetch")
		waits := spansNamed(sr, "oauth2 token wait")
		if len(fetches) != 1 || len(waits) != n {
			t.Fatalf("%d fetch and %d wait spans, want 1 and %d", len(fetches), len(waits), n)
		}
		fetch := fetches[0]
		if got := attr(fetch, attrResult).AsString(); got != ResultOK {
			t.Errorf("fetch result = %q, want ok", got)
		}
		if got := attr(fetch, attrOAuth2).AsString(); got != "test" {
			t.Errorf("fetch oauth2 = %q", got)
		}
		if got := attr(fetch, attrGrant).AsString(); got != GrantClientCredentials {
			t.Errorf("fetch grant = %q", got)
		}
		if fetch.SpanKind() != trace.SpanKindClient {
			t.Errorf("fetch kind = %v, want client", fetch.SpanKind())
		}
		var parents, linked int
		for _, w := range waits {
			if w.Parent().TraceID() != w.SpanContext().TraceID() || !w.Parent().IsValid() {
				t.Errorf("wait span %v has no request parent", w.SpanContext().SpanID())
			}
			switch {
			case fetch.Parent().SpanID() == w.SpanContext().SpanID():
				parents++
				if attr(w, attrShared).AsBool() || len(w.Links()) != 0 {
					t.Errorf("the leading wait is shared=%v with %d links", attr(w, attrShared).AsBool(), len(w.Links()))
				}
			case len(w.Links()) == 1 && w.Links()[0].SpanContext.SpanID() == fetch.SpanContext().SpanID():
				linked++
				if !attr(w, attrShared).AsBool() {
					t.Error("a joining wait is not marked shared")
				}
			}
		}
		if parents != 1 || linked != n-1 {
			t.Errorf("fetch is the child of %d waits and linked from %d, want 1 and %d", parents, linked, n-1)
		}
		if fetch.SpanContext().TraceID() != requests[0].SpanContext().TraceID() {
			t.Error("the fetch is not in the trace of the request that started it")
		}
		got := idp.requests()[0].header.Get("Traceparent")
		want := fmt.Sprintf("00-%s-%s-01", fetch.SpanContext().TraceID(), fetch.SpanContext().SpanID())
		if got != want {
			t.Errorf("token endpoint got traceparent %q, want %q", got, want)
		}
		noSecretIn(t, sr.Ended(), "secret", "t1")
	})
}

// TestBackgroundFetchIsARoot: start-up and renewals trace as root spans
// on the configured provider; an untraced caller gets no wait span.
func TestBackgroundFetchIsARoot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sr, tp := newRecorder()
		s := newSource(t, &fakeIdP{}, func(c *Config) { c.TracerProvider = tp })
		s.Start()
		synctest.Wait()
		mustToken(t, s)
		fetches := spansNamed(sr, "oauth2 token fetch")
		if len(fetches) != 1 {
			t.Fatalf("%d fetch spans, want 1", len(fetches))
		}
		if fetches[0].Parent().IsValid() {
			t.Errorf("start-up fetch has parent %v, want a root span", fetches[0].Parent().SpanID())
		}
		if w := spansNamed(sr, "oauth2 token wait"); len(w) != 0 {
			t.Errorf("%d wait spans without a traced caller", len(w))
		}
	})
}

// TestFetchSpanResults: what a failed fetch's span says, and that it
// never holds the client secret or the IdP's description.
func TestFetchSpanResults(t *testing.T) {
	for _, tc := range []struct {
		name, body   string
		status       int
		result, code string
	}{
		{"ok", `{"access_token":"tok-canary","token_type":"Bearer","expires_in":60}`, 200, ResultOK, ""},
		{"refused", `{"error":"invalid_client","error_description":"secret-canary is wrong"}`, 401, ResultRejected, "invalid_client"},
		{"down", `oops secret-canary`, 503, ResultFailed, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sr, tp := newRecorder()
				idp := &fakeIdP{reply: func(int64, seen) (int, string) { return tc.status, tc.body }}
				s := newSource(t, idp, func(c *Config) {
					c.TracerProvider = tp
					c.Client.Auth = ClientSecretBasic{ClientID: "id", Secret: NewClientSecret("secret-canary", nil)}
				})
				s.Fetch(context.Background())
				fetches := spansNamed(sr, "oauth2 token fetch")
				if len(fetches) != 1 {
					t.Fatalf("%d fetch spans, want 1", len(fetches))
				}
				f := fetches[0]
				if got := attr(f, attrResult).AsString(); got != tc.result {
					t.Errorf("result = %q, want %q", got, tc.result)
				}
				if got := attr(f, attrIdPError).AsString(); got != tc.code {
					t.Errorf("idp_error = %q, want %q", got, tc.code)
				}
				if tc.status != 200 {
					if got := attr(f, attrStatus).AsInt64(); got != int64(tc.status) {
						t.Errorf("status = %d, want %d", got, tc.status)
					}
				}
				noSecretIn(t, sr.Ended(), "secret-canary", "tok-canary")
			})
		})
	}
}
