package main

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// cacheMetrics counts the shared cache's operations by op and result
// (oauthproxy_cache_operations_total). The attribute sets are made once
// per pair: the observer runs on every Redis call.
type cacheMetrics struct {
	ops  metric.Int64Counter
	mu   sync.Mutex
	sets map[[2]string]metric.MeasurementOption
}

func newCacheMetrics(m metric.Meter) (*cacheMetrics, error) {
	c, err := m.Int64Counter("oauthproxy_cache_operations_total",
		metric.WithDescription("Operations on the shared token cache (Redis), by operation and result."))
	if err != nil {
		return nil, err
	}
	return &cacheMetrics{ops: c, sets: map[[2]string]metric.MeasurementOption{}}, nil
}

// observe is redisstore's Observe hook.
func (c *cacheMetrics) observe(op, result string) {
	k := [2]string{op, result}
	c.mu.Lock()
	set, ok := c.sets[k]
	if !ok {
		set = metric.WithAttributeSet(attribute.NewSet(attribute.String("op", op), attribute.String("result", result)))
		c.sets[k] = set
	}
	c.mu.Unlock()
	c.ops.Add(context.Background(), 1, set)
}
