package proxy

import (
	"context"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// metrics are the request-path instruments:
// oauthproxy_requests_total{route,code},
// oauthproxy_request_duration_seconds{route} and
// oauthproxy_upstream_retries_total{route}.
type metrics struct {
	requests metric.Int64Counter
	duration metric.Float64Histogram
	retries  metric.Int64Counter
	observed bool // the handler's requests carry an Outcome (record)
}

func newMetrics(m metric.Meter) (*metrics, error) {
	if m == nil {
		m = noop.NewMeterProvider().Meter("")
	}
	reqs, err := m.Int64Counter("oauthproxy.requests",
		metric.WithDescription("Requests by route and the status code the client got."),
		metric.WithUnit("{request}"))
	if err != nil {
		return nil, err
	}
	dur, err := m.Float64Histogram("oauthproxy.request.duration",
		metric.WithDescription("Time from a request's arrival until its response was handed back (streamed bodies excluded)."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
	if err != nil {
		return nil, err
	}
	retries, err := m.Int64Counter("oauthproxy.upstream.retries",
		metric.WithDescription("Requests sent a second time after the upstream rejected the token."),
		metric.WithUnit("{retry}"))
	if err != nil {
		return nil, err
	}
	return &metrics{requests: reqs, duration: dur, retries: retries}, nil
}

// routeMetrics holds one route's precomputed attribute sets, so that
// recording allocates nothing. The status codes a route answers are few:
// they are kept in a small list, replaced whole when a new code appears,
// so a table of 10,000 routes costs little memory.
type routeMetrics struct {
	m        *metrics
	route    attribute.KeyValue
	codes    atomic.Pointer[[]codeOpts]
	duration []metric.RecordOption
	retries  []metric.AddOption
}

type codeOpts struct {
	code int
	opts []metric.AddOption
}

func (m *metrics) forRoute(label string) *routeMetrics {
	kv := attribute.String("route", label)
	set := metric.WithAttributeSet(attribute.NewSet(kv))
	rm := &routeMetrics{
		m:        m,
		route:    kv,
		duration: []metric.RecordOption{set},
		retries:  []metric.AddOption{set},
	}
	m.retries.Add(context.Background(), 0, rm.retries...) // exported at 0 before the first retry
	return rm
}

func (rm *routeMetrics) count(code int) {
	if code < 100 || code > 599 {
		code = 0
	}
	rm.m.requests.Add(context.Background(), 1, rm.codeOpts(code)...)
}

func (rm *routeMetrics) codeOpts(code int) []metric.AddOption {
	for {
		cur := rm.codes.Load()
		if cur != nil {
			for _, c := range *cur {
				if c.code == code {
					return c.opts
				}
			}
		}
		o := []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(rm.route, attribute.Int("code", code)))}
		var next []codeOpts
		if cur != nil {
			next = append(next, *cur...)
		}
		next = append(next, codeOpts{code, o})
		if rm.codes.CompareAndSwap(cur, &next) {
			return o
		}
	}
}

func (rm *routeMetrics) observe(seconds float64) {
	rm.m.duration.Record(context.Background(), seconds, rm.duration...)
}

func (rm *routeMetrics) retried() {
	rm.m.retries.Add(context.Background(), 1, rm.retries...)
}
