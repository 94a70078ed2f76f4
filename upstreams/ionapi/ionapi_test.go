package ionapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// sample is a service-account .ionapi file the way Infor's portal writes
// it, pretty-printed; every value is invented and distinct, so that a test
// can tell whether any of them reached an error.
const sample = `{
  "ti": "ACME_TST",
  "cn": "oauthproxy backend",
  "dt": "12",
  "ci": "ACME_TST~cI-canary-0b5d21f7",
  "cs": "cS-canary-9e31a4c2_secret",
  "iu": "https://mingle-ionapi.eu1.inforcloudsuite.com",
  "pu": "https://mingle-sso.eu1.inforcloudsuite.com:443/ACME_TST/as/",
  "oa": "authorization.oauth2",
  "ot": "token.oauth2",
  "or": "revoke_token.oauth2",
  "ev": "U1480769020",
  "v": "1.0",
  "saak": "ACME_TST#saak-canary-4f0c77e1",
  "sask": "sask-canary-d2a90b6e"
}`

// values are the sample's values, and the canaries the error tables use.
var values = []string{
	"ACME_TST", "oauthproxy backend", "ACME_TST~cI-canary-0b5d21f7", "cS-canary-9e31a4c2_secret",
	"https://mingle-ionapi.eu1.inforcloudsuite.com", "https://mingle-sso.eu1.inforcloudsuite.com:443/ACME_TST/as/",
	"mingle-sso", "authorization.oauth2", "token.oauth2", "revoke_token.oauth2", "U1480769020",
	"ACME_TST#saak-canary-4f0c77e1", "sask-canary-d2a90b6e", "canary",
}

// obj writes a JSON object of keys and raw JSON values, in order.
func obj(kv ...string) string {
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i < len(kv); i += 2 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%q:%s", kv[i], kv[i+1])
	}
	b.WriteString("}")
	return b.String()
}

// minimal holds the required keys, then extra pairs.
func minimal(extra ...string) string {
	return obj(append([]string{
		"ci", `"ci-canary-1"`,
		"pu", `"https://sso.example.com/T/as/"`,
		"ot", `"token.oauth2"`,
	}, extra...)...)
}

// mustNotLeak fails when err's text holds a value of the file.
func mustNotLeak(t *testing.T, err error, input string, extra ...string) {
	t.Helper()
	msg := err.Error()
	for _, v := range append(slices.Clone(values), extra...) {
		if strings.Contains(msg, v) {
			t.Errorf("error %q holds the value %q", msg, v)
		}
	}
	// Every string of the input that is not a key we name is a value.
	for _, m := range regexp.MustCompile(`"((?:[^"\\]|\\.){4,})"`).FindAllStringSubmatch(input, -1) {
		if lookup(m[1]) == nil && strings.Contains(msg, m[1]) {
			t.Errorf("error %q holds the input's string %q", msg, m[1])
		}
	}
	checkShape(t, err)
}

// shape matches every message Parse can make: fixed text, known key names
// and their descriptions, numbers. Nothing else, so nothing from the file.
var shape = func() *regexp.Regexp {
	var names, whats, reasons []string
	for _, k := range keys {
		names = append(names, regexp.QuoteMeta(k.name))
		whats = append(whats, regexp.QuoteMeta(k.what))
	}
	for _, r := range syntaxReasons {
		reasons = append(reasons, regexp.QuoteMeta(r.why))
	}
	K := `"(?:` + strings.Join(names, "|") + `)"`
	W := `\((?:` + strings.Join(whats, "|") + `)\)`
	kinds := `(?:a string|an object|an array|a boolean|null|a number)`
	urlWhy := `(?:has leading or trailing spaces|is not a URL|is not an absolute http or https URL|has no host|` +
		`must not hold a user name or password|must not have a query or fragment|is not a URL path|` +
		`must be a path relative to pu, not a URL)`
	msgs := []string{
		`the file is empty`,
		`the file is UTF-16 encoded; save it as UTF-8`,
		`malformed JSON(?: \((?:` + strings.Join(reasons, "|") + `)\))?`,
		`the file holds JSON ` + kinds + `, not an object`,
		`duplicate key ` + K + ` ` + W,
		`duplicate key \(one oauthproxy does not read\)`,
		`key ` + K + ` ` + W + ` must be a string, not ` + kinds,
		`key ` + K + ` ` + W + ` is not a valid JSON string`,
		`missing key ` + K + ` ` + W,
		`key ` + K + ` ` + W + ` is empty`,
		`key ` + K + ` ` + W + ` ` + urlWhy,
		`key "(?:saak|sask)" is set but "(?:saak|sask)" is not: a service account needs both`,
	}
	return regexp.MustCompile(`^(?:` + strings.Join(msgs, "|") + `)(?: at byte \d+ \(line \d+, column \d+\))?$`)
}()

// problems lists the *Errors in err, one or joined.
func problems(t *testing.T, err error) []*Error {
	t.Helper()
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	var out []*Error
	for _, e := range errs {
		pe, ok := e.(*Error)
		if !ok {
			t.Fatalf("error %T %q is not an *Error", e, e)
		}
		out = append(out, pe)
	}
	return out
}

func checkShape(t *testing.T, err error) {
	t.Helper()
	for _, e := range problems(t, err) {
		if !shape.MatchString(e.Error()) {
			t.Errorf("message %q is not one Parse is meant to make", e.Error())
		}
	}
}

func TestParse(t *testing.T) {
	crlf := strings.ReplaceAll(sample, "\n", "\r\n")
	for _, tc := range []struct {
		name, in string
		sa       bool
	}{
		{"sample", sample, true},
		{"BOM", "\xef\xbb\xbf" + sample, true},
		{"CRLF", crlf, true},
		{"BOM CRLF trailing whitespace", "\xef\xbb\xbf" + crlf + "\r\n \t\r\n", true},
		{"one line", strings.NewReplacer("\n", "", "  ", "").Replace(sample), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			for _, c := range []struct{ got, want string }{
				{f.Tenant, "ACME_TST"},
				{f.ClientName, "oauthproxy backend"},
				{f.ClientID, "ACME_TST~cI-canary-0b5d21f7"},
				{f.ClientSecret.Reveal(), "cS-canary-9e31a4c2_secret"},
				{f.IONBaseURL, "https://mingle-ionapi.eu1.inforcloudsuite.com"},
				{f.AuthServerURL, "https://mingle-sso.eu1.inforcloudsuite.com:443/ACME_TST/as/"},
				{f.AuthorizePath, "authorization.oauth2"},
				{f.TokenPath, "token.oauth2"},
				{f.RevokePath, "revoke_token.oauth2"},
				{f.AccessKey.Reveal(), "ACME_TST#saak-canary-4f0c77e1"},
				{f.SecretKey.Reveal(), "sask-canary-d2a90b6e"},
				{f.TokenURL(), "https://mingle-sso.eu1.inforcloudsuite.com:443/ACME_TST/as/token.oauth2"},
				{f.AuthorizeURL(), "https://mingle-sso.eu1.inforcloudsuite.com:443/ACME_TST/as/authorization.oauth2"},
				{f.RevokeURL(), "https://mingle-sso.eu1.inforcloudsuite.com:443/ACME_TST/as/revoke_token.oauth2"},
			} {
				if c.got != c.want {
					t.Errorf("got %q, want %q", c.got, c.want)
				}
			}
			if f.ServiceAccount() != tc.sa {
				t.Errorf("ServiceAccount() = %v, want %v", f.ServiceAccount(), tc.sa)
			}
			other := map[string]string{}
			for k, v := range f.Other {
				other[k] = string(v)
			}
			if want := map[string]string{"dt": `"12"`, "ev": `"U1480769020"`, "v": `"1.0"`}; fmt.Sprint(other) != fmt.Sprint(want) {
				t.Errorf("Other = %v, want %v", other, want)
			}
			wantKeys := []string{"ci", "cn", "cs", "dt", "ev", "iu", "oa", "or", "ot", "pu", "saak", "sask", "ti", "v"}
			if !slices.Equal(f.Keys(), wantKeys) {
				t.Errorf("Keys() = %q, want %q", f.Keys(), wantKeys)
			}
		})
	}
}

func TestParseVariants(t *testing.T) {
	for _, tc := range []struct {
		name, in       string
		sa, public     bool
		revoke, author string
		other          []string
	}{
		{name: "client credentials", in: minimal("cs", `"s3cret"`, "or", `"revoke_token.oauth2"`),
			revoke: "https://sso.example.com/T/as/revoke_token.oauth2"},
		{name: "public client", in: minimal(), public: true},
		{name: "empty optional keys are absent", in: minimal("cs", `""`, "oa", `""`, "saak", `""`, "sask", `""`, "iu", `""`), public: true},
		{name: "service account", in: minimal("cs", `"s"`, "saak", `"T#a"`, "sask", `"b"`), sa: true},
		{name: "escaped key and value", in: `{"c\u0069":"id","pu":"https:\/\/sso.example.com\/T\/as\/","ot":"token.oauth2","cs":"s"}`},
		{name: "unknown keys of any type kept", in: minimal("cs", `"s"`, "dt", `12`, "x", `{"a":[1,null]}`, "CI", `"upper case is another key"`),
			other: []string{"CI", "dt", "x"}},
		{name: "http pu for the caller to judge", in: obj("ci", `"c"`, "pu", `"http://127.0.0.1:8080/T/as"`, "ot", `"/token.oauth2"`), public: true},
		{name: "oa without or", in: minimal("cs", `"s"`, "oa", `"authorization.oauth2"`),
			author: "https://sso.example.com/T/as/authorization.oauth2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if f.ServiceAccount() != tc.sa {
				t.Errorf("ServiceAccount() = %v, want %v", f.ServiceAccount(), tc.sa)
			}
			if public := f.ClientSecret == ""; public != tc.public {
				t.Errorf("public client = %v, want %v", public, tc.public)
			}
			if f.RevokeURL() != tc.revoke {
				t.Errorf("RevokeURL() = %q, want %q", f.RevokeURL(), tc.revoke)
			}
			if f.AuthorizeURL() != tc.author {
				t.Errorf("AuthorizeURL() = %q, want %q", f.AuthorizeURL(), tc.author)
			}
			if !strings.HasSuffix(f.TokenURL(), "/T/as/token.oauth2") {
				t.Errorf("TokenURL() = %q, want it to end in /T/as/token.oauth2", f.TokenURL())
			}
			var other []string
			for k := range f.Other {
				other = append(other, k)
			}
			slices.Sort(other)
			if !slices.Equal(other, tc.other) {
				t.Errorf("Other has %q, want %q", other, tc.other)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	const bomS = "\xef\xbb\xbf"
	sampleWith := func(old, new string) string {
		if !strings.Contains(sample, old) {
			t.Fatalf("sample has no %q", old)
		}
		return strings.Replace(sample, old, new, 1)
	}
	crlfNoComma := strings.ReplaceAll(sampleWith(`"v": "1.0",`, `"v": "1.0"`), "\n", "\r\n")
	// one is one expected problem; at is the byte offset, -1 for none.
	type one struct {
		err  error
		key  string
		at   int
		line int
		col  int
		msg  string
	}
	for _, tc := range []struct {
		name string
		in   string
		want []one
	}{
		{"empty", "", []one{{ErrEmpty, "", -1, 0, 0, "the file is empty"}}},
		{"whitespace", " \r\n\t\n", []one{{ErrEmpty, "", -1, 0, 0, "the file is empty"}}},
		{"BOM only", bomS, []one{{ErrEmpty, "", -1, 0, 0, "the file is empty"}}},
		{"BOM and newline", bomS + "\r\n", []one{{ErrEmpty, "", -1, 0, 0, "the file is empty"}}},
		{"UTF-16", "\xff\xfe{\x00", []one{{ErrMalformed, "", 0, 1, 1, "UTF-16"}}},

		{"trailing comma", `{"cs":"cs-canary-x1",}`, []one{{ErrMalformed, "", 21, 1, 22, "malformed JSON (expected a key in double quotes) at byte 21"}}},
		{"truncated", `{"cs":"cs-canary-trunc`, []one{{ErrMalformed, "", 22, 1, 23, "the file ends before the JSON does"}}},
		{"single quotes", `{'cs':'cs-canary-q'}`, []one{{ErrMalformed, "", 1, 1, 2, "expected a key in double quotes"}}},
		{"control character in a secret", "{\"cs\":\"cs-canary\x01rest\"}", []one{{ErrMalformed, "", 16, 1, 17, "a control character inside a string"}}},
		{"Windows path escape", `{"cs":"C:\Users\cs-canary"}`, []one{{ErrMalformed, "", 10, 1, 11, "a bad escape sequence inside a string"}}},
		{"missing colon", `{"cs" "cs-canary-c"}`, []one{{ErrMalformed, "", 6, 1, 7, "expected a colon after a key"}}},
		{"missing comma, second line", "{\"cs\":\"cs-canary-m\"\n \"ci\":\"x\"}", []one{{ErrMalformed, "", 21, 2, 2, "expected a comma or a closing brace after a value"}}},
		{"bare word value", `{"cs":cs-canary}`, []one{{ErrMalformed, "", 6, 1, 7, "expected a value"}}},
		{"two objects", minimal() + "\n{}", []one{{ErrMalformed, "", len(minimal()) + 1, 2, 1, "more after the closing brace"}}},
		{"misspelt literal", `{"x":nul}`, []one{{ErrMalformed, "", 8, 1, 9, "a misspelt true, false or null"}}},
		{"BOM counts in the offset", bomS + `{"cs":"cs-canary-b",}`, []one{{ErrMalformed, "", 23, 1, 21, "at byte 23 (line 1, column 21)"}}},
		{"CRLF lines", crlfNoComma, []one{{ErrMalformed, "", strings.Index(crlfNoComma, `"saak"`), 14, 3, "expected a comma"}}},

		{"array", `["cs-canary-arr"]`, []one{{ErrMalformed, "", 0, 1, 1, "the file holds JSON an array, not an object"}}},
		{"string", "  \"cs-canary-str\"", []one{{ErrMalformed, "", 2, 1, 3, "the file holds JSON a string, not an object"}}},
		{"null", "null", []one{{ErrMalformed, "", 0, 1, 1, "JSON null, not an object"}}},

		{"missing ci", obj("pu", `"https://h/T/as/"`, "ot", `"t"`, "cs", `"cs-canary-mci"`), []one{{ErrMissingKey, "ci", -1, 0, 0, `missing key "ci" (client id)`}}},
		{"missing pu", obj("ci", `"c-canary"`, "ot", `"t"`), []one{{ErrMissingKey, "pu", -1, 0, 0, `missing key "pu" (authorization server URL)`}}},
		{"missing ot", sampleWith(`  "ot": "token.oauth2",`+"\n", ""), []one{{ErrMissingKey, "ot", -1, 0, 0, `missing key "ot" (token path)`}}},
		{"missing all three, in key order", `{"cs":"cs-canary-all"}`, []one{
			{ErrMissingKey, "ci", -1, 0, 0, `missing key "ci"`},
			{ErrMissingKey, "pu", -1, 0, 0, `missing key "pu"`},
			{ErrMissingKey, "ot", -1, 0, 0, `missing key "ot"`},
		}},
		{"empty ci", minimal()[:1] + `"ci":"",` + minimal()[len(`{"ci":"ci-canary-1",`):], []one{{ErrMissingKey, "ci", 6, 1, 7, `key "ci" (client id) is empty at byte 6`}}},

		{"ci a number", obj("ci", `12345678`, "pu", `"https://h/"`, "ot", `"t"`), []one{{ErrWrongType, "ci", 6, 1, 7, `key "ci" (client id) must be a string, not a number at byte 6`}}},
		{"cs a number", minimal("cs", `987654321`), []one{{ErrWrongType, "cs", len(minimal()) + 5, 1, len(minimal()) + 6, `key "cs" (client secret) must be a string, not a number`}}},
		{"pu an object", obj("ci", `"c"`, "pu", `{"url":"https://h/"}`, "ot", `"t"`), []one{{ErrWrongType, "pu", 15, 1, 16, `must be a string, not an object`}}},
		{"ot null", obj("ci", `"c"`, "pu", `"https://h/"`, "ot", `null`), []one{{ErrWrongType, "ot", 33, 1, 34, `key "ot" (token path) must be a string, not null`}}},
		{"saak a boolean", minimal("saak", `true`, "sask", `"sask-canary-t"`), []one{{ErrWrongType, "saak", -2, 0, 0, `key "saak" (service account access key) must be a string, not a boolean`}}},
		{"sask an array", minimal("saak", `"T#saak-canary-a"`, "sask", `["sask-canary-arr"]`), []one{{ErrWrongType, "sask", -2, 0, 0, `must be a string, not an array`}}},

		{"pu without scheme", sampleWith(`"https://mingle-sso.`, `"mingle-sso.`), []one{{ErrBadURL, "pu", strings.Index(sample, `"https://mingle-sso.`), 8, 9, `key "pu" (authorization server URL) is not an absolute http or https URL at byte`}}},
		{"pu ftp", minimalPU(`"ftp://sso.example.com/T/as/"`), []one{{ErrBadURL, "pu", 25, 1, 26, `is not an absolute http or https URL`}}},
		{"pu no host", minimalPU(`"https:///T/as/"`), []one{{ErrBadURL, "pu", 25, 1, 26, `has no host`}}},
		{"pu user info", minimalPU(`"https://user-canary:pw-canary@sso.example.com/T/as/"`), []one{{ErrBadURL, "pu", 25, 1, 26, `must not hold a user name or password`}}},
		{"pu query", minimalPU(`"https://sso.example.com/T/as/?tenant-canary=1"`), []one{{ErrBadURL, "pu", 25, 1, 26, `must not have a query or fragment`}}},
		{"pu fragment", minimalPU(`"https://sso.example.com/T/as/#frag-canary"`), []one{{ErrBadURL, "pu", 25, 1, 26, `must not have a query or fragment`}}},
		{"pu spaces", minimalPU(`" https://sso.example.com/T/as/"`), []one{{ErrBadURL, "pu", 25, 1, 26, `has leading or trailing spaces`}}},
		{"pu bad escape", minimalPU(`"https://sso.example.com/%zz-canary"`), []one{{ErrBadURL, "pu", 25, 1, 26, `is not a URL`}}},
		{"pu bad port", minimalPU(`"https://sso.example.com:44x3/T/as/"`), []one{{ErrBadURL, "pu", 25, 1, 26, `is not a URL`}}},
		{"iu not a URL", minimal("iu", `"ionapi-canary.example.com"`), []one{{ErrBadURL, "iu", len(minimal()) + 5, 1, len(minimal()) + 6, `key "iu" (ION API base URL) is not an absolute http or https URL`}}},
		{"ot an absolute URL", obj("ci", `"c"`, "pu", `"https://h/"`, "ot", `"https://evil-canary.example/token"`), []one{{ErrBadURL, "ot", 33, 1, 34, `key "ot" (token path) must be a path relative to pu, not a URL`}}},
		{"or protocol-relative", minimal("or", `"//evil-canary.example/revoke"`), []one{{ErrBadURL, "or", len(minimal()) + 5, 1, len(minimal()) + 6, `must be a path relative to pu, not a URL`}}},
		{"oa with a query", minimal("oa", `"authorization.oauth2?x-canary=1"`), []one{{ErrBadURL, "oa", len(minimal()) + 5, 1, len(minimal()) + 6, `must not have a query or fragment`}}},

		{"saak without sask", sampleWith(`  "sask": "sask-canary-d2a90b6e"`, `  "x": 1`), []one{{ErrServiceAccount, "saak", strings.Index(sample, `"saak"`), 14, 3, `key "saak" is set but "sask" is not: a service account needs both`}}},
		{"sask without saak", sampleWith(`"saak": "ACME_TST#saak-canary-4f0c77e1"`, `"saak": ""`), []one{{ErrServiceAccount, "sask", strings.Index(sample, `"sask"`) - len(`ACME_TST#saak-canary-4f0c77e1`), 15, 3, `key "sask" is set but "saak" is not`}}},

		{"duplicate cs", sampleWith(`  "v": "1.0",`, `  "v": "1.0", "cs": "cs-canary-second",`), []one{{ErrDuplicateKey, "cs", strings.Index(sample, `"v": "1.0",`) + len(`"v": "1.0", `), 13, 15, `duplicate key "cs" (client secret) at byte`}}},
		{"duplicate by escape", strings.TrimSuffix(minimal(), "}") + `,"c\u0069":"ci-canary-2"}`, []one{{ErrDuplicateKey, "ci", len(minimal()), 1, len(minimal()) + 1, `duplicate key "ci" (client id)`}}},
		{"duplicate unknown key is not named", minimal("ev-canary", `"1"`, "ev-canary", `"2"`), []one{{ErrDuplicateKey, "", -2, 0, 0, `duplicate key (one oauthproxy does not read)`}}},

		{"every problem at once, in file order", obj("pu", `"sso.example.com"`, "ot", `7`, "saak", `"T#saak-canary-e"`, "cs", `"cs-canary-e"`, "cs", `"cs-canary-f"`), []one{
			{ErrBadURL, "pu", 6, 1, 7, `key "pu"`},
			{ErrWrongType, "ot", 29, 1, 30, `key "ot"`},
			{ErrServiceAccount, "saak", 31, 1, 32, `key "saak"`},
			{ErrDuplicateKey, "cs", 75, 1, 76, `duplicate key "cs"`},
			{ErrMissingKey, "ci", -1, 0, 0, `missing key "ci"`},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.in))
			if err == nil {
				t.Fatalf("Parse = %+v, want an error", f)
			}
			if f != nil {
				t.Errorf("Parse returned a File with its error")
			}
			mustNotLeak(t, err, tc.in)
			var first *Error
			if !errors.As(err, &first) {
				t.Fatalf("errors.As(%v, *Error) = false", err)
			}
			got := problems(t, err)
			if len(got) != len(tc.want) {
				t.Fatalf("Parse: %d problems %q, want %d", len(got), err, len(tc.want))
			}
			for i, w := range tc.want {
				g := got[i]
				if !errors.Is(g, w.err) {
					t.Errorf("problem %d %q: not %v", i, g, w.err)
				}
				if g.Key != w.key {
					t.Errorf("problem %d %q: Key = %q, want %q", i, g, g.Key, w.key)
				}
				if w.at != -2 && (g.Offset != int64(w.at) || g.Line != w.line || g.Col != w.col) {
					t.Errorf("problem %d %q: at %d (%d:%d), want %d (%d:%d)", i, g, g.Offset, g.Line, g.Col, w.at, w.line, w.col)
				}
				if w.at == -2 && g.Offset < 0 {
					t.Errorf("problem %d %q: no offset", i, g)
				}
				if !strings.Contains(g.Error(), w.msg) {
					t.Errorf("problem %d: %q does not say %q", i, g, w.msg)
				}
				if g.Key != "" && !strings.Contains(g.Error(), `"`+g.Key+`"`) {
					t.Errorf("problem %d: %q does not name its key %q", i, g, g.Key)
				}
			}
		})
	}
}

// minimalPU is minimal with another pu; pu's key starts at byte 21.
func minimalPU(pu string) string {
	return obj("ci", `"ci-canary-1"`, "pu", pu, "ot", `"token.oauth2"`)
}

func TestJoin(t *testing.T) {
	for _, tc := range []struct{ pu, path, want string }{
		{"https://sso.example.com:443/T/as/", "token.oauth2", "https://sso.example.com:443/T/as/token.oauth2"},
		{"https://sso.example.com:443/T/as/", "/token.oauth2", "https://sso.example.com:443/T/as/token.oauth2"},
		{"https://sso.example.com:443/T/as", "token.oauth2", "https://sso.example.com:443/T/as/token.oauth2"},
		{"https://sso.example.com:443/T/as", "/token.oauth2", "https://sso.example.com:443/T/as/token.oauth2"},
		{"https://sso.example.com/T/as//", "//token.oauth2", "https://sso.example.com/T/as/token.oauth2"},
		{"https://sso.example.com", "token.oauth2", "https://sso.example.com/token.oauth2"},
		{"https://sso.example.com/", "as/token.oauth2", "https://sso.example.com/as/token.oauth2"},
		{"http://127.0.0.1:8080/T/as/", "revoke_token.oauth2", "http://127.0.0.1:8080/T/as/revoke_token.oauth2"},
		{"https://sso.example.com/T/as/", "", ""},
	} {
		f := &File{AuthServerURL: tc.pu, TokenPath: tc.path, AuthorizePath: tc.path, RevokePath: tc.path}
		for name, got := range map[string]string{"TokenURL": f.TokenURL(), "AuthorizeURL": f.AuthorizeURL(), "RevokeURL": f.RevokeURL()} {
			if got != tc.want {
				t.Errorf("%s() of pu %q, path %q = %q, want %q", name, tc.pu, tc.path, got, tc.want)
			}
		}
	}
}

// TestPrint: a File printed by fmt or slog shows its URLs and key names,
// none of its secrets or other values.
func TestPrint(t *testing.T) {
	f, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "%v|%+v|%s|%#v|%q|%x\n", f, f, f, f, f, f)
	slog.New(slog.NewJSONHandler(&out, nil)).Info("x", "file", f)
	slog.New(slog.NewTextHandler(&out, nil)).Info("x", "file", f)
	s := out.String()
	for _, v := range []string{"ACME_TST~", "cS-canary", "saak-canary", "sask-canary", "U1480769020", "oauthproxy backend"} {
		if strings.Contains(s, v) {
			t.Errorf("printed File holds %q:\n%s", v, s)
		}
	}
	for _, want := range []string{"https://mingle-sso.eu1.inforcloudsuite.com:443/ACME_TST/as/token.oauth2", `"sask"`} {
		if !strings.Contains(s, want) {
			t.Errorf("printed File lacks %q:\n%s", want, s)
		}
	}
	if b, err := json.Marshal(f); err != nil || bytes.Contains(b, []byte("canary")) {
		t.Errorf("json.Marshal(File) = %s, %v; want no secret", b, err)
	}
}
