package admin

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"html/template"
	"io"
	"math"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// The admin page is one HTML file, one script and one stylesheet, built
// into the binary: app.js renders /tokens, /routes and /status, so that
// the JSON stays the one source of truth (issue 13).
//
//go:embed assets/index.html assets/app.js assets/app.css assets/icon.svg
var assetFS embed.FS

// pageCSP lets the page load its own script, style and icon and fetch its
// own JSON, nothing else: no inline script or style, no frames, no forms.
// Trusted Types turn any HTML sink (innerHTML) into an error, so that
// config-derived text can only ever be inserted as text.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'"

var pageTmplIndex = template.Must(template.ParseFS(assetFS, "assets/index.html"))

// asset is a file the page loads, with its validator.
type asset struct {
	typ, etag string
	body      []byte
}

var assets = func() map[string]asset {
	m := map[string]asset{}
	for name, typ := range map[string]string{
		"app.js":   "text/javascript; charset=utf-8",
		"app.css":  "text/css; charset=utf-8",
		"icon.svg": "image/svg+xml",
	} {
		b, err := assetFS.ReadFile("assets/" + name)
		if err != nil {
			panic(err)
		}
		sum := sha256.Sum256(b)
		m[name] = asset{typ: typ, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, body: b}
	}
	return m
}()

// page serves the admin page (GET /), with this process's CSRF token.
func (h *Handler) page(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	if err := pageTmplIndex.Execute(&b, struct{ CSRF string }{h.csrf}); err != nil {
		http.Error(w, "rendering the admin page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Content-Security-Policy", pageCSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}

// serveAsset serves the page's script, stylesheet and icon. They change
// only with the binary: revalidated by ETag, never stored stale.
func serveAsset(w http.ResponseWriter, r *http.Request) {
	a, ok := assets[r.PathValue("file")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", a.typ)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", a.etag)
	http.ServeContent(w, r, path.Base(r.URL.Path), time.Time{}, bytes.NewReader(a.body))
}

// routeInfo is one route of GET /routes. The counts are the process's
// (they survive reloads), read from /metrics; absent when unreadable.
type routeInfo struct {
	Prefix      string           `json:"prefix"`
	Upstream    string           `json:"upstream"`
	OAuth2      string           `json:"oauth2"`
	StripPrefix bool             `json:"strip_prefix"`
	RetryOn     []int            `json:"retry_on"`
	Timeout     string           `json:"timeout"`
	Requests    *int64           `json:"requests,omitempty"`
	ByCode      map[string]int64 `json:"requests_by_code,omitempty"`
	Retries     *int64           `json:"retries,omitempty"`
}

// routes serves GET /routes: the route table in service, with request
// and retry counts.
func (h *Handler) routes(w http.ResponseWriter, r *http.Request) {
	out := struct {
		Routes []routeInfo `json:"routes"`
		Counts bool        `json:"counts"` // false: the metrics could not be read
	}{Routes: []routeInfo{}}
	snap, err := h.metricsSnapshot(r)
	out.Counts = err == nil
	if cfg := h.config(); cfg != nil {
		for _, rc := range cfg.Routes {
			if rc == nil {
				continue
			}
			ri := routeInfo{Prefix: rc.Prefix, Upstream: tokencache.SafeURL(rc.Upstream.String()), OAuth2: rc.OAuth2,
				RetryOn: rc.RetryOn, Timeout: rc.Timeout.String()}
			if rc.StripPrefix != nil {
				ri.StripPrefix = *rc.StripPrefix
			}
			if ri.RetryOn == nil {
				ri.RetryOn = []int{}
			}
			if err == nil {
				var total, retries int64
				ri.ByCode = map[string]int64{}
				for _, s := range snap["oauthproxy_requests_total"] {
					if s.labels["route"] == rc.Prefix {
						ri.ByCode[s.labels["code"]] += s.value
						total += s.value
					}
				}
				for _, s := range snap["oauthproxy_upstream_retries_total"] {
					if s.labels["route"] == rc.Prefix {
						retries += s.value
					}
				}
				ri.Requests, ri.Retries = &total, &retries
			}
			out.Routes = append(out.Routes, ri)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// status serves GET /status: the config in service, when it was loaded,
// and how reloads went (from /metrics, which counts them).
func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	out := map[string]any{"serving": h.opts.Serving != nil && h.opts.Serving.Load()}
	if cfg := h.config(); cfg != nil {
		out["config_file"] = cfg.File
	}
	if snap, err := h.metricsSnapshot(r); err == nil {
		if ss := snap["oauthproxy_config_last_reload_success_timestamp_seconds"]; len(ss) == 1 && ss[0].value > 0 {
			out["loaded_at"] = time.Unix(ss[0].value, 0).UTC()
		}
		reloads := map[string]int64{"success": 0, "error": 0}
		for _, s := range snap["oauthproxy_config_reloads_total"] {
			reloads[s.labels["result"]] += s.value
		}
		out["reloads"] = reloads
	}
	writeJSON(w, http.StatusOK, out)
}

// sample is one series of a metric family.
type sample struct {
	labels map[string]string
	value  int64
}

// metricsSnapshot reads the families the page shows from the /metrics
// handler, in process: the request path keeps its counts in OpenTelemetry
// instruments, which the Prometheus exporter is the one reader of.
func (h *Handler) metricsSnapshot(r *http.Request) (map[string][]sample, error) {
	if h.opts.Metrics == nil {
		return nil, errors.New("no metrics")
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeProtoDelim)))
	rec := &recorder{hdr: http.Header{}, code: http.StatusOK}
	h.opts.Metrics.ServeHTTP(rec, req)
	if rec.code != http.StatusOK {
		return nil, errors.New("metrics answered " + strconv.Itoa(rec.code))
	}
	want := map[string]bool{
		"oauthproxy_requests_total":                               true,
		"oauthproxy_upstream_retries_total":                       true,
		"oauthproxy_config_reloads_total":                         true,
		"oauthproxy_config_last_reload_success_timestamp_seconds": true,
	}
	out := map[string][]sample{}
	dec := expfmt.NewDecoder(&rec.body, expfmt.ResponseFormat(rec.hdr))
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		if !want[mf.GetName()] {
			continue
		}
		for _, m := range mf.GetMetric() {
			s := sample{labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			var v float64
			switch {
			case m.GetCounter() != nil:
				v = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				v = m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				v = m.GetUntyped().GetValue()
			}
			if math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			s.value = int64(v)
			out[mf.GetName()] = append(out[mf.GetName()], s)
		}
	}
}

// recorder is an in-memory http.ResponseWriter for reading /metrics.
type recorder struct {
	hdr  http.Header
	body bytes.Buffer
	code int
}

func (rc *recorder) Header() http.Header         { return rc.hdr }
func (rc *recorder) Write(b []byte) (int, error) { return rc.body.Write(b) }
func (rc *recorder) WriteHeader(code int)        { rc.code = code }

// wantsJSON reports whether the client asked for JSON (the page's
// fetches) rather than a page (a browser following a link).
func wantsJSON(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Accept"), "application/json")
}
