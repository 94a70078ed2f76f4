package mail

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// metrics are the mail instruments:
// oauthproxy_mail_sessions_total{listener,result} and
// oauthproxy_mail_auth_duration_seconds{listener}.
type metrics struct {
	sessions metric.Int64Counter
	auth     metric.Float64Histogram
}

func newMetrics(m metric.Meter) (*metrics, error) {
	if m == nil {
		m = noop.NewMeterProvider().Meter("")
	}
	sessions, err := m.Int64Counter("oauthproxy.mail.sessions",
		metric.WithDescription("Mail client sessions by listen address and result (ok, denied, rejected, unavailable, abandoned)."),
		metric.WithUnit("{session}"))
	if err != nil {
		return nil, err
	}
	auth, err := m.Float64Histogram("oauthproxy.mail.auth.duration",
		metric.WithDescription("Time from a mail client's login to the server's verdict, token waits and a retry included."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
	if err != nil {
		return nil, err
	}
	return &metrics{sessions: sessions, auth: auth}, nil
}

func (m *metrics) session(listener, result string) {
	m.sessions.Add(context.Background(), 1, metric.WithAttributes(
		attribute.String("listener", listener), attribute.String("result", result)))
}

func (m *metrics) authDuration(listener string, d time.Duration) {
	m.auth.Record(context.Background(), d.Seconds(), metric.WithAttributes(attribute.String("listener", listener)))
}
