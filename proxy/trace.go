package proxy

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Span attributes. The HTTP ones are OpenTelemetry's semantic conventions;
// none holds a header value, a query or a token.
const (
	attrMethod      = attribute.Key("http.request.method")
	attrStatus      = attribute.Key("http.response.status_code")
	attrRoute       = attribute.Key("http.route") // the configured prefix
	attrPath        = attribute.Key("url.path")
	attrResend      = attribute.Key("http.request.resend_count")
	attrServerAddr  = attribute.Key("server.address")
	attrServerPort  = attribute.Key("server.port")
	attrErrorType   = attribute.Key("error.type")
	attrOAuth2      = attribute.Key("oauthproxy.oauth2")
	attrRetried     = attribute.Key("oauthproxy.retried")
	attrTokenWaitMS = attribute.Key("oauthproxy.token_wait_ms")
)

// tracerName names the proxy's instrumentation scope.
const tracerName = "github.com/oauthproxy/oauthproxy/proxy"

// endServerSpan names a request's server span after its route and ends it
// with what happened.
func endServerSpan(o *Outcome) {
	sp := o.span
	if o.Route != "" {
		sp.SetName(o.Method + " " + o.Route)
	}
	sp.SetAttributes(
		attrStatus.Int(o.Status),
		attrRoute.String(o.Route),
		attrOAuth2.String(o.OAuth2),
		attrRetried.Bool(o.Retried),
		attrTokenWaitMS.Float64(ms(o.TokenWait)),
	)
	if o.Error != "" {
		sp.SetAttributes(attrErrorType.String(o.Error))
	}
	if o.Status >= 500 { // a server span's 4xx is the client's doing
		sp.SetStatus(codes.Error, o.Error)
	}
	sp.End(trace.WithTimestamp(o.Start.Add(o.Duration)))
}

// send sends one attempt to the upstream; traced, it is a client span
// whose context the upstream receives in traceparent, ending when the
// response body is done.
func (rt *route) send(req *http.Request, resend int) (*http.Response, error) {
	if rt.tracer == nil {
		return rt.Transport.RoundTrip(req)
	}
	ctx, sp := rt.tracer.Start(req.Context(), req.Method, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attrMethod.String(req.Method), attrServerAddr.String(rt.host), attrServerPort.Int(rt.port),
			attrRoute.String(rt.Prefix)))
	if resend > 0 {
		sp.SetAttributes(attrResend.Int(resend))
	}
	// The client's own traceparent, if any, is replaced: the upstream's
	// parent is this span.
	traceContext.Inject(ctx, propagation.HeaderCarrier(req.Header))
	resp, err := rt.Transport.RoundTrip(req)
	if err != nil {
		_, code := errorStatus(err)
		sp.SetAttributes(attrErrorType.String(code))
		sp.SetStatus(codes.Error, code)
		sp.End()
		return nil, err
	}
	sp.SetAttributes(attrStatus.Int(resp.StatusCode))
	if resp.StatusCode >= 400 {
		sp.SetStatus(codes.Error, "")
	}
	if resp.StatusCode == http.StatusSwitchingProtocols || resp.Body == nil || resp.Body == http.NoBody {
		// ReverseProxy needs an upgraded body's io.Writer: not wrapped.
		sp.End()
		return resp, nil
	}
	resp.Body = &spanBody{ReadCloser: resp.Body, span: sp}
	return resp, nil
}

// spanBody ends a client span when its response body ends.
type spanBody struct {
	io.ReadCloser
	span trace.Span
	once sync.Once
}

func (b *spanBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.end()
	}
	return n, err
}

func (b *spanBody) Close() error {
	b.end()
	return b.ReadCloser.Close()
}

func (b *spanBody) end() { b.once.Do(func() { b.span.End() }) }

// hostPort is an upstream's server.address and server.port.
func hostPort(u *url.URL) (string, int) {
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		port = 80
		if u.Scheme == "https" {
			port = 443
		}
	}
	return u.Hostname(), port
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
