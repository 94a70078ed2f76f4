package upstreams

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// env is the environment the tests see: nothing from the real one.
func env(kv ...string) Resolver {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return Resolver{Getenv: func(k string) (string, bool) { v, ok := m[k]; return v, ok }}
}

func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse("config.example.yaml", data, env())
	if err != nil {
		t.Fatalf("config.example.yaml does not load:\n%v", err)
	}
	if len(cfg.Warnings) > 0 {
		t.Errorf("config.example.yaml has warnings:\n%v", Problems(cfg.Warnings))
	}
	// Every key of the schema appears in the example, so that it cannot go stale.
	for _, key := range allKeys() {
		if !strings.Contains(string(data), key+":") {
			t.Errorf("config.example.yaml does not show the key %q", key)
		}
	}
	dir := t.TempDir()
	for _, o := range cfg.OAuth2 {
		if o.Store != "" { // /var/lib/oauthproxy is not on a test machine
			o.Store = filepath.Join(dir, filepath.Base(o.Store))
		}
	}
	rt, err := Build(cfg, nil, Options{})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	rt.Close()
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`
oauth2:
  a: {token_url: "https://idp/t", client_id: x, client_secret: y}
routes:
  - {prefix: /a/, upstream: "https://api/", oauth2: a}
`), env())
	if err != nil {
		t.Fatal(err)
	}
	r, o := cfg.Routes[0], cfg.OAuth2["a"]
	checks := []struct {
		name     string
		got, exp any
	}{
		{"listen", cfg.Listen, DefaultListen},
		{"admin_listen", cfg.AdminListen, DefaultAdminListen},
		{"log.format", cfg.Log.Format, LogFormat("json")},
		{"grant_type", o.GrantType, GrantType("client_credentials")},
		{"client_auth", o.ClientAuth, ClientAuthMethod("client_secret_basic")},
		{"inject.format", o.Inject.Format, "Bearer {token}"},
		{"refresh_before", o.RefreshBefore, 60 * time.Second},
		{"strip_prefix", *r.StripPrefix, true},
		{"retry_on", len(r.RetryOn) == 1 && r.RetryOn[0] == 401, true},
		{"retry_body_limit", *r.RetryBodyLimit, Size(1 << 20)},
		{"max_body", *r.MaxBody, Size(10 << 20)},
		{"timeout", r.Timeout, 60 * time.Second},
		{"read_header_timeout", cfg.Server.ReadHeaderTimeout, 10 * time.Second},
		{"max_header_bytes", cfg.Server.MaxHeaderBytes, Size(64 << 10)},
	}
	for _, c := range checks {
		if c.got != c.exp {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.exp)
		}
	}
}

func TestReferences(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "secret"), []byte("from-file\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "crlf"), []byte("crlf\r\n"), 0o600)
	res := env("SECRET", "from-env", "EMPTY", "")
	res.Dir = dir
	tests := []struct {
		in, want, err string
	}{
		{"plain", "plain", ""},
		{"${SECRET}", "from-env", ""},
		{"a-${SECRET}-b", "a-from-env-b", ""},
		{"${EMPTY}", "", ""},
		{"${file:" + dir + "/secret}", "from-file", ""},
		{"${file:secret}", "from-file", ""},
		{"${file:crlf}", "crlf", ""},
		{"$${SECRET}", "${SECRET}", ""},
		{"cost $5", "cost $5", ""},
		{"${MISSING}", "", "environment variable MISSING is not set"},
		{"${file:/nonexistent/x}", "", "${file:/nonexistent/x}: no such file or directory"},
		{"${SECRET", "", "unterminated"},
		{"${not a name}", "", "not a variable name"},
	}
	r := &resolver{Resolver: res}
	for _, tc := range tests {
		got, err := r.expand(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("expand(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("expand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestSecretsAreCollectedAndRedacted(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`
oauth2:
  a: {token_url: "https://idp/t", client_id: x, client_secret: "${S}", params: {k: param-value}, headers: {X-K: header-value}}
routes:
  - {prefix: /a/, upstream: "https://api/", oauth2: a}
`), env("S", "canary-cs"))
	if err != nil {
		t.Fatal(err)
	}
	sc := tokencache.NewScrubber()
	cfg.AddSecrets(sc)
	if got := sc.Scrub("canary-cs param-value header-value"); got != "[redacted] [redacted] [redacted]" {
		t.Errorf("after AddSecrets, Scrub = %q; want the client secret, params and headers removed", got)
	}
	if got := fmt.Sprintf("%v %+v", cfg.OAuth2["a"].ClientSecret, *cfg.OAuth2["a"]); strings.Contains(got, "canary-cs") || strings.Contains(got, "param-value") {
		t.Errorf("a config prints a secret: %s", got)
	}
}

func TestMergeKeys(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`
oauth2:
  base: &base {token_url: "https://idp/t", client_id: x, client_secret: y, scopes: [a]}
  other:
    <<: *base
    scopes: [b]
routes:
  - {prefix: /a/, upstream: "https://api/", oauth2: base}
  - {prefix: /b/, upstream: "https://api/", oauth2: other}
`), env())
	if err != nil {
		t.Fatal(err)
	}
	if o := cfg.OAuth2["other"]; o.TokenURL.String() != "https://idp/t" || o.Scopes[0] != "b" {
		t.Errorf("merged entry = %+v", o)
	}
}

func TestAliasBomb(t *testing.T) {
	doc := "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
	prev := "a"
	for _, n := range []string{"b", "c", "d", "e", "f", "g", "h"} {
		doc += n + ": &" + n + " [*" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + "]\n"
		prev = n
	}
	doc += "routes: *h\n"
	start := time.Now()
	_, err := Parse("bomb.yaml", []byte(doc), env())
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("alias bomb: err=%v after %v", err, time.Since(start))
	}
}

// TestCheckGolden pins the messages `oauthproxy check` prints for broken
// configs: they are part of the operator interface. -update rewrites them.
func TestCheckGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/check/*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata/check/*.yaml")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse(f, data, env("PRESENT", "x"))
			var got string
			var ps Problems
			switch {
			case errors.As(err, &ps):
				got = ps.Error() + "\n"
			case err != nil:
				t.Fatalf("Parse: %v", err)
			default:
				t.Fatalf("%s loads without problems; it is meant to be broken", f)
			}
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./upstreams -run TestCheckGolden -update)", err)
			}
			if got != string(want) {
				t.Errorf("problems for %s:\n%s\nwant:\n%s", f, got, want)
			}
		})
	}
}

// allKeys lists every YAML key of the schema.
func allKeys() []string {
	seen := map[string]bool{}
	var keys []string
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for _, k := range fieldsOf(t).names {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
		for i := range t.NumField() {
			ft := t.Field(i).Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice || ft.Kind() == reflect.Map {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft.PkgPath() == t.PkgPath() && ft != t {
				walk(ft)
			}
		}
	}
	walk(reflect.TypeOf(Config{}))
	return keys
}

// TestLargeRouteTable: a table of 30,000 plain routes loads and builds; no
// limit meant for aliases applies to values written out.
func TestLargeRouteTable(t *testing.T) {
	var b strings.Builder
	b.WriteString("oauth2:\n  a: {token_url: \"https://idp/t\", client_id: x, client_secret: y}\nroutes:\n")
	for i := range 30_000 {
		fmt.Fprintf(&b, "  - {prefix: /r%d/, upstream: \"https://api/%d/\", oauth2: a, retry_on: [401], timeout: 30s}\n", i, i)
	}
	cfg, err := Parse("big.yaml", []byte(b.String()), env())
	if err != nil {
		t.Fatalf("30,000 routes: %v", err)
	}
	rt, err := Build(cfg, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if rt.Table.Len() != 30_000 {
		t.Errorf("table has %d routes", rt.Table.Len())
	}
}

// TestMergeKeyLimit: merge keys that multiply past the limit are a problem
// at the merge, and the config does not load with values missing.
func TestMergeKeyLimit(t *testing.T) {
	var b strings.Builder
	b.WriteString("x-base: &base\n")
	for i := range 2000 {
		fmt.Fprintf(&b, "  k%d: v\n", i)
	}
	b.WriteString("oauth2:\n  a: {token_url: \"https://idp/t\", client_id: x, client_secret: y}\nroutes:\n")
	for i := range 100 {
		fmt.Fprintf(&b, "  - {<<: *base, prefix: /r%d/, upstream: \"https://api/\", oauth2: a}\n", i)
	}
	_, err := Parse("merge.yaml", []byte(b.String()), env())
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("err = %v, want problems", err)
	}
	found := false
	for _, p := range ps {
		if strings.Contains(p.Msg, "aliases and merge keys expand") {
			found = true
			if p.Line == 1 && p.Col == 1 {
				t.Errorf("the limit is reported at 1:1, not where it is passed: %v", p)
			}
		}
	}
	if !found {
		t.Errorf("no problem names the limit:\n%v", err)
	}
}

// TestFileReferenceLimits: ${file:...} refuses what is no small regular
// file before reading it.
func TestFileReferenceLimits(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, maxFileRef+1), 0o600)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r := &resolver{}
	for _, tc := range []struct{ path, want string }{
		{"/dev/zero", "not a regular file"},
		{fifo, "not a regular file"},
		{big, "larger than 64 KiB"},
		{dir, "not a regular file"},
	} {
		done := make(chan error, 1)
		go func() { _, err := r.expand("${file:" + tc.path + "}"); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("${file:%s}: %v, want %q", tc.path, err, tc.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("${file:%s} blocked", tc.path)
		}
	}
}

func TestIonAPIFile(t *testing.T) {
	cfg, err := Load("testdata/check/ionapi/ok.yaml")
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.OAuth2["m3"]
	checks := []struct{ name, got, want string }{
		{"grant_type", string(o.GrantType), "password"},
		{"token_url", o.TokenURL.String(), "https://mingle-sso.inforcloudsuite.com:443/ACME_TST/as/token.oauth2"},
		{"auth_url", o.AuthURL.String(), "https://mingle-sso.inforcloudsuite.com:443/ACME_TST/as/authorization.oauth2"},
		{"revoke_url", o.RevokeURL.String(), "https://mingle-sso.inforcloudsuite.com:443/ACME_TST/as/revoke_token.oauth2"},
		{"client_id", o.ClientID, "ACME_TST~canary-client-id"},
		{"client_secret", o.ClientSecret.Reveal(), "canary-client-secret"},
		{"username", o.Username, "ACME_TST#canary-access-key"},
		{"password", o.Password.Reveal(), "canary-secret-key"},
		{"client_auth", string(o.ClientAuth), "client_secret_post"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if !slices.Contains(cfg.Files, filepath.Join("testdata/check/ionapi", "service.ionapi")) {
		t.Errorf("Files = %v: the .ionapi file is not watched", cfg.Files)
	}
	var warned bool
	for _, w := range cfg.Warnings {
		if strings.Contains(w.Msg, "client_id: set here, so it overrides the file's ci") {
			warned = true
		}
		if strings.Contains(w.Msg, "canary") {
			t.Errorf("a warning shows a value of the file: %s", w.Msg)
		}
	}
	if !warned {
		t.Errorf("no warning that client_id overrides the file's ci: %v", cfg.Warnings)
	}
	sc := tokencache.NewScrubber()
	cfg.AddSecrets(sc)
	for _, v := range []string{"canary-client-secret", "canary-secret-key", "ACME_TST#canary-access-key"} {
		if out := sc.Scrub("x " + v + " y"); strings.Contains(out, v) {
			t.Errorf("the scrubber does not know %s", v)
		}
	}
}
