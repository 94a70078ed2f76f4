package tokencache

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metrics records the token metrics of every Source that uses it:
// oauthproxy_token_requests_total{oauth2,result},
// oauthproxy_token_request_duration_seconds{oauth2} and
// oauthproxy_token_expiry_timestamp_seconds{oauth2}. Safe for concurrent use.
type Metrics struct {
	requests metric.Int64Counter
	duration metric.Float64Histogram

	mu      sync.Mutex
	expiry  map[*Source]*sourceMetrics
	gauge   metric.Float64ObservableGauge
	regOnce sync.Once
	meter   metric.Meter
}

// Token request results, the `result` label.
const (
	ResultOK       = "ok"       // a token was obtained
	ResultRejected = "rejected" // the IdP refused the request (4xx: invalid_client, invalid_grant...)
	ResultFailed   = "failed"   // no usable answer: network, timeout, 5xx, 429, malformed body
)

// NewMetrics creates the token instruments on m.
func NewMetrics(m metric.Meter) (*Metrics, error) {
	reqs, err := m.Int64Counter("oauthproxy.token.requests",
		metric.WithDescription("Token endpoint requests by oauth2 entry and result (ok, rejected, failed)."),
		metric.WithUnit("{request}"))
	if err != nil {
		return nil, err
	}
	dur, err := m.Float64Histogram("oauthproxy.token.request.duration",
		metric.WithDescription("Time taken by token endpoint requests."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	if err != nil {
		return nil, err
	}
	gauge, err := m.Float64ObservableGauge("oauthproxy.token.expiry.timestamp",
		metric.WithDescription("Unix time at which the cached token of each oauth2 entry expires."),
		metric.WithUnit("s"))
	if err != nil {
		return nil, err
	}
	return &Metrics{requests: reqs, duration: dur, gauge: gauge, meter: m, expiry: map[*Source]*sourceMetrics{}}, nil
}

type sourceMetrics struct {
	m        *Metrics
	ok       metric.AddOption
	rejected metric.AddOption
	failed   metric.AddOption
	entry    metric.MeasurementOption
	mu       sync.Mutex
	expiry   time.Time
}

func (m *Metrics) register(s *Source) *sourceMetrics {
	entry := attribute.String("oauth2", s.name)
	sm := &sourceMetrics{
		m:        m,
		ok:       metric.WithAttributeSet(attribute.NewSet(entry, attribute.String("result", ResultOK))),
		rejected: metric.WithAttributeSet(attribute.NewSet(entry, attribute.String("result", ResultRejected))),
		failed:   metric.WithAttributeSet(attribute.NewSet(entry, attribute.String("result", ResultFailed))),
		entry:    metric.WithAttributeSet(attribute.NewSet(entry)),
	}
	for _, opt := range []metric.AddOption{sm.ok, sm.rejected, sm.failed} {
		m.requests.Add(context.Background(), 0, opt) // exported at 0 before the first failure
	}
	m.regOnce.Do(func() {
		m.meter.RegisterCallback(m.observe, m.gauge) // lives as long as the Metrics
	})
	m.mu.Lock()
	m.expiry[s] = sm
	m.mu.Unlock()
	return sm
}

func (m *Metrics) observe(_ context.Context, o metric.Observer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, sm := range m.expiry {
		sm.mu.Lock()
		exp := sm.expiry
		sm.mu.Unlock()
		if !exp.IsZero() {
			o.ObserveFloat64(m.gauge, float64(exp.UnixMilli())/1e3, sm.entry)
		}
	}
	return nil
}

func (sm *sourceMetrics) unregister(s *Source) {
	if sm == nil {
		return
	}
	sm.m.mu.Lock()
	delete(sm.m.expiry, s)
	sm.m.mu.Unlock()
}

func (sm *sourceMetrics) record(err error, d time.Duration) {
	if sm == nil {
		return
	}
	ctx := context.Background()
	opt := sm.ok
	var te *Error
	switch {
	case err == nil:
	case errors.As(err, &te) && te.Permanent:
		opt = sm.rejected
	default:
		opt = sm.failed
	}
	sm.m.requests.Add(ctx, 1, opt)
	sm.m.duration.Record(ctx, d.Seconds(), sm.entry)
}

func (sm *sourceMetrics) setExpiry(t time.Time) {
	if sm == nil {
		return
	}
	sm.mu.Lock()
	sm.expiry = t
	sm.mu.Unlock()
}
