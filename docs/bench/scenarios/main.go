// Command scenarios is oauthproxy's own benchmark of what ../shared/bench
// does not cover: an HTTPS upstream (HTTP/1.1 and HTTP/2) and latency at a
// fixed request rate across token renewals. Each scenario runs the built
// oauthproxy binary next to a bare httputil.ReverseProxy with the same TLS
// settings (the floor), both pinned to CPU 1 with the upstream, the load
// generated from this process (pin it to CPU 0). Figures are ratios to the
// floor within a round, as medians over the rounds: the machine is shared.
//
//	go build -o /tmp/oauthproxy ./cmd/oauthproxy
//	go build -o /tmp/scenarios ./docs/bench/scenarios
//	taskset -c 0 /tmp/scenarios -oauthproxy /tmp/oauthproxy -rounds 5
//
// Scenarios: https-h1 and https-h2 (GET, 64 connections, closed loop: req/s
// and CPU per request of the proxy process) and rate2000 (GET at a fixed
// 2,000 requests per second, open loop: p50/p99/p999 from the scheduled
// send time, over a window in which the upstream's 8 s tokens are renewed
// at half-life, twice or three times; plain HTTP, as the shared harness)
// and rate2000-steady (the same with a token that outlives the run).
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	upAddr    = "127.0.0.1:18201"
	upTLSAddr = "127.0.0.1:18202"
	bareAddr  = "127.0.0.1:18203"
	opAddr    = "127.0.0.1:18204"
	tokenTTL  = 8 // seconds, in rate2000: renewed at half-life, every 4 s
)

var token = strings.Repeat("t", 800)

func main() {
	role := flag.String("role", "", "internal: upstream or bare")
	dir := flag.String("dir", "", "internal: the run's directory (certificates)")
	h2 := flag.Bool("h2", false, "internal: the upstream offers HTTP/2")
	upstream := flag.String("upstream", "", "internal: the bare proxy's upstream")
	ttl := flag.Int("ttl", tokenTTL, "internal: the upstream's token lifetime, seconds")
	opBin := flag.String("oauthproxy", "", "the oauthproxy binary to measure")
	rounds := flag.Int("rounds", 3, "interleaved rounds")
	dur := flag.Duration("d", 5*time.Second, "measured time per run")
	rateDur := flag.Duration("rate-d", 10*time.Second, "measured time of the fixed-rate runs (rate2000: a renewal every 4 s)")
	scen := flag.String("scenarios", "https-h1,https-h2,rate2000,rate2000-steady", "scenarios")
	flag.Parse()
	switch *role {
	case "upstream":
		serveUpstream(*dir, *h2, *ttl)
		return
	case "bare":
		serveBare(*dir, *upstream)
		return
	}
	if *opBin == "" {
		log.Fatal("-oauthproxy: the binary to measure")
	}
	tmp, err := os.MkdirTemp("", "oauthproxy-scenarios-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	if err := writeCerts(tmp); err != nil {
		log.Fatal(err)
	}
	res := map[string][]result{} // scenario/target -> one per round
	for r := 1; r <= *rounds; r++ {
		for _, s := range strings.Split(*scen, ",") {
			for _, target := range []string{"bare", "oauthproxy"} {
				if r%2 == 0 { // the other order every other round
					target = map[string]string{"bare": "oauthproxy", "oauthproxy": "bare"}[target]
				}
				x, err := runOne(tmp, *opBin, s, target, *dur, *rateDur)
				if err != nil {
					log.Fatalf("round %d %s %s: %v", r, s, target, err)
				}
				fmt.Printf("round %d %-15s %-10s %s\n", r, s, target, x)
				res[s+"/"+target] = append(res[s+"/"+target], x)
			}
		}
	}
	report(strings.Split(*scen, ","), res)
}

type result struct {
	rps, cpuPerReq float64 // closed loop
	p50, p99, p999 time.Duration
	n, errors      int
}

func (r result) String() string {
	if r.p50 > 0 {
		return fmt.Sprintf("p50=%v p99=%v p999=%v n=%d errors=%d", r.p50, r.p99, r.p999, r.n, r.errors)
	}
	return fmt.Sprintf("rps=%.0f cpu/req=%.1fus n=%d errors=%d", r.rps, r.cpuPerReq, r.n, r.errors)
}

// runOne starts the upstream and one proxy, measures, and stops them.
func runOne(dir, opBin, scen, target string, dur, rateDur time.Duration) (result, error) {
	tlsUp := strings.HasPrefix(scen, "https")
	upURL := "http://" + upAddr
	if tlsUp {
		upURL = "https://" + upTLSAddr
	}
	self, _ := os.Executable()
	ttl := tokenTTL
	if scen != "rate2000" {
		ttl = 86400 // no renewal while measured
	}
	up, err := start(self, "-role", "upstream", "-dir", dir, "-h2="+strconv.FormatBool(scen == "https-h2"), "-ttl="+strconv.Itoa(ttl))
	if err != nil {
		return result{}, err
	}
	defer stop(up)
	if err := ready("http://"+upAddr+"/api", nil); err != nil {
		return result{}, err
	}
	var proxy *exec.Cmd
	addr := bareAddr
	if target == "bare" {
		proxy, err = start(self, "-role", "bare", "-dir", dir, "-upstream", upURL)
	} else {
		addr = opAddr
		cfg := filepath.Join(dir, "oauthproxy.yaml")
		os.WriteFile(cfg, []byte(opConfig(dir, upURL)), 0o600)
		proxy, err = start(opBin, "run", "-config", cfg)
	}
	if err != nil {
		return result{}, err
	}
	defer stop(proxy)
	u := "http://" + addr + "/api/x"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}, Timeout: 30 * time.Second}
	if err := ready(u, client); err != nil {
		return result{}, err
	}
	if strings.HasPrefix(scen, "rate2000") {
		return openLoop(client, u, 2000, time.Second, rateDur), nil
	}
	return closedLoop(client, u, 64, time.Second, dur, proxy.Process.Pid), nil
}

// opConfig is docs/bench.yaml with the upstream's CA when it is HTTPS.
func opConfig(dir, upURL string) string {
	tlsLine := ""
	if strings.HasPrefix(upURL, "https") {
		tlsLine = "\n    tls: {ca_file: " + filepath.Join(dir, "ca.pem") + "}"
	}
	return fmt.Sprintf(`listen: %s
admin_listen: 127.0.0.1:18205
log: {level: info, format: json}
oauth2:
  bench:
    token_url: %s/token
    client_id: bench
    client_secret: bench-secret%s
routes:
  - prefix: /api/
    upstream: %s/
    oauth2: bench%s
`, opAddr, upURL, tlsLine, upURL, tlsLine)
}

// start runs a command on CPU 1, where the upstream and the proxies share
// a core as in ../shared/bench.
func start(bin string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command("taskset", append([]string{"-c", "1", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if os.Getenv("SCENARIOS_QUIET") != "" {
		cmd.Stderr = io.Discard
	}
	return cmd, cmd.Start()
}

func stop(cmd *exec.Cmd) {
	cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func ready(u string, c *http.Client) error {
	if c == nil {
		c = http.DefaultClient
	}
	for range 100 {
		if resp, err := c.Get(u); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer 200", u)
}

// closedLoop runs c workers back to back and reads the proxy's CPU time.
func closedLoop(client *http.Client, u string, c int, warm, dur time.Duration, pid int) result {
	var n, errs atomic.Int64
	var measuring atomic.Bool
	stopAt := time.Now().Add(warm + dur)
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() {
			for time.Now().Before(stopAt) {
				ok := get(client, u)
				if measuring.Load() {
					if ok {
						n.Add(1)
					} else {
						errs.Add(1)
					}
				}
			}
		})
	}
	time.Sleep(warm)
	cpu0 := cpuTime(pid)
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(dur)
	measuring.Store(false)
	el, cpu := time.Since(t0), cpuTime(pid)-cpu0
	wg.Wait()
	return result{rps: float64(n.Load()) / el.Seconds(), cpuPerReq: float64(cpu.Microseconds()) / float64(n.Load()),
		n: int(n.Load()), errors: int(errs.Load())}
}

// openLoop sends at a fixed rate, whatever the answers' pace (at most 256
// in flight), and measures latency from when each request was due.
func openLoop(client *http.Client, u string, rate float64, warm, dur time.Duration) result {
	interval := time.Duration(float64(time.Second) / rate)
	sem := make(chan struct{}, 256)
	var mu sync.Mutex
	var lat []time.Duration
	var errs int
	var wg sync.WaitGroup
	begin := time.Now()
	measureFrom := begin.Add(warm)
	for i := 0; ; i++ {
		due := begin.Add(time.Duration(i) * interval)
		if due.After(begin.Add(warm + dur)) {
			break
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		sem <- struct{}{}
		wg.Go(func() {
			ok := get(client, u)
			d := time.Since(due)
			<-sem
			if due.Before(measureFrom) {
				return
			}
			mu.Lock()
			if ok {
				lat = append(lat, d)
			} else {
				errs++
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	return result{p50: q(0.5), p99: q(0.99), p999: q(0.999), n: len(lat), errors: errs}
}

func get(c *http.Client, u string) bool {
	resp, err := c.Get(u)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200 && resp.Header.Get("X-Upstream-Auth") == "1"
}

// cpuTime is a process's user and system time, from /proc (Linux).
func cpuTime(pid int) time.Duration {
	var total time.Duration
	pids := []int{pid}
	// taskset execs the proxy: same PID. Children, if any, are not counted.
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * time.Second / 100 // USER_HZ
	}
	return total
}

func report(scens []string, res map[string][]result) {
	fmt.Println("\nSUMMARY (median over rounds; ratios are oauthproxy / bare Go proxy of the same round, [min..max])")
	for _, s := range scens {
		b, o := res[s+"/bare"], res[s+"/oauthproxy"]
		if strings.HasPrefix(s, "rate2000") {
			fmt.Printf("%-15s p50 %s  p99 %s  p999 %s   (oauthproxy p99 %v, bare p99 %v)\n", s,
				ratio(o, b, func(r result) float64 { return float64(r.p50) }),
				ratio(o, b, func(r result) float64 { return float64(r.p99) }),
				ratio(o, b, func(r result) float64 { return float64(r.p999) }),
				time.Duration(med(o, func(r result) float64 { return float64(r.p99) })).Round(time.Microsecond),
				time.Duration(med(b, func(r result) float64 { return float64(r.p99) })).Round(time.Microsecond))
			continue
		}
		fmt.Printf("%-15s req/s %s  cpu/req %s   (oauthproxy %.0f req/s %.1f us/req, bare %.0f req/s %.1f us/req)\n", s,
			ratio(o, b, func(r result) float64 { return r.rps }), ratio(o, b, func(r result) float64 { return r.cpuPerReq }),
			med(o, func(r result) float64 { return r.rps }), med(o, func(r result) float64 { return r.cpuPerReq }),
			med(b, func(r result) float64 { return r.rps }), med(b, func(r result) float64 { return r.cpuPerReq }))
	}
	if r, s := res["rate2000/oauthproxy"], res["rate2000-steady/oauthproxy"]; len(r) > 0 && len(s) > 0 {
		fmt.Printf("oauthproxy with token renewals / without: p50 %s  p99 %s  p999 %s\n",
			ratio(r, s, func(r result) float64 { return float64(r.p50) }),
			ratio(r, s, func(r result) float64 { return float64(r.p99) }),
			ratio(r, s, func(r result) float64 { return float64(r.p999) }))
	}
}

func ratio(o, b []result, f func(result) float64) string {
	var rs []float64
	for i := range min(len(o), len(b)) {
		if f(b[i]) > 0 {
			rs = append(rs, f(o[i])/f(b[i]))
		}
	}
	if len(rs) == 0 {
		return "-"
	}
	slices.Sort(rs)
	return fmt.Sprintf("%.2fx [%.2f..%.2f]", rs[len(rs)/2], rs[0], rs[len(rs)-1])
}

func med(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	return v[len(v)/2]
}

// serveUpstream answers GET with 200 bytes of JSON, and POST /token with
// the 800-byte token living tokenTTL seconds, on plain HTTP and on TLS.
func serveUpstream(dir string, h2 bool, ttl int) {
	body := []byte(`{"data":"` + strings.Repeat("x", 189) + `"}`)
	tok := fmt.Sprintf(`{"access_token":%q,"token_type":"Bearer","expires_in":%d}`, token, ttl)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && r.URL.Path == "/token" {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, tok)
			return
		}
		if r.Header.Get("Authorization") != "" {
			w.Header().Set("X-Upstream-Auth", "1")
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"))
	if err != nil {
		log.Fatal(err)
	}
	protos := []string{"http/1.1"}
	if h2 {
		protos = []string{"h2", "http/1.1"}
	}
	tsrv := &http.Server{Addr: upTLSAddr, Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: protos}}
	if !h2 {
		tsrv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	go func() { log.Fatal(tsrv.ListenAndServeTLS("", "")) }()
	log.Fatal((&http.Server{Addr: upAddr, Handler: h}).ListenAndServe())
}

// serveBare is the floor: httputil.ReverseProxy, a static token, the
// transport oauthproxy's NewTransport builds (HTTP/2 when offered), the
// same CA.
func serveBare(dir, upstream string) {
	target, _ := url.Parse(upstream)
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	bearer := []string{"Bearer " + token}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header["Authorization"] = bearer
		},
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			TLSClientConfig:     &tls.Config{RootCAs: pool},
		},
		BufferPool: &bufPool{},
	}
	srv := &http.Server{Addr: bareAddr, Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv.BaseContext = func(net.Listener) context.Context { return ctx }
	log.Fatal(srv.ListenAndServe())
}

type bufPool struct{ p sync.Pool }

func (b *bufPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}
func (b *bufPool) Put(v []byte) { b.p.Put(&v) }

// writeCerts writes a CA and a server certificate for 127.0.0.1 (ECDSA
// P-256, as most public endpoints today).
func writeCerts(dir string) error {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	for name, b := range map[string]*pem.Block{
		"ca.pem": {Type: "CERTIFICATE", Bytes: caDER}, "server.pem": {Type: "CERTIFICATE", Bytes: der},
		"server-key.pem": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			return err
		}
	}
	return nil
}
