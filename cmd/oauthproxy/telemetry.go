package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// telemetry is the process's metrics and traces. Metrics: OpenTelemetry
// instruments, read by the Prometheus exporter and served on the admin
// listener's /metrics, next to the Go runtime and process collectors.
// Traces: exported over OTLP/HTTP only when the OTEL_* variables ask for
// it (tracesFromEnv); otherwise no tracer provider exists at all.
type telemetry struct {
	provider *sdkmetric.MeterProvider
	meter    metric.Meter
	handler  http.Handler
	tracer   *sdktrace.TracerProvider // nil: no traces
}

// newTelemetry sets up metrics, and traces when the environment configures
// them. limit is the cardinality limit of each instrument, sized for the
// config (metricLimit). Problems with the traces' settings are logged and
// leave traces off: they must not stop the proxy.
func newTelemetry(limit int, log *slog.Logger) (*telemetry, error) {
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
	// No exemplars: nothing reads them from Prometheus text, and every
	// series would keep a reservoir (5.6 MiB for 10,000 routes).
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithCardinalityLimit(limit),
		sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter))
	t := &telemetry{
		provider: mp,
		meter:    mp.Meter("github.com/oauthproxy/oauthproxy"),
		handler:  promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
	}
	if err := buildInfo(t.meter); err != nil {
		return nil, err
	}
	switch on, err := tracesFromEnv(os.Getenv); {
	case err != nil:
		log.Error("traces off: "+err.Error(), "docs", "docs/operations.md")
	case on:
		if t.tracer, err = newTracerProvider(log); err != nil {
			log.Error("traces off: "+err.Error(), "docs", "docs/operations.md")
		} else {
			log.Info("traces on: exporting over OTLP/HTTP")
		}
	}
	return t, nil
}

// buildInfo is oauthproxy_build_info{version,goversion} 1.
func buildInfo(m metric.Meter) error {
	set := metric.WithAttributeSet(attribute.NewSet(
		attribute.String("version", versionString()), attribute.String("goversion", runtime.Version())))
	_, err := m.Int64ObservableGauge("oauthproxy_build_info",
		metric.WithDescription("Always 1; the labels say which build is running."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(1, set)
			return nil
		}))
	return err
}

// tracerProvider is what the proxy handler traces requests with: nil when
// traces are off, so that requests pay nothing.
func (t *telemetry) tracerProvider() trace.TracerProvider {
	if t.tracer == nil {
		return nil
	}
	return t.tracer
}

// shutdown flushes the spans still queued and stops the providers.
func (t *telemetry) shutdown() {
	if t.tracer != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		t.tracer.Shutdown(ctx)
		cancel()
	}
	t.provider.Shutdown(context.Background())
}

// tracesFromEnv reads the standard OpenTelemetry variables
// (opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables):
// traces are on when an OTLP endpoint is set, OTEL_SDK_DISABLED is not
// true and OTEL_TRACES_EXPORTER is otlp (or unset). Only http/protobuf is
// built in; asking for another protocol or exporter is an error.
func tracesFromEnv(getenv func(string) string) (bool, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return false, nil
	case "", "otlp":
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER=%q is not supported: use otlp (or none)", exp)
	}
	if getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" {
		return false, nil
	}
	key := "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" // the traces-specific variable wins
	if strings.TrimSpace(getenv(key)) == "" {
		key = "OTEL_EXPORTER_OTLP_PROTOCOL"
	}
	if p := strings.TrimSpace(getenv(key)); p != "" && p != "http/protobuf" {
		return false, fmt.Errorf("%s=%q is not supported: use http/protobuf (port 4318 on most collectors)", key, p)
	}
	return true, nil
}

// newTracerProvider exports spans in batches over OTLP/HTTP. The exporter
// reads its endpoint, headers, timeout and TLS from OTEL_EXPORTER_OTLP_*,
// the sampler comes from OTEL_TRACES_SAMPLER(_ARG) (default: parent-based,
// always on) and the batching from OTEL_BSP_*. It becomes OpenTelemetry's
// global provider so that token fetches nobody's request started (start-up,
// renewals) are traced too.
func newTracerProvider(log *slog.Logger) (*sdktrace.TracerProvider, error) {
	ctx := context.Background()
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("the OTLP/HTTP exporter: %w", err)
	}
	// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the defaults.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "oauthproxy"), attribute.String("service.version", versionString())),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	otel.SetErrorHandler(&exportErrors{log: log})
	return tp, nil
}

// exportErrors logs OpenTelemetry's errors (a collector that is down), at
// most one line a minute: the proxy goes on serving either way.
type exportErrors struct {
	log        *slog.Logger
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (e *exportErrors) Handle(err error) {
	e.mu.Lock()
	now := time.Now()
	if now.Sub(e.last) < time.Minute {
		e.suppressed++
		e.mu.Unlock()
		return
	}
	n := e.suppressed
	e.last, e.suppressed = now, 0
	e.mu.Unlock()
	e.log.Warn("traces: "+err.Error(), "suppressed_since_last", n)
}
