package main

import (
	"context"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// reloadMetrics counts config reloads by result and keeps the time of the
// last good one (the first load counts).
type reloadMetrics struct {
	total   metric.Int64Counter
	lastOK  atomic.Int64 // unix seconds
	ok, bad metric.MeasurementOption
}

func newReloadMetrics(m metric.Meter) (*reloadMetrics, error) {
	r := &reloadMetrics{
		ok:  metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "success"))),
		bad: metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "error"))),
	}
	var err error
	if r.total, err = m.Int64Counter("oauthproxy_config_reloads_total",
		metric.WithDescription("Config reloads (SIGHUP or a changed file), by result.")); err != nil {
		return nil, err
	}
	_, err = m.Int64ObservableGauge("oauthproxy_config_last_reload_success_timestamp_seconds",
		metric.WithDescription("When the config in service was loaded, in Unix seconds."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(r.lastOK.Load())
			return nil
		}))
	if err != nil {
		return nil, err
	}
	r.lastOK.Store(time.Now().Unix())
	return r, nil
}

// reloaded records a reload's result.
func (r *reloadMetrics) reloaded(ok bool) {
	if ok {
		r.total.Add(context.Background(), 1, r.ok)
		r.lastOK.Store(time.Now().Unix())
		return
	}
	r.total.Add(context.Background(), 1, r.bad)
}
