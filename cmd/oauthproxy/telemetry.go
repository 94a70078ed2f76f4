package main

import (
	"context"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// telemetry is the process's metrics: OpenTelemetry instruments, read by
// the Prometheus exporter and served on the admin listener's /metrics,
// next to the Go runtime and process collectors.
type telemetry struct {
	provider *sdkmetric.MeterProvider
	meter    metric.Meter
	handler  http.Handler
}

// newTelemetry sets up metrics. limit is the cardinality limit of each
// instrument, sized for the config (metricLimit).
func newTelemetry(limit int) (*telemetry, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exp, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		otelprom.WithoutScopeInfo(),
		otelprom.WithoutTargetInfo(),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
	)
	if err != nil {
		return nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithCardinalityLimit(limit))
	return &telemetry{
		provider: mp,
		meter:    mp.Meter("github.com/oauthproxy/oauthproxy"),
		handler:  promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
	}, nil
}

func (t *telemetry) shutdown() { t.provider.Shutdown(context.Background()) }
