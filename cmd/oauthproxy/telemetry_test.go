package main

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/oauthproxy/oauthproxy/proxy"
	"github.com/oauthproxy/oauthproxy/upstreams"
)

func TestTracesFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		on      bool
		wantErr string
	}{
		{"nothing set", nil, false, ""},
		{"endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true, ""},
		{"traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, true, ""},
		{"service name alone", map[string]string{"OTEL_SERVICE_NAME": "x"}, false, ""},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, false, ""},
		{"exporter otlp", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "otlp"}, true, ""},
		{"sdk disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, false, ""},
		{"sdk not disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "false"}, true, ""},
		{"http/protobuf", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, true, ""},
		{"grpc", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, false, "OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\" is not supported"},
		{"traces protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, true, ""},
		{"zipkin", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "zipkin"}, false, "OTEL_TRACES_EXPORTER=\"zipkin\" is not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			on, err := tracesFromEnv(func(k string) string { return tc.env[k] })
			if on != tc.on {
				t.Errorf("on = %v, want %v", on, tc.on)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("error %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one saying %q", err, tc.wantErr)
			}
		})
	}
}

// TestBuildInfoAndNoTracer: /metrics has oauthproxy_build_info 1, and with
// no OTEL_* variable there is no tracer provider at all.
func TestBuildInfoAndNoTracer(t *testing.T) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		t.Setenv(k, "")
	}
	tel, err := newTelemetry(100, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer tel.shutdown()
	if tel.tracerProvider() != nil {
		t.Error("a tracer provider without OTEL_* set")
	}
	rec := httptest.NewRecorder()
	tel.handler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	want := `oauthproxy_build_info{goversion="` + runtime.Version() + `",version="` + versionString() + `"} 1`
	if !strings.Contains(string(body), want) {
		t.Errorf("/metrics has no %s:\n%s", want, grepLines(string(body), "oauthproxy_"))
	}
}

// TestAccessLogOff: log.access false gives no observer, so that requests
// pay nothing; true gives one whose lines reach the writer at flush.
func TestAccessLogOff(t *testing.T) {
	observe, flush := newAccessLog(io.Discard, logCfg(false), nil)
	flush()
	if observe != nil {
		t.Error("an access log observer with log.access off")
	}
	var b strings.Builder
	observe, flush = newAccessLog(&b, logCfg(true), nil)
	if observe == nil {
		t.Fatal("no observer with log.access on")
	}
	observe(&proxyOutcome)
	flush()
	if !strings.Contains(b.String(), `"msg":"access"`) || !strings.Contains(b.String(), `"path":"/api/x"`) {
		t.Errorf("access line = %q", b.String())
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

var proxyOutcome = proxy.Outcome{Route: "/api/", Method: "GET", Path: "/api/x", Status: 200}

func logCfg(access bool) upstreams.Log {
	return upstreams.Log{Level: "warn", Format: "json", Access: access}
}
