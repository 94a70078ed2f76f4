package tokencache

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Spans (issue 9, item 3; docs/operations.md):
//
//   - "oauth2 token fetch": one per token request (the single flight's),
//     a child of the request that started it, or a root span for start-up
//     and background renewals. Its context goes to the token endpoint in
//     traceparent.
//   - "oauth2 token wait": a traced request that waits for a token; it
//     links to the fetch it joined when another caller started it.
//   - "oauth2 sign-in": a code's exchange.
//
// Attributes name the entry, the grant, the result and the IdP's error
// code: never a token, a secret or a form value.

const tracerName = "github.com/oauthproxy/oauthproxy/tokencache"

// traceContext writes traceparent; it writes nothing for a context
// without a valid span.
var traceContext propagation.TraceContext

const (
	attrOAuth2   = attribute.Key("oauthproxy.oauth2")
	attrGrant    = attribute.Key("oauthproxy.grant")
	attrResult   = attribute.Key("oauthproxy.result")
	attrIdPError = attribute.Key("oauthproxy.idp_error")
	attrShared   = attribute.Key("oauthproxy.shared") // the wait joined a fetch another caller started
	attrStatus   = attribute.Key("http.response.status_code")
)

// Results of a fetch or a wait, the oauthproxy.result attribute: the
// metric's ok, rejected and failed, and these.
const (
	resultLoginRequired = "login_required"
	resultCanceled      = "canceled" // the waiter gave up; the fetch goes on
)

// tracer is the tracer for a span under ctx: a traced request's own
// provider, else the configured one, else OpenTelemetry's global one
// (a no-op unless the process installed one).
func (s *Source) tracer(ctx context.Context) trace.Tracer {
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		return sp.TracerProvider().Tracer(tracerName)
	}
	if s.cfg.TracerProvider != nil {
		return s.cfg.TracerProvider.Tracer(tracerName)
	}
	return otel.GetTracerProvider().Tracer(tracerName)
}

// startWait starts the wait span of a traced request; nil when ctx holds
// no recording span, so that untraced callers pay nothing.
func (s *Source) startWait(ctx context.Context) (context.Context, trace.Span) {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, nil
	}
	return s.tracer(ctx).Start(ctx, "oauth2 token wait",
		trace.WithAttributes(attrOAuth2.String(s.name), attrGrant.String(s.grant.Type())))
}

// endWait ends a wait span; a waiter that joined another caller's fetch
// links to it.
func endWait(sp trace.Span, shared bool, fetch trace.SpanContext, err error) {
	if sp == nil {
		return
	}
	sp.SetAttributes(attrShared.Bool(shared))
	if shared && fetch.IsValid() {
		sp.AddLink(trace.Link{SpanContext: fetch})
	}
	endSpan(sp, err)
}

// startFetch starts the span of a token request.
func (s *Source) startFetch(ctx context.Context, name string) (context.Context, trace.Span) {
	return s.tracer(ctx).Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attrOAuth2.String(s.name), attrGrant.String(s.grant.Type())))
}

// endSpan records err's result and ends sp. The error's message stays out:
// the code and status say what happened, and nothing else is needed.
func endSpan(sp trace.Span, err error) {
	result := resultOf(err)
	sp.SetAttributes(attrResult.String(result))
	var te *Error
	if errors.As(err, &te) {
		if te.Code != "" {
			sp.SetAttributes(attrIdPError.String(te.Code)) // validated and scrubbed (Client.Refusal)
		}
		if te.Status != 0 {
			sp.SetAttributes(attrStatus.Int(te.Status))
		}
	}
	if err != nil {
		sp.SetStatus(codes.Error, result)
	}
	sp.End()
}

// resultOf names an outcome as the oauthproxy.result attribute does.
func resultOf(err error) string {
	var te *Error
	var lr *LoginRequiredError
	switch {
	case err == nil:
		return ResultOK
	case errors.As(err, &lr):
		return resultLoginRequired
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) && !errors.As(err, &te):
		return resultCanceled
	case errors.As(err, &te) && te.Permanent:
		return ResultRejected
	}
	return ResultFailed
}

// logAttrs are the keys a token fetch's log line adds: its duration, its
// grant, and its trace when sampled.
func (s *Source) logAttrs(ctx context.Context, d time.Duration) []any {
	a := []any{"grant", s.grant.Type(), "duration_ms", float64(d.Microseconds()) / 1000}
	if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() {
		a = append(a, "trace_id", sc.TraceID().String())
	}
	return a
}
